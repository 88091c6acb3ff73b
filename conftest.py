"""Settings for the whole collection, doctests in rmsprop_jax/ included
(tests/conftest.py holds the test suite's own)."""

import jax
import pytest

from rmsprop_jax._versions import parse

# Doctests whose expected output is written as the newest supported jax prints
# it, and the jax release that started printing it so: on older releases they
# are skipped, saying why, instead of failing on a repr.
NEWER_REPR = {
    "rmsprop_jax._sharding.shard_state": (
        (0, 9, 1),
        "PartitionSpec prints as P(...) from jax 0.9.1 (this doctest's expected output)",
    ),
}


def pytest_collection_modifyitems(config, items):
    version = parse(jax.__version__)
    for item in items:
        if item.name in NEWER_REPR:
            since, why = NEWER_REPR[item.name]
            if version < since:
                item.add_marker(pytest.mark.skip(reason=f"{why}; this is jax {jax.__version__}"))
