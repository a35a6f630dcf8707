"""``qwenedit.stopping``: signals become stop levels of a run; a hard stop abandons open calls as recorded
failures. The whole CLI under real signals is in tests/chaos/test_graceful_stop.py."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import httpx
import pytest

from qwenedit import errors
from qwenedit.api import EditRequest
from qwenedit.errors import CallAbandoned, UnsentCallAbandoned
from qwenedit.stopping import GracefulStop, StopAwareGate, StoppableClient, default_grace, graceful_stop

KEY = "sk-stopping-test-0123456789"


class FakeRun:
    """The two stop levels of a run, as ``qwenedit.run.Run`` exposes them."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.now: list[str] = []

    @property
    def stopping(self) -> bool:
        return bool(self.reasons)

    @property
    def stopped_now(self) -> bool:
        return bool(self.now)

    def request_stop(self, reason: str) -> None:
        self.reasons.append(reason)

    def stop_now(self, reason: str) -> None:
        self.now.append(reason)


class FakeHandle:
    def __init__(self) -> None:
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled


class FakeTimers:
    """``call_later`` that only records: a test fires the callbacks itself (no sleeping)."""

    def __init__(self) -> None:
        self.scheduled: list[tuple[float, Callable[[], None], FakeHandle]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeHandle:
        handle = FakeHandle()
        self.scheduled.append((delay, callback, handle))
        return handle


def stopper(run: FakeRun, timers: FakeTimers, grace_s: float = 40.0) -> tuple[GracefulStop, list[int]]:
    defaulted: list[int] = []
    stop = GracefulStop(
        run, grace_s, call_later=timers.call_later, announce=lambda _: None, default_action=defaulted.append
    )
    return stop, defaulted


def test_the_first_signal_asks_the_run_to_stop_gracefully_and_arms_the_grace_timer() -> None:
    run, timers = FakeRun(), FakeTimers()
    stop, _ = stopper(run, timers, grace_s=40.0)
    stop.on_signal(signal.SIGINT)
    assert run.reasons == ["SIGINT"] and run.now == []
    assert [delay for delay, _, _ in timers.scheduled] == [40.0]


def test_a_second_signal_stops_at_once_and_a_third_gets_the_default_action() -> None:
    run, timers = FakeRun(), FakeTimers()
    stop, defaulted = stopper(run, timers)
    stop.on_signal(signal.SIGTERM)
    stop.on_signal(signal.SIGINT)
    assert run.now == ["second signal (SIGINT)"]
    assert timers.scheduled[0][2].cancelled()  # the grace timer has nothing left to do
    assert defaulted == []
    stop.on_signal(signal.SIGINT)
    assert defaulted == [signal.SIGINT]
    assert run.reasons == ["SIGTERM"]  # one graceful request only


def test_the_grace_period_passing_stops_at_once() -> None:
    run, timers = FakeRun(), FakeTimers()
    stop, _ = stopper(run, timers, grace_s=12.5)
    stop.on_signal(signal.SIGTERM)
    _, fire, _ = timers.scheduled[0]
    fire()
    assert run.now == ["grace period of 12.5 s over"]


def test_a_signal_to_a_run_already_stopping_for_another_reason_stops_it_at_once() -> None:
    run, timers = FakeRun(), FakeTimers()
    run.request_stop("SIGINT")  # e.g. seen by an earlier handler of the same run
    stop, _ = stopper(run, timers)
    stop.on_signal(signal.SIGINT)
    assert run.now == ["second signal (SIGINT)"]


def test_the_default_grace_outlasts_the_client_timeout() -> None:
    assert default_grace(120.0) > 120.0


async def test_installed_handlers_turn_a_real_sigterm_into_a_stop_request_and_are_removed_after() -> None:
    run = FakeRun()
    before = signal.getsignal(signal.SIGTERM)
    with graceful_stop(run, 30.0) as installed:
        assert installed is not None
        signal.raise_signal(signal.SIGTERM)  # to this process: the loop's handler, never the default
        for _ in range(100):
            if run.stopping:
                break
            await asyncio.sleep(0)
        assert run.reasons == ["SIGTERM"]
        assert installed.timer is not None
    assert signal.getsignal(signal.SIGTERM) == before
    assert installed.timer is None  # the run is over: no stop at once later


# --- a hard stop and the API client ------------------------------------------------------------------


def request() -> EditRequest:
    return EditRequest(model="qwen-image-edit-plus", images=("https://example.com/a.png",), prompt="blue")


def hanging_transport(handed: asyncio.Event, *, first_byte_left: bool) -> httpx.MockTransport:
    """A server that never answers. ``first_byte_left``: fire the httpcore trace event the client counts
    as the send (MockTransport fires none of its own)."""

    async def handler(req: httpx.Request) -> httpx.Response:
        if first_byte_left:
            await req.extensions["trace"]("http11.send_request_headers.started", {})
        handed.set()
        await asyncio.Event().wait()  # an answer that never comes
        raise AssertionError("unreachable")

    return httpx.MockTransport(handler)


async def test_a_hard_stop_ends_a_sent_call_as_possibly_billed_and_never_retried() -> None:
    abandon, sent = asyncio.Event(), asyncio.Event()
    told: list[str] = []
    async with httpx.AsyncClient(transport=hanging_transport(sent, first_byte_left=True)) as http:
        client = StoppableClient(KEY, "http://emulator.test", abandon=abandon, http=http)
        client_call = asyncio.create_task(client.edit(request(), on_send=lambda: told.append("sent")))
        await sent.wait()
        abandon.set()
        with pytest.raises(CallAbandoned) as caught:
            await client_call
    assert told == ["sent"]  # the pacer still hears of the send
    err = caught.value
    assert isinstance(err, errors.DashScopeError)
    assert err.possibly_billed and not err.retryable and err.code == "RunStopped"


async def test_a_hard_stop_ends_a_call_not_yet_sent_as_not_billed() -> None:
    abandon, sent = asyncio.Event(), asyncio.Event()
    async with httpx.AsyncClient(transport=hanging_transport(sent, first_byte_left=False)) as http:
        client = StoppableClient(KEY, "http://emulator.test", abandon=abandon, http=http)
        client_call = asyncio.create_task(client.edit(request()))
        await sent.wait()  # handed to the transport, but its first byte never left
        abandon.set()
        with pytest.raises(UnsentCallAbandoned) as caught:
            await client_call
    assert not caught.value.possibly_billed and not caught.value.retryable


async def test_an_answer_that_arrives_before_a_hard_stop_is_returned() -> None:
    async def handler(_: httpx.Request) -> httpx.Response:
        body = {
            "request_id": "r-1",
            "output": {"choices": [{"message": {"content": [{"image": "https://example.com/o.png"}]}}]},
            "usage": {"image_count": 1, "width": 512, "height": 512},
        }
        return httpx.Response(200, json=body)

    abandon = asyncio.Event()
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = StoppableClient(KEY, "http://emulator.test", abandon=abandon, http=http)
        answer = await client.edit(request())
    assert answer.image_count == 1 and answer.request_id == "r-1"


class RecordingGate:
    def __init__(self) -> None:
        self.events: list[str] = []

    async def before_send(self) -> None:
        self.events.append("before")

    def after_send(self) -> None:
        self.events.append("after")


async def test_a_request_held_at_the_send_gate_when_the_run_stops_is_refused_before_its_first_byte() -> None:
    gate = RecordingGate()
    stopping = False
    guarded = StopAwareGate(gate, lambda: stopping)
    await guarded.before_send()  # running: the request goes out
    guarded.after_send()
    stopping = True
    with pytest.raises(UnsentCallAbandoned):
        await guarded.before_send()
    assert gate.events == ["before", "after", "before", "after"]  # the next request is not held up


# --- what the terminal shows -------------------------------------------------------------------------


class ProgressRun:
    def __init__(self, stopping: bool) -> None:
        from qwenedit.pipeline import RunStats

        self.stats = RunStats(total_jobs=40, finished=14, in_flight=6)
        self.stopping = stopping


def test_the_progress_line_says_how_many_calls_are_in_flight_while_the_run_drains() -> None:
    from qwenedit.cli.run import progress_line

    assert "stopping: 6 calls in flight" in progress_line(ProgressRun(stopping=True)).plain
    assert "stopping" not in progress_line(ProgressRun(stopping=False)).plain


def test_a_stopped_run_ends_with_one_line_saying_how_many_jobs_are_left_and_how_to_resume() -> None:
    from qwenedit.cli.run import stop_message
    from qwenedit.summary import RunSummary

    summary = {
        "jobs": 40,
        "by_status": {"succeeded": 12, "skipped": 2, "failed": 1, "not_attempted": 25},
        "stopped_by": {"cause": "stop", "reason": "SIGINT"},
    }
    assert (
        stop_message(RunSummary.from_json(summary))
        == "stopped (SIGINT): 26 of 40 jobs left; run the same command again to resume"
    )
