"""Parity with TensorFlow 1's tf.compat.v1.train.RMSPropOptimizer.

TensorFlow is an optional extra (2.4 GB installed): `make test-tensorflow` installs
it in its own venv and runs this file. Without it these tests are skipped.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import PARITY_STEPS as STEPS
from helpers import PARITY_TOL as TOL
from helpers import (
    assert_trajectories_match,
    gradient_sequence,
    make_tree,
    run_preset,
    start_of,
)

from rmsprop_jax import presets

pytestmark = pytest.mark.tensorflow
tf = pytest.importorskip(
    "tensorflow", reason="tensorflow-cpu is not installed; run `make test-tensorflow`"
)

TF1_CONFIGS = {
    "default": dict(learning_rate=0.01),
    "momentum": dict(learning_rate=0.01, momentum=0.9),
    "centered": dict(learning_rate=0.01, centered=True),
    "centered_momentum": dict(
        learning_rate=0.01, centered=True, momentum=0.9, decay=0.95, epsilon=1e-6
    ),
}


def tf1_trajectory(kw, tree, grads, dtype, schedule=None):
    leaves, treedef = jax.tree.flatten(start_of(tree, dtype))
    tdtype = tf.float64 if dtype == jnp.float64 else tf.float32
    variables = [tf.Variable(p, dtype=tdtype) for p in leaves]
    step = [0]
    # A float64 value stays float64 in TF (a Python float would pass float32).
    lr = (lambda: np.float64(schedule(np.int32(step[0])))) if schedule else kw["learning_rate"]
    opt = tf.compat.v1.train.RMSPropOptimizer(**dict(kw, learning_rate=lr))
    out = []
    for g in grads:
        gl = [tf.constant(x, dtype=tdtype) for x in treedef.flatten_up_to(g)]
        opt.apply_gradients(zip(gl, variables))
        step[0] += 1
        out.append(treedef.unflatten([v.numpy().copy() for v in variables]))
    return out


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("name", sorted(TF1_CONFIGS))
def test_tensorflow_v1_parity(name, dtype, x64):
    kw = TF1_CONFIGS[name]
    tree = make_tree()
    grads = gradient_sequence(tree, STEPS)
    got = run_preset(presets.tensorflow_v1(**kw), tree, grads, dtype)
    want = tf1_trajectory(kw, tree, grads, dtype)
    start = start_of(tree, dtype)
    assert_trajectories_match(got, want, start, start, TOL[dtype])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_tensorflow_v1_parity_with_schedule(dtype, x64):
    schedule = lambda count: 0.05 / (1 + 0.2 * jnp.asarray(count, float))
    kw = dict(learning_rate=0.05, momentum=0.9)
    tree = make_tree()
    grads = gradient_sequence(tree, STEPS)
    got = run_preset(presets.tensorflow_v1(**dict(kw, learning_rate=schedule)), tree, grads, dtype)
    want = tf1_trajectory(kw, tree, grads, dtype, schedule=schedule)
    start = start_of(tree, dtype)
    assert_trajectories_match(got, want, start, start, TOL[dtype])
