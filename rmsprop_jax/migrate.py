r"""Moving a run's optimizer state between PyTorch, Keras, TensorFlow 1 and rmsprop_jax.

A preset reproduces another framework's RMSprop step; these functions carry
its *state* across, so that a run stopped in one framework continues in the
other instead of restarting. Restarting loses the second moment
:math:`\nu`: the first steps after it divide by :math:`\sqrt{(1-\rho) g^2}`,
about :math:`1/\sqrt{1-\rho}` times (10 times at :math:`\rho = 0.99`) larger
than the run's, and the loss jumps (``docs/migrating.md`` measures it).

========================================  =====================  ================
original                                  into rmsprop_jax       back
========================================  =====================  ================
``torch.optim.RMSprop``                   :func:`from_torch`     :func:`to_torch`
``keras.optimizers.RMSprop`` (Keras 3)    :func:`from_keras`     :func:`to_keras`
``tf.compat.v1.train.RMSPropOptimizer``   :func:`from_tf1`       --
========================================  =====================  ================

Each ``from_*`` returns the state of the matching preset
(:func:`~rmsprop_jax.presets.pytorch`, :func:`~rmsprop_jax.presets.keras`,
:func:`~rmsprop_jax.presets.tensorflow_v1`) built with the original's
arguments, which :func:`pytorch_kwargs` and :func:`keras_kwargs` read off the
optimizer. The state maps field for field, the momentum buffer negated because
:class:`~rmsprop_jax.RMSpropState` keeps it with the update's sign:

============  ======================  ======================  =================
field         PyTorch                 Keras 3                 TensorFlow 1
============  ======================  ======================  =================
``count``     ``step``                ``iterations``          the global step
``nu``        ``square_avg``          ``velocity``            ``rms``
``mu``        ``grad_avg``            ``average_gradient``    ``mg``
``trace``     ``-momentum_buffer``    ``-momentum``           ``-momentum``
============  ======================  ======================  =================

The original's flat list of parameters is matched to the leaves of the JAX
parameter tree by ``order`` (leaf paths in the original's order; by default
``jax.tree.leaves`` order), and a parameter laid out differently in JAX (a
transposed kernel) by ``layout``. Torch and Keras are imported only inside
these functions, TensorFlow never.

To re-initialise part of a state (a new head, a layer whose history no longer
applies), see :func:`rmsprop_jax.reset_state`.
"""

from __future__ import annotations

from rmsprop_jax._migrate_keras import from_keras, keras_kwargs, to_keras
from rmsprop_jax._migrate_tf1 import from_tf1, tf1_slots
from rmsprop_jax._migrate_torch import from_torch, pytorch_kwargs, to_torch

__all__ = [
    "from_keras",
    "from_tf1",
    "from_torch",
    "keras_kwargs",
    "pytorch_kwargs",
    "tf1_slots",
    "to_keras",
    "to_torch",
]
