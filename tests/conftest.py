"""Shared test set-up: isolated Prefect home, analytics off, and the fixture plugins."""

import os
import tempfile

# Must happen before anything imports prefect: never touch ~/.prefect, never phone home.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="qwenedit-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

pytest_plugins = [
    "tests.fixtures.emulator",
    "tests.fixtures.s3",
    "tests.fixtures.prefect",
]
