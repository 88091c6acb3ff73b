"""These tests need 8 devices. `tests/test_scale.py` runs this folder in a
subprocess with 8 simulated CPU devices; in a process with fewer devices (the
main test run) it is not collected at all, rather than reported as skipped."""

import jax

collect_ignore_glob = [] if jax.device_count() >= 8 else ["test_*.py"]
