"""Shared test set-up: isolated Prefect home, analytics off, and the fixture plugins."""

import os
import signal
import tempfile

# Must happen before anything imports prefect: never touch ~/.prefect, never phone home.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="qwenedit-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
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
