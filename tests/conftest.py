"""Shared test set-up: isolated Prefect home, analytics off, and the fixture plugins."""

import os
import signal
import tempfile

import pytest

# Must happen before anything imports prefect: never touch ~/.prefect, never phone home. Under pytest-xdist
# each worker process has a Prefect test server of its own, so it gets a home of its own too (a worker
# inherits the environment of the controller, whose copy of this file has already made one).
_OWN_HOME = "QWENEDIT_TEST_PREFECT_HOME"  # the home this file made, not one the caller chose
if "PREFECT_HOME" not in os.environ or (
    os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("PREFECT_HOME") == os.environ.get(_OWN_HOME)
):
    os.environ["PREFECT_HOME"] = os.environ[_OWN_HOME] = tempfile.mkdtemp(prefix="qwenedit-prefect-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A terminal size inherited from the environment would be frozen into the CLI's module-level console when it
# is imported, and the COLUMNS a test gives its CliRunner would then be ignored: pytest-xdist workers start
# with COLUMNS=80 in their environment (seen: the policy tables wrapped at 80 although the test asked for 250,
# only under xdist). The tests that read CLI output say which width they mean.
for _size in ("COLUMNS", "LINES"):
    os.environ.pop(_size, None)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

# A suite started in the background by a script (`make test &`, nohup) inherits SIGINT *ignored*, and so
# would every process a test starts: a Prefect worker keeps an ignored disposition as the "original"
# handler it restores on the first Ctrl-C, so the Ctrl-C the graceful-stop tests send it would do nothing
# (seen: test_graceful_stop[worker-stop] failed every time under `nohup make test &`). The tests run as if
# started from a terminal: a handler in this process resets to the default in every child it execs.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

pytest_plugins = [
    "tests.fixtures.emulator",
    "tests.fixtures.s3",
    "tests.fixtures.prefect",
]

# The longest tests (minutes each, mostly waiting on servers, rate limits and latency) go first, so that
# under pytest-xdist they overlap with the rest of the suite instead of ending it alone; then the other
# slow ones. Order within each rank is collection order (a stable sort).
_LONGEST_FIRST = (
    "tests/unattended/test_watch_e2e.py",
    "tests/distributed/test_workers.py",
    "tests/test_catalogue_bench_smoke.py",
    "tests/chaos/test_graceful_stop.py",
    "tests/chaos/test_storage_outage.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        if path in _LONGEST_FIRST:
            return _LONGEST_FIRST.index(path)
        return len(_LONGEST_FIRST) + (0 if item.get_closest_marker("slow") else 1)

    items.sort(key=rank)
