"""Stopping a run on a signal without paying for anything twice.

The API has no idempotency key: a call whose answer is lost is paid again by the rerun. A graceful
stop therefore lets every call in flight come back and be recorded before the process ends.

``graceful_stop(run, grace_s)`` installs handlers for SIGINT and SIGTERM on the running event loop
(a terminal's Ctrl-C reaches the whole process group; ``systemctl stop``, a container runtime and a
Prefect worker cancelling a flow run send SIGTERM):

1. **first signal** → ``run.request_stop(reason)``: no new call starts, calls in flight finish and
   write their charge records (outputs are copied: seconds; a copy that fails is left to the rerun's
   copy-only path), rows not started are reported ``not_attempted`` (code ``RunStopped``), the reports
   are written and the run ends with ``stopped_by = {"cause": "stop", ...}`` (exit code 3);
2. **second signal, or ``grace_s`` after the first** → ``run.stop_now(reason)``: the calls still open
   are abandoned and reported ``possibly_billed`` (their answer was not awaited; the rerun calls them
   again), and the run ends the same way;
3. **a third signal** gets the signal's default action (the process dies at once).

No Prefect in here: the CLI and the flows call ``graceful_stop`` (the flow again inside its body,
because Prefect's flow engine installs its own SIGTERM handler when a flow run starts).

The run side of a hard stop lives here too: ``StoppableClient``, the run's API client, whose open
calls end at once when its ``abandon`` event is set. An abandoned call ends as ``CallAbandoned`` (sent, so possibly
billed; never retried) or ``UnsentCallAbandoned`` (not sent, not billed), which the pipeline records
like any failed call: the row is never lost, and a sent call's worst case is in the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol, TypeVar

from qwenedit import errors
from qwenedit.api import DashScopeClient, EditRequest, EditResult, OnSend

log = logging.getLogger("qwenedit.stopping")

T = TypeVar("T")

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)
GRACE_MARGIN_S = 15.0  # beyond the client timeout: charge record, copies, reports


def default_grace(timeout_s: float) -> float:
    """The grace period when none is set: a call in flight ends within the client timeout."""
    return timeout_s + GRACE_MARGIN_S


# --- the run side -----------------------------------------------------------------------------------


async def _first(main: Awaitable[T], stop: asyncio.Event) -> tuple[bool, T | None]:
    """``(True, result)`` if ``main`` finished first, ``(False, None)`` if ``stop`` was set first
    (``main`` is then cancelled and awaited)."""
    task = asyncio.ensure_future(main)
    if stop.is_set():
        task.cancel()
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return False, None
    return True, task.result()


class StopAwareGate:
    """A send gate (``gate=`` of ``DashScopeClient.edit``) that lets no request out once the run stops:
    a request held at the gate when the signal comes is refused before its first byte is written."""

    def __init__(self, gate: Any, stopping: Callable[[], bool]) -> None:
        self._gate = gate
        self._stopping = stopping

    async def before_send(self) -> None:
        await self._gate.before_send()
        if self._stopping():
            self._gate.after_send()  # the next request does not wait for these headers
            raise errors.UnsentCallAbandoned("RunStopped", "run stopped before this call was sent")

    def after_send(self) -> None:
        self._gate.after_send()


class StoppableClient(DashScopeClient):
    """A ``DashScopeClient`` whose open calls end at once when ``abandon`` is set (a hard stop), and
    whose send gate, if a call has one, lets nothing out once ``stopping()`` is true."""

    def __init__(
        self,
        *args: Any,
        abandon: asyncio.Event,
        stopping: Callable[[], bool] = lambda: False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._abandon = abandon
        self._stopping = stopping

    async def edit(self, req: EditRequest, *, on_send: OnSend | None = None, **hooks: Any) -> EditResult:
        sent = False

        def note_send() -> None:
            nonlocal sent
            sent = True
            if on_send is not None:
                on_send()

        if hooks.get("gate") is not None:
            hooks["gate"] = StopAwareGate(hooks["gate"], self._stopping)
        won, answer = await _first(super().edit(req, on_send=note_send, **hooks), self._abandon)
        if won and answer is not None:
            return answer
        if sent:
            raise errors.CallAbandoned(
                "RunStopped",
                "run stopped at once while this call was open: its answer was not awaited and it may "
                "have been billed; the same command calls it again",
            )
        raise errors.UnsentCallAbandoned("RunStopped", "run stopped at once before this call was sent")


# --- the signal side ----------------------------------------------------------------------------------


class Stoppable(Protocol):
    """What a graceful stop needs of a run (``qwenedit.run.Run``)."""

    @property
    def stopping(self) -> bool: ...

    @property
    def stopped_now(self) -> bool: ...

    def request_stop(self, reason: str) -> None: ...

    def stop_now(self, reason: str) -> None: ...


class GracefulStop:
    """Turns signals into stop levels of one run (see the module docstring). Testable without signals:
    ``on_signal(signum)`` is what a handler calls, and ``call_later`` schedules the grace timer."""

    def __init__(
        self,
        run: Stoppable,
        grace_s: float,
        *,
        call_later: Callable[[float, Callable[[], None]], Any],
        announce: Callable[[str], None] | None = None,
        default_action: Callable[[int], None] | None = None,
    ) -> None:
        self.run = run
        self.grace_s = grace_s
        self._call_later = call_later
        self._announce = announce or (lambda text: log.warning("%s", text))
        self._default_action = default_action or _default_action
        self.timer: Any = None
        self.signals: list[str] = []

    def on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        self.signals.append(name)
        if not self.run.stopping:
            self.run.request_stop(name)
            self.timer = self._call_later(self.grace_s, self._grace_over)
            self._announce(
                f"{name}: stopping — no new calls; the calls in flight finish (at most {self.grace_s:g} s). "
                "Signal again to stop at once (open calls are then reported possibly billed)."
            )
        elif not self.run.stopped_now:
            self.cancel_timer()
            self.run.stop_now(f"second signal ({name})")
            self._announce(f"{name}: stopping at once — open calls are reported possibly billed.")
        else:
            self._default_action(signum)

    def _grace_over(self) -> None:
        self.timer = None
        if not self.run.stopped_now:
            self.run.stop_now(f"grace period of {self.grace_s:g} s over")
            self._announce(f"grace period of {self.grace_s:g} s over: stopping at once.")

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _default_action(signum: int) -> None:
    """Give the signal its default action: the process ends at once."""
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


@contextlib.contextmanager
def graceful_stop(
    run: Stoppable, grace_s: float, *, announce: Callable[[str], None] | None = None
) -> Iterator[GracefulStop | None]:
    """Handle SIGINT and SIGTERM as stop levels of ``run`` inside the block (see the module docstring).

    Must be entered in the thread running the event loop; in any other thread (where Python cannot
    install signal handlers) it does nothing and yields None. On exit the previous handlers are put
    back and a pending grace timer is cancelled (the run is over).
    """
    loop = asyncio.get_running_loop()
    if threading.current_thread() is not threading.main_thread():
        log.info("graceful stop not installed: not in the main thread")
        yield None
        return
    stopper = GracefulStop(run, grace_s, call_later=loop.call_later, announce=announce)
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    installed: list[signal.Signals] = []
    try:
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stopper.on_signal, int(sig))
            installed.append(sig)
        yield stopper
    finally:
        stopper.cancel_timer()
        for sig in installed:
            loop.remove_signal_handler(sig)
            handler = previous[sig]
            if handler is not None:
                signal.signal(sig, handler)


__all__ = [
    "STOP_SIGNALS",
    "GracefulStop",
    "StopAwareGate",
    "StoppableClient",
    "default_grace",
    "graceful_stop",
]
