"""Block-wise 8-bit codes: maps, round trips, stochastic rounding, extremes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmsprop_jax import _blockwise as bw

KINDS = ["nu", "signed"]


def _blocks(kind, shape=(3, 5, 256), decades=12, seed=0):
    """Magnitudes spread log-uniformly over ``decades`` orders of magnitude
    (random signs for "signed")."""
    rng = np.random.default_rng(seed)
    x = 10.0 ** rng.uniform(-decades / 2, decades / 2, shape)
    if kind == "signed":
        x *= rng.choice([-1.0, 1.0], shape)
    return x.astype(np.float32)


def _nearest_distance(x, scales, kind):
    """The distance from each (non-zero) element to the nearest value its
    block can store, in float64, from the map itself ("nu" keeps positive
    values off 0)."""
    table = bw.code_values(kind).astype(np.float64)
    if kind == "nu":
        table = table[1:]
    s = np.asarray(scales, np.float64)[..., None, None]
    stored = table * s  # (..., nb, 1, 256)
    return np.abs(np.asarray(x, np.float64)[..., None] - stored).min(axis=-1)


@pytest.mark.parametrize("kind", KINDS)
def test_code_values_are_sorted_float32_with_an_exact_zero(kind):
    v = bw.code_values(kind)
    assert v.dtype == np.float32 and v.shape == (256,)
    lowest = bw.code_map(kind).lowest
    assert np.all(np.diff(v[lowest:]) > 0)  # strictly increasing where produced
    assert np.all(np.diff(v) >= 0)
    assert 0.0 in v and np.all(np.isfinite(v))
    if kind == "nu":
        assert v[0] == 0 and np.all(v >= 0)
    else:
        np.testing.assert_array_equal(v[1:], -v[1:][::-1])  # mirror image
    v[0] = 7  # a copy: the map itself is unchanged
    assert bw.code_values(kind)[0] != 7


def test_unknown_kind_is_a_value_error():
    with pytest.raises(ValueError, match="`kind`"):
        bw.code_values("mu")
    with pytest.raises(ValueError, match="`kind`"):
        bw.quantize(jnp.zeros((1, 4)), "unsigned")


@pytest.mark.parametrize("kind", KINDS)
def test_round_to_nearest_picks_the_nearest_code(kind):
    x = _blocks(kind)
    codes, scales = jax.jit(bw.quantize, static_argnums=1)(jnp.asarray(x), kind)
    assert codes.dtype == jnp.uint8 and codes.shape == x.shape
    assert scales.dtype == jnp.float32 and scales.shape == x.shape[:-1]
    back = np.asarray(bw.dequantize(codes, scales, kind), np.float64)
    err = np.abs(back - x)
    best = _nearest_distance(x, scales, kind)
    assert np.all(err <= best + 2.0**-23 * np.abs(x))


@pytest.mark.parametrize("kind", KINDS)
def test_relative_error_bound_of_the_map(kind):
    # Within 2**-30 (nu) or 2**-14 (signed) of the block's top value, the
    # relative error is at most half a step of 3 mantissa bits: 1/16.
    x = _blocks(kind, decades=8)
    codes, scales = bw.quantize(jnp.asarray(x), kind)
    back = np.asarray(bw.dequantize(codes, scales, kind), np.float64)
    floor = 2.0 ** (-30 if kind == "nu" else -14) * np.asarray(scales)[..., None]
    normal = np.abs(x) >= floor
    assert normal.mean() > 0.5
    rel = np.abs(back - x)[normal] / np.abs(x)[normal]
    assert rel.max() <= 1 / 16 * (1 + 1e-6)
    assert rel.max() > 1 / 20  # the bound is tight: the test can tell a finer map
    # the scale puts each block's largest element on the top code
    top = np.abs(x).max(axis=-1)
    np.testing.assert_allclose(np.asarray(scales), top / bw.code_values(kind)[-1], rtol=2.5e-7)
    np.testing.assert_allclose(np.abs(back).max(axis=-1), top, rtol=4e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_requantizing_is_exact(kind):
    x = jnp.asarray(_blocks(kind, decades=20))
    codes, scales = bw.quantize(x, kind)
    back = bw.dequantize(codes, scales, kind)
    codes2, scales2 = bw.quantize(back, kind)
    np.testing.assert_allclose(np.asarray(scales2), np.asarray(scales), rtol=2.5e-7)
    np.testing.assert_array_equal(codes2, codes)
    bits = jnp.asarray(np.random.default_rng(1).integers(0, 2**32, x.shape, dtype=np.uint32))
    codes3, _ = bw.quantize(back, kind, bits, scales=scales)
    assert np.mean(np.asarray(codes3) == np.asarray(codes)) > 0.999


@pytest.mark.parametrize("kind", KINDS)
def test_stochastic_rounding_is_unbiased(kind):
    # Each element sits at a random place between two codes; over many
    # independent draws the mean of the stored values is the element itself.
    rng = np.random.default_rng(2)
    table = bw.code_values(kind).astype(np.float64)
    lo = bw.code_map(kind).lowest
    i = rng.integers(max(lo, 1), 255, 64)  # "nu" rounds (0, v_1) up to v_1
    frac = rng.uniform(0, 1, 64)
    y = table[i] + frac * (table[i + 1] - table[i])
    y[0] = table[-1]  # the block's top, so that the scale is 1
    x = y.astype(np.float32)
    draws = 20_000
    xs = jnp.asarray(np.broadcast_to(x, (draws, 1, 64)))
    bits = jnp.asarray(rng.integers(0, 2**32, xs.shape, dtype=np.uint32))
    codes, scales = jax.jit(bw.quantize, static_argnums=1)(xs, kind, bits)
    np.testing.assert_array_equal(scales, 1.0)
    c = np.asarray(codes).reshape(draws, 64).astype(int)
    x64 = x.astype(np.float64)
    below = np.searchsorted(table, x64, side="right") - 1
    below = np.minimum(below, 254)
    assert np.all((c == below) | (c == below + 1))  # only the two neighbours
    gap = table[below + 1] - table[below]
    p = (x64 - table[below]) / gap
    mean = table[c].mean(axis=0)
    sd = gap * np.sqrt(p * (1 - p) / draws)
    assert np.all(np.abs(mean - x64) <= 5 * sd + 1e-7 * gap)
    # round-to-nearest is biased on the same inputs
    nearest, _ = bw.quantize(jnp.asarray(x[None]), kind)
    bias = np.abs(table[np.asarray(nearest).astype(int)][0] - x64)
    assert np.mean(bias > 5 * sd + 1e-7 * gap) > 0.5


@pytest.mark.parametrize("kind", KINDS)
def test_zero_blocks(kind):
    x = np.zeros((2, 3, 256), np.float32)
    x[1, 1, 7] = 1.0
    codes, scales = bw.quantize(jnp.asarray(x), kind)
    back = np.asarray(bw.dequantize(codes, scales, kind))
    np.testing.assert_array_equal(back, x)
    assert np.all(np.isfinite(np.asarray(scales))) and np.all(np.asarray(scales) > 0)


@pytest.mark.parametrize("kind", KINDS)
def test_extreme_finite_values_give_finite_codes_and_scales(kind):
    fmax = float(np.finfo(np.float32).max)
    tiny = np.finfo(np.float32).tiny
    rows = [
        [fmax, 1.0, 1e30, 0.0],
        [tiny, 1e-45, 3 * tiny, 0.0],  # subnormals (a CPU may flush them to 0)
        [1e-45, 0.0, 0.0, 0.0],
        [1.875 * 2.0**127, 1.0, 0.0, 0.0],
        [2.0**-126, 2.0**-127, 0.0, 0.0],
    ]
    x = np.asarray(rows, np.float32)[:, None, :]
    if kind == "signed":
        x = x * np.asarray([1, -1, 1, -1], np.float32)
    for bits in (None, jnp.full(x.shape, 0xFFFFFFFF, jnp.uint32)):
        codes, scales = bw.quantize(jnp.asarray(x), kind, bits)
        back = np.asarray(bw.dequantize(codes, scales, kind), np.float64)
        assert np.all(np.isfinite(np.asarray(scales))) and np.all(np.isfinite(back))
        # the largest element keeps its sign and at least 15/16 of its size
        assert back[0, 0, 0] >= fmax * 15 / 16 and back[3, 0, 0] == 1.875 * 2.0**127
        np.testing.assert_allclose(back[4, 0, 0], 2.0**-126, rtol=1 / 16)


@pytest.mark.parametrize("kind", KINDS)
def test_non_finite_elements_do_not_spoil_their_block(kind):
    x = _blocks(kind, shape=(1, 4, 256), decades=4)
    clean_codes, clean_scales = bw.quantize(jnp.asarray(x), kind)
    bad = x.copy()
    # replace elements that are not the block maximum by inf, -inf and NaN
    small = np.argsort(np.abs(x[0]), axis=-1)[:, :3]
    for b in range(4):
        bad[0, b, small[b]] = [np.inf, -np.inf, np.nan]
    codes, scales = bw.quantize(jnp.asarray(bad), kind)
    np.testing.assert_array_equal(scales, clean_scales)
    keep = np.isfinite(bad)
    np.testing.assert_array_equal(np.asarray(codes)[keep], np.asarray(clean_codes)[keep])
    back = np.asarray(bw.dequantize(codes, scales, kind))
    top = bw.code_values(kind)[-1] * np.asarray(scales)[..., None]
    top = np.broadcast_to(top, back.shape)
    np.testing.assert_array_equal(back[bad == np.inf], top[bad == np.inf])
    if kind == "signed":
        np.testing.assert_array_equal(back[bad == -np.inf], -top[bad == -np.inf])
        np.testing.assert_array_equal(back[np.isnan(bad)], 0.0)
    else:
        np.testing.assert_array_equal(back[bad == -np.inf], 0.0)
        np.testing.assert_array_equal(back[np.isnan(bad)], top[np.isnan(bad)])
    # a block of nothing but non-finite values still has a finite scale
    codes, scales = bw.quantize(jnp.full((1, 8), np.inf, jnp.float32), kind)
    assert np.all(np.isfinite(np.asarray(bw.dequantize(codes, scales, kind))))


@pytest.mark.parametrize("kind", KINDS)
def test_given_scales_are_used_as_given(kind):
    x = jnp.asarray(_blocks(kind, decades=6))
    codes, scales = bw.quantize(x, kind)
    c2, s2 = bw.quantize(x, kind, scales=scales)
    np.testing.assert_array_equal(c2, codes)
    np.testing.assert_array_equal(s2, scales)
    c4, s4 = bw.quantize(x, kind, scales=scales * 4)
    np.testing.assert_array_equal(s4, scales * 4)
    back = np.asarray(bw.dequantize(c4, s4, kind), np.float64)
    x64 = np.asarray(x, np.float64)
    assert np.all(np.abs(back - x64) <= _nearest_distance(x, s4, kind) + 2.0**-23 * np.abs(x64))
    # scales that are too small saturate at the top code, never beyond
    c_small, s_small = bw.quantize(x, kind, scales=scales / 8)
    back = np.asarray(bw.dequantize(c_small, s_small, kind))
    assert np.all(np.abs(back) <= 1.875 * np.asarray(s_small)[..., None])
    assert np.mean(np.abs(back) == 1.875 * np.asarray(s_small)[..., None]) > 0.01


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(0, 256), (2, 0, 256), (3, 0), (1, 1), (2, 3, 4, 16)])
def test_shapes_including_empty(kind, shape):
    x = jnp.asarray(_blocks(kind, shape=shape))
    codes, scales = jax.jit(bw.quantize, static_argnums=1)(x, kind)
    assert codes.shape == shape and codes.dtype == jnp.uint8
    assert scales.shape == shape[:-1] and scales.dtype == jnp.float32
    back = bw.dequantize(codes, scales, kind)
    assert back.shape == shape and back.dtype == jnp.float32


@pytest.mark.parametrize("kind", KINDS)
def test_vmap_matches_the_batched_call(kind):
    x = jnp.asarray(_blocks(kind, shape=(4, 3, 64)))
    bits = jnp.asarray(np.random.default_rng(3).integers(0, 2**32, x.shape, dtype=np.uint32))
    for b in (None, bits):
        codes, scales = bw.quantize(x, kind, b)
        if b is None:
            vc, vs = jax.vmap(lambda x: bw.quantize(x, kind))(x)
        else:
            vc, vs = jax.vmap(lambda x, b: bw.quantize(x, kind, b))(x, b)
        np.testing.assert_array_equal(vc, codes)
        np.testing.assert_array_equal(vs, scales)
        np.testing.assert_array_equal(
            jax.vmap(lambda c, s: bw.dequantize(c, s, kind))(vc, vs),
            bw.dequantize(codes, scales, kind),
        )


def test_wrong_input_is_a_value_error():
    with pytest.raises(ValueError, match="`x` must be a float32"):
        bw.quantize(jnp.zeros((2, 4), jnp.bfloat16), "nu")
    with pytest.raises(ValueError, match="`x` must be a float32"):
        bw.quantize(jnp.zeros((4,), jnp.float32), "nu")
    with pytest.raises(ValueError, match="`bits`"):
        bw.quantize(jnp.zeros((2, 4)), "nu", jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="`bits`"):
        bw.quantize(jnp.zeros((2, 4)), "nu", jnp.zeros((2, 3), jnp.uint32))


@pytest.mark.parametrize("kind", KINDS)
def test_bit_level_codec_matches_a_search_of_the_map(kind):
    cmap = bw.code_map(kind)
    x = np.concatenate([_blocks(kind, (4, 256), decades=d, seed=d) for d in (2, 8, 14)])
    x[0, :3] = [0.0, -0.0, np.inf]
    x = jnp.asarray(x[None])
    fast, scales = bw.quantize(x, kind)
    slow, slow_scales = bw.quantize_with(x, cmap, search=True)
    np.testing.assert_array_equal(scales, slow_scales)
    np.testing.assert_array_equal(fast, slow)
    every = jnp.arange(256, dtype=jnp.uint8).reshape(1, 256)
    s = jnp.asarray([3.0], jnp.float32)
    np.testing.assert_array_equal(
        bw.dequantize(every, s, kind), bw.dequantize_with(every, s, cmap, search=True)
    )


def test_positive_second_moments_never_become_zero():
    x = np.zeros((1, 2, 8), np.float32)
    x[0, :, 0] = 1.0
    x[0, 0, 1:4] = [1e-12, 1e-20, 1e-30]  # far below the smallest positive code
    bits = jnp.asarray(np.random.default_rng(4).integers(0, 2**32, x.shape, dtype=np.uint32))
    for b in (None, bits):
        codes, scales = bw.quantize(jnp.asarray(x), "nu", b)
        back = np.asarray(bw.dequantize(codes, scales, "nu"))
        np.testing.assert_array_equal(back[0, 0, 1:4], bw.code_values("nu")[1] * scales[0, 0])
        np.testing.assert_array_equal(back[x == 0], 0.0)


@pytest.mark.parametrize("kind", KINDS)
def test_stored_absmax_is_the_largest_dequantized_magnitude(kind):
    x = jnp.asarray(_blocks(kind, decades=4))
    bits = jnp.asarray(np.random.default_rng(5).integers(0, 2**32, x.shape, dtype=np.uint32))
    codes, scales = bw.quantize(x, kind, bits)
    back = np.abs(np.asarray(bw.dequantize(codes, scales, kind)))
    np.testing.assert_array_equal(bw.stored_absmax(codes, scales, kind), back.max(axis=-1))
    shrunk = jnp.asarray(np.asarray(codes) // 2 + (64 if kind == "signed" else 0), jnp.uint8)
    back = np.abs(np.asarray(bw.dequantize(shrunk, scales, kind)))
    np.testing.assert_array_equal(bw.stored_absmax(shrunk, scales, kind), back.max(axis=-1))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("decay", [0.0, 0.9, 0.999])
def test_ema_scales_bound_the_next_average(kind, decay):
    squared = kind == "nu"
    rng = np.random.default_rng(6)
    old = _blocks(kind, shape=(2, 6, 256), decades=3)
    codes, scales = bw.quantize(jnp.asarray(old), kind)
    g = rng.standard_normal(old.shape) * 10.0 ** rng.uniform(-3, 1, (*old.shape[:-1], 1))
    g = jnp.asarray(g.astype(np.float32))
    d = jnp.float32(decay)
    new = d * bw.dequantize(codes, scales, kind) + (1 - d) * (g * g if squared else g)
    top = bw.code_values(kind)[-1]
    for stored in (None, bw.stored_absmax(codes, scales, kind)):
        s = bw.ema_scales(scales, g, decay, kind, squared=squared, stored=stored)
        assert s.shape == scales.shape and s.dtype == jnp.float32
        assert np.all(np.abs(np.asarray(new)) <= top * np.asarray(s)[..., None])
        # and not loosely: within the spread of g of the exact scale
        exact = np.abs(np.asarray(new)).max(axis=-1) / top
        assert np.all(
            np.asarray(s)
            <= 1.01
            * (
                exact
                + (1 - decay)
                * 2
                * np.asarray(jnp.max(jnp.abs(g * g if squared else g), axis=-1))
                / top
                + decay * np.asarray(scales)
            )
        )
        c2, s2 = bw.quantize(new, kind, scales=s)
        err = np.abs(np.asarray(bw.dequantize(c2, s2, kind)) - np.asarray(new))
        assert np.all(err <= _nearest_distance(new, s2, kind) + 2.0**-22 * np.abs(np.asarray(new)))


def test_ema_scales_at_the_edges():
    _, scales = bw.quantize(jnp.zeros((1, 3, 8), jnp.float32), "nu")
    g = jnp.zeros((1, 3, 8), jnp.float32).at[0, 1, 2].set(1e20).at[0, 2, 2].set(np.nan)
    s = np.asarray(bw.ema_scales(scales, g, 0.9, "nu", squared=True))
    assert s[0, 0] == 2.0**-126  # an all-zero block keeps the smallest scale
    assert np.isfinite(s[0, 1]) and s[0, 1] * 1.875 <= np.finfo(np.float32).max  # overflow
    assert np.isnan(s[0, 2])  # documented: discard steps with NaN gradients
    empty = bw.ema_scales(jnp.zeros((2,)), jnp.zeros((2, 0)), 0.9, "signed", squared=False)
    assert empty.shape == (2,)


@pytest.mark.parametrize("kind", ["nu", "signed"])
def test_decode_for_reduction_agrees_with_the_map(kind):
    # Float arithmetic only (for a fast reduction): every code's value to
    # about 1e-6, its sign and an exact 0; a traced 1 gives the same values.
    codes = jnp.arange(256, dtype=jnp.uint8).reshape(4, 64)
    values = bw.code_values(kind).reshape(4, 64).astype(np.float64)
    got = np.asarray(jax.jit(lambda c: bw.decode_for_reduction(c, kind))(codes), np.float64)
    np.testing.assert_array_equal(np.sign(got), np.sign(values))
    np.testing.assert_allclose(got, values, rtol=4e-6, atol=0)
    traced = jax.jit(lambda c, one: bw.decode_for_reduction(c, kind, one))(codes, jnp.float32(1))
    np.testing.assert_array_equal(np.asarray(traced), got.astype(np.float32))
    with pytest.raises(ValueError, match="kind"):
        bw.decode_for_reduction(codes, "mu")
