"""Bad input: every documented ValueError names the argument, the range and the value."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmsprop_jax

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
    (dict(nu_dtype=jnp.int32), "nu_dtype", "real floating dtype", "int32"),
    (dict(mu_dtype=jnp.complex64), "mu_dtype", "real floating dtype", "complex64"),
    (dict(nu_dtype="not a dtype"), "nu_dtype", "real floating dtype", "'not a dtype'"),
    (dict(decay=np.array([0.5, 2.0])), "decay", "[0, 1)", "[0.5 2. ]"),
    (dict(decay=jnp.asarray(3.0)), "decay", "[0, 1)", "3.0"),
    (dict(centered="yes"), "centered", "True or False", "'yes'"),
    (dict(decay="0.9"), "decay", "a number", "'0.9'"),
    (dict(min_dim_size_to_factor=0), "min_dim_size_to_factor", ">= 1", "0"),
    (dict(min_dim_size_to_factor=2.5), "min_dim_size_to_factor", ">= 1", "2.5"),
    (dict(seed=-1), "seed", ">= 0", "-1"),
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
