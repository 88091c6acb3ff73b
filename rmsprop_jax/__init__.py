"""RMSprop for JAX: a pure-functional Optax gradient transformation.

>>> import rmsprop_jax
>>> sorted(rmsprop_jax.__all__)  # doctest: +NORMALIZE_WHITESPACE
['FactoredNu', 'ParamRoundingState', 'QuantizedArray', 'RMSpropState', 'StepSizeStats',
 '__version__', 'blockwise_8bit', 'migrate', 'presets', 'reset_state', 'rmsprop',
 'scale_by_rms', 'shard_state', 'step_size_stats', 'stochastic_param_rounding',
 'validate_state']
"""

import rmsprop_jax._versions  # noqa: F401  (first: refuses a JAX or Optax older than supported)
from rmsprop_jax import migrate, presets
from rmsprop_jax._alias import rmsprop
from rmsprop_jax._checkpoint import validate_state
from rmsprop_jax._core import RMSpropState
from rmsprop_jax._diagnostics import StepSizeStats, step_size_stats
from rmsprop_jax._factored import FactoredNu
from rmsprop_jax._param_rounding import ParamRoundingState, stochastic_param_rounding
from rmsprop_jax._quantized import QuantizedArray, blockwise_8bit
from rmsprop_jax._reset import reset_state
from rmsprop_jax._sharding import shard_state
from rmsprop_jax._transform import scale_by_rms

__version__ = "0.2.0"

__all__ = [
    "FactoredNu",
    "ParamRoundingState",
    "QuantizedArray",
    "RMSpropState",
    "StepSizeStats",
    "__version__",
    "blockwise_8bit",
    "migrate",
    "presets",
    "reset_state",
    "rmsprop",
    "scale_by_rms",
    "shard_state",
    "step_size_stats",
    "stochastic_param_rounding",
    "validate_state",
]
