"""Bad input: every documented ValueError names the argument, the range and the value."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmsprop_jax
from rmsprop_jax import presets

BAD_ARGUMENTS = [
    # (kwargs, argument named, allowed range as printed, value as printed)
    (dict(learning_rate=-0.1), "learning_rate", ">= 0", "-0.1"),
    (dict(decay=1.5), "decay", "[0, 1)", "1.5"),
    (dict(decay=1.0), "decay", "[0, 1)", "1.0"),
    (dict(decay=-0.1), "decay", "[0, 1)", "-0.1"),
    (dict(decay=float("nan")), "decay", "[0, 1)", "nan"),
    (dict(eps=-1e-8), "eps", ">= 0", "-1e-08"),
    (dict(initial_scale=-1.0), "initial_scale", ">= 0", "-1.0"),
    (dict(momentum=1.0), "momentum", "[0, 1)", "1.0"),
    (dict(momentum=-0.5), "momentum", "[0, 1)", "-0.5"),
    (dict(weight_decay=-0.01), "weight_decay", ">= 0", "-0.01"),
    (dict(nesterov=True), "momentum", "> 0", "None"),
    (dict(nesterov=True, momentum=0.0), "momentum", "> 0", "0.0"),
    (dict(bias_correction=True, initial_scale=1.0), "initial_scale", "== 0", "1.0"),
    (dict(weight_decay_mode="l2"), "weight_decay_mode", "('decoupled', 'coupled')", "'l2'"),
    (dict(nu_dtype=jnp.int32), "nu_dtype", "float16, bfloat16, float32, float64", "int32"),
    (dict(mu_dtype=jnp.complex64), "mu_dtype", "float16, bfloat16", "complex64"),
    (dict(nu_dtype="not a dtype"), "nu_dtype", "float32", "'not a dtype'"),
    (dict(nu_dtype=jnp.float8_e4m3fn), "nu_dtype", "float32", "float8_e4m3fn"),
    (dict(decay=np.array([0.5, 2.0])), "decay", "[0, 1)", "[0.5 2. ]"),
    (dict(decay=jnp.asarray(3.0)), "decay", "[0, 1)", "3.0"),
    (dict(centered="yes"), "centered", "True or False", "'yes'"),
    (dict(decay="0.9"), "decay", "a number", "'0.9'"),
    (dict(min_dim_size_to_factor=0), "min_dim_size_to_factor", ">= 1", "0"),
    (dict(min_dim_size_to_factor=2.5), "min_dim_size_to_factor", ">= 1", "2.5"),
    (dict(seed=-1), "seed", "[0, 2**32)", "-1"),
    (dict(seed=2**40), "seed", "[0, 2**32)", "1099511627776"),
    (dict(seed=1.5), "seed", "integer", "1.5"),
    (dict(decay=None), "decay", "[0, 1)", "None"),
    (dict(eps=None), "eps", ">= 0", "None"),
    (dict(learning_rate=None), "learning_rate", ">= 0", "None"),
    (dict(learning_rate=float("inf")), "learning_rate", "finite", "inf"),
    (dict(learning_rate=0.1 + 1j), "learning_rate", "real", "(0.1+1j)"),
    (dict(learning_rate=jnp.ones(3)), "learning_rate", "scalar", "shape (3,)"),
    (dict(weight_decay=float("inf")), "weight_decay", "finite", "inf"),
    (dict(eps=float("nan")), "eps", ">= 0", "nan"),
    (dict(momentum=True), "momentum", "[0, 1)", "True"),
    (dict(factored=True, centered=True), "factored=True", "cannot be combined", "centered"),
    (
        dict(weight_decay=0.1, weight_decay_mask={"w": "False"}),
        "weight_decay_mask",
        "True, False",
        "'False'",
    ),
]


@pytest.mark.parametrize(("kwargs", "name", "allowed", "value"), BAD_ARGUMENTS)
def test_bad_hyperparameter_is_named(kwargs, name, allowed, value):
    kwargs = {"learning_rate": 0.1, **kwargs}
    with pytest.raises(ValueError) as info:
        rmsprop_jax.rmsprop(**kwargs)
    message = str(info.value)
    assert f"`{name}`" in message
    assert allowed in message
    assert value in message


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(decay=2.0), "decay"),
        (dict(eps=-1.0), "eps"),
        (dict(initial_scale=-1.0), "initial_scale"),
        (dict(nu_dtype=jnp.int8), "nu_dtype"),
    ],
)
def test_scale_by_rms_checks_too(kwargs, name):
    with pytest.raises(ValueError, match=re.escape(f"`{name}`")):
        rmsprop_jax.scale_by_rms(**kwargs)


def test_tracers_and_arrays_pass():
    # Valid jax arrays are accepted; tracers cannot be read and pass unchecked.
    rmsprop_jax.rmsprop(jnp.asarray(0.1), decay=jnp.asarray(0.9), momentum=jnp.asarray(0.5))

    @jax.jit
    def build_and_step(lr, decay):
        opt = rmsprop_jax.rmsprop(lr, decay=decay, eps=jnp.asarray(1e-8))
        params = {"w": jnp.ones(3)}
        return opt.update({"w": jnp.ones(3)}, opt.init(params), params)[0]

    updates = build_and_step(jnp.asarray(0.1), jnp.asarray(0.9))
    np.testing.assert_allclose(updates["w"], -0.1 / np.sqrt(0.1 + 1e-8), rtol=1e-6)


def test_schedule_is_accepted_and_not_called_at_build_time():
    calls = []
    rmsprop_jax.rmsprop(lambda count: calls.append(count) or 0.1)
    assert calls == []


def test_mismatched_gradient_tree_names_both_structures():
    opt = rmsprop_jax.rmsprop(0.1)
    state = opt.init({"a": jnp.ones(2), "b": jnp.ones(3)})
    with pytest.raises(ValueError) as info:
        opt.update({"a": jnp.ones(2)}, state)
    message = str(info.value)
    assert "'a'" in message and "'b'" in message
    assert "gradient" in message and "state" in message


@pytest.mark.parametrize("weight_decay", [0.1, optax.constant_schedule(0.1)])
def test_weight_decay_without_params(weight_decay):
    opt = rmsprop_jax.rmsprop(0.1, weight_decay=weight_decay)
    state = opt.init({"w": jnp.ones(2)})
    with pytest.raises(ValueError, match="`params` must be passed"):
        opt.update({"w": jnp.ones(2)}, state)


def test_zero_weight_decay_needs_no_params():
    opt = rmsprop_jax.rmsprop(0.1, weight_decay=0.0)
    state = opt.init({"w": jnp.ones(2)})
    updates, _ = opt.update({"w": jnp.ones(2)}, state)
    assert updates["w"].shape == (2,)


def test_mask_with_wrong_structure():
    opt = rmsprop_jax.rmsprop(0.1, weight_decay=0.1, weight_decay_mask={"w": True, "x": False})
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="`weight_decay_mask`"):
        opt.update(params, opt.init(params), params)


# --------------------------------------------------------------------------
# Errors raised by update, where the gradients, state and params meet.


def test_gradient_tree_that_is_a_prefix_of_the_state_is_refused():
    opt = rmsprop_jax.rmsprop(0.1, momentum=0.9)
    state = opt.init({"a": {"x": jnp.ones(2), "y": jnp.ones(2)}})
    with pytest.raises(ValueError, match="does not match") as info:
        opt.update({"a": jnp.ones(2)}, state)
    assert "['a']" in str(info.value)


def test_gradient_leaf_of_another_shape_is_refused():
    opt = rmsprop_jax.rmsprop(0.1)
    state = opt.init({"w": jnp.ones((2, 3))})
    with pytest.raises(ValueError, match=r"shape \(3, 2\).*shape \(2, 3\)"):
        opt.update({"w": jnp.ones((3, 2))}, state)


@pytest.mark.parametrize("bad", [None, {"x": jnp.ones(3)}, jnp.ones(4)])
def test_params_leaf_that_is_not_the_gradients_array_is_refused(bad):
    opt = rmsprop_jax.rmsprop(0.1, weight_decay=0.1)
    params = {"w": jnp.ones(3), "b": jnp.ones(2)}
    state = opt.init(params)
    with pytest.raises(ValueError, match=r"`params`|parameters"):
        opt.update(params, state, {"w": bad, "b": jnp.ones(2)})


def test_state_from_other_options_is_refused_by_update():
    params = {"w": jnp.ones(3)}
    state = rmsprop_jax.rmsprop(0.1).init(params)
    with pytest.raises(ValueError, match="`trace`"):
        rmsprop_jax.rmsprop(0.1, momentum=0.9).update(params, state)
    with pytest.raises(ValueError, match="`mu`"):
        rmsprop_jax.rmsprop(0.1, centered=True).update(params, state)


def test_learning_rate_beyond_float32_is_refused_at_update_and_used_in_float64(x64):
    opt = rmsprop_jax.rmsprop(1e39)
    with pytest.raises(ValueError, match=r"`learning_rate` is 1e\+39.*float32"):
        opt.update({"w": jnp.ones(2, jnp.float32)}, opt.init({"w": jnp.ones(2, jnp.float32)}))
    params = {"w": jnp.ones(2, jnp.float64)}
    updates, _ = opt.update(params, opt.init(params))
    np.testing.assert_allclose(updates["w"], -1e39 / np.sqrt(0.1 + 1e-8))


def test_schedule_returning_an_array_is_refused():
    opt = rmsprop_jax.rmsprop(lambda count: jnp.full(3, 0.1))
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="scalar at every step"):
        opt.update(params, opt.init(params))


def test_mask_function_returning_non_booleans_is_refused():
    opt = rmsprop_jax.rmsprop(0.1, weight_decay=0.1, weight_decay_mask=lambda p: {"w": "yes"})
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match="`weight_decay_mask`"):
        opt.update(params, opt.init(params), params)


def test_narrow_injected_decay_is_refused_with_the_fix():
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    opt = optax.inject_hyperparams(rmsprop_jax.rmsprop)(learning_rate=0.1, decay=0.999)
    with pytest.raises(ValueError, match=r"hyperparam_dtype=jnp\.float32"):
        opt.init(params)
    opt = optax.inject_hyperparams(rmsprop_jax.rmsprop, hyperparam_dtype=jnp.float32)(
        learning_rate=0.1, decay=0.999
    )
    with jax.numpy_dtype_promotion("standard"):
        updates, _ = jax.jit(opt.update)(params, opt.init(params), params)
    np.testing.assert_allclose(
        np.asarray(updates["w"], np.float32), -0.1 / np.sqrt(1e-3), rtol=1e-2
    )


def test_complex_hyperparameters_from_inject_hyperparams_are_taken_by_their_real_part():
    params = {"z": jnp.ones(3, jnp.complex64)}
    opt = optax.inject_hyperparams(rmsprop_jax.rmsprop)(learning_rate=0.1, momentum=0.9)
    with jax.numpy_dtype_promotion("standard"):
        state = opt.init(params)
        assert state.hyperparams["learning_rate"].dtype == jnp.complex64  # optax's choice
        updates, _ = jax.jit(opt.update)(params, state, params)
    want, _ = rmsprop_jax.rmsprop(0.1, momentum=0.9).update(
        params, rmsprop_jax.rmsprop(0.1, momentum=0.9).init(params)
    )
    np.testing.assert_allclose(updates["z"], want["z"], rtol=1e-6)
    with pytest.raises(ValueError, match="must be real"):
        rmsprop_jax.rmsprop(jnp.asarray(0.1 + 0.1j))


@pytest.mark.parametrize("preset", [presets.tensorflow_v1, presets.sonnet])
@pytest.mark.parametrize("arg", ["decay", "momentum"])
def test_tensorflow_presets_check_after_rounding_to_float32(preset, arg):
    """TensorFlow rounds 0.99999999 to 1.0 (float32) before it computes: the
    preset refuses it at build, naming the argument and both values, instead of
    failing in update."""
    with pytest.raises(ValueError, match=rf"`{arg}` must be in \[0, 1\), got 1\.0 .*0\.99999999"):
        preset(0.1, **{arg: 0.99999999})
    opt = preset(0.1, **{arg: 0.9999})  # still below 1 in float32
    params = {"w": jnp.ones(3)}
    updates, _ = opt.update({"w": jnp.ones(3)}, opt.init(params), params)
    assert np.all(np.isfinite(updates["w"])) and np.all(np.asarray(updates["w"]) < 0)


def test_prng_key_gradient_is_refused_naming_the_leaf():
    params = {"w": jnp.ones(3), "rng": jax.random.key(0)}
    opt = rmsprop_jax.rmsprop(0.1)
    with pytest.raises(ValueError, match=r"gradient at \['rng'\] is a PRNG key"):
        opt.update(params, opt.init(params))


def test_schedule_weight_decay_without_params_is_refused():
    opt = rmsprop_jax.rmsprop(0.1, weight_decay=lambda count: 0.0)
    with pytest.raises(ValueError, match="`params` must be passed"):
        opt.update({"w": jnp.ones(2)}, opt.init({"w": jnp.ones(2)}))


@pytest.mark.parametrize(
    "leaf", ["x", object(), np.array(["x"])], ids=["str", "object", "str array"]
)
def test_a_leaf_that_is_not_numbers_is_refused_naming_it(leaf):
    opt = rmsprop_jax.rmsprop(0.1)
    with pytest.raises(
        ValueError, match=r"parameter at \['a'\]\['b'\] is .*not an array of numbers"
    ):
        opt.init({"a": {"b": leaf}, "w": jnp.ones(2)})
    state = opt.init({"a": {"b": jnp.ones(())}, "w": jnp.ones(2)})
    with pytest.raises(
        ValueError, match=r"gradient at \['a'\]\['b'\] is .*not an array of numbers"
    ):
        opt.update({"a": {"b": leaf}, "w": jnp.ones(2)}, state)
