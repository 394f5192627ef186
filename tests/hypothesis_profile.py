"""The Hypothesis settings of the fuzz tests (tests/test_fuzz_*.py), which import this module.

`fuzz`, the default, is deterministic: the same examples on every run and machine, none stored
between runs, no deadline (a loaded machine must not turn slowness into a failure). To hunt for
new failures locally, run with `HYPOTHESIS_PROFILE=deep`: random examples, many more of them.
A failure found that way is pinned with `@example` so that the `fuzz` profile keeps checking it.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "fuzz",
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "deep",
    max_examples=20_000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fuzz"))
