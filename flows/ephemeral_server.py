"""Prefect's temporary API server for ``qwenedit run``, out of the terminal's reach.

Without ``PREFECT_API_URL``, Prefect (3.9.1, as 3.8.8) starts a temporary API server (``SubprocessASGIServer``: uvicorn
in a child process) the first time a flow needs an API. That child is in the CLI's process group, so a
terminal's Ctrl-C (SIGINT to the whole group) stops it at the very moment the run starts draining its calls
in flight. Every Prefect API call after that — a chunk task's final state, the flow run's, the artifacts —
retries a refused connection for about a minute (``PREFECT_CLIENT_MAX_RETRIES`` = 5, backoff 2…32 s):
measured, a Ctrl-C'd run whose calls drained in 6 s was still running 120 s later.

``start_detached()`` starts that same server first, in a process group of its own, so the Ctrl-C reaches
the CLI alone; the run drains, records its flow run's final state and exits. The server still never
outlives the CLI: Prefect stops it at exit (``atexit``), and on Linux the kernel sends it SIGTERM when the
CLI's main thread dies, even by SIGKILL (``PR_SET_PDEATHSIG``). Call it from the main thread: the death
signal follows the thread that started the child.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("qwenedit.flow")

_PR_SET_PDEATHSIG = 1


def _die_with_parent_hook() -> Any:
    """A preexec_fn asking the kernel for SIGTERM when the parent dies; resolved here, in the parent, so
    the child (between fork and exec) only makes the call."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    term = int(signal.SIGTERM)

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, term)

    return die_with_parent


class _DetachedPopen:
    """``subprocess`` as Prefect's server module sees it while it starts the server: own process group."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        kwargs.setdefault("process_group", 0)
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                kwargs.setdefault("preexec_fn", _die_with_parent_hook())
        return subprocess.Popen(*args, **kwargs)


@contextlib.contextmanager
def _detached_spawns(module: Any) -> Iterator[None]:
    original = module.subprocess
    module.subprocess = _DetachedPopen()
    try:
        yield
    finally:
        module.subprocess = original


def needs_ephemeral_server() -> bool:
    """True if a flow run in this process would start Prefect's temporary API server."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    return not PREFECT_API_URL.value() and bool(PREFECT_SERVER_EPHEMERAL_ENABLED.value())


def start_detached() -> str | None:
    """Start Prefect's temporary API server in its own process group (see the module docstring).

    Returns its API URL, or None when none is needed (``PREFECT_API_URL`` set), on Windows, or off the
    main thread (then Prefect starts it as usual, in the caller's process group).
    """
    if os.name != "posix" or threading.current_thread() is not threading.main_thread():
        return None
    if not needs_ephemeral_server():
        return None
    from prefect.server.api import server as server_module

    server = server_module.SubprocessASGIServer()  # the instance every Prefect client of this process uses
    with _detached_spawns(server_module):
        server.start()
    log.debug("temporary Prefect API server at %s in its own process group", server.api_url)
    return server.api_url


__all__ = ["needs_ephemeral_server", "start_detached"]
