"""A DashScope-compatible emulator of the Qwen image-edit endpoint, for offline runs, demos and tests.

- ``config``: every knob (``EmulatorConfig``) and the tables of models and account failures.
- ``validate``: pure request validation with the real codes and messages.
- ``render``: output sizes and PNG rendering.
- ``ratelimit``, ``faults``, ``books``, ``signing``: rate windows, fault draws, ledger, signed links.
- ``app``: the Starlette app (``create_app``); ``server``: ``EmulatorServer`` (uvicorn in a thread).
"""

from qwenedit.emulator.app import EmulatedDrop, EmulatorApp, create_app
from qwenedit.emulator.config import ACCOUNT_FAILURES, FAULTS, ConfigError, EmulatorConfig, ModelSpec
from qwenedit.emulator.server import EmulatorServer

__all__ = [
    "ACCOUNT_FAILURES",
    "FAULTS",
    "ConfigError",
    "EmulatedDrop",
    "EmulatorApp",
    "EmulatorConfig",
    "EmulatorServer",
    "ModelSpec",
    "create_app",
]
