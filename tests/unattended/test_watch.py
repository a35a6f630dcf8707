"""The watcher's tick (``process_new_manifests``) with ``arun_deployment`` replaced by a fake edit
deployment: one row per manifest whatever a dropped file holds, markers out of the droppers' reach,
no two manifests sharing a destination, refused versions not retried, caps end the tick's starts."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from prefect.client.schemas.objects import FlowRun, State
from prefect.states import Completed, Crashed, Failed

from flows.scheduled import (
    MARKER_MAX_BYTES,
    artifact_key,
    dest_for,
    idempotency_key,
    is_current,
    is_manifest_key,
    manifest_version,
    marker_key,
    parse_marker,
    read_marker,
    refusals,
)
from qwenedit.options import RunOptions
from qwenedit.storage import LocalDestination

# --- pure helpers --------------------------------------------------------------------------------------


def test_only_manifests_outside_reserved_folders_are_picked_up() -> None:
    assert is_manifest_key("drop-1.csv") and is_manifest_key("2026/01/drop.JSONL")
    assert not is_manifest_key("drop-1.csv.processed.json")
    assert not is_manifest_key("out/_runs/R/results.csv")
    assert not is_manifest_key("_ledger/x/done.json")
    assert not is_manifest_key(".hidden.csv")
    assert not is_manifest_key("notes.txt")


def test_markers_live_under_the_destination_and_keys_are_derived_from_the_manifest() -> None:
    assert marker_key("a/b.csv") == "_watch/a/b.csv.json"
    assert dest_for("s3://bkt/edited/", "2026/drop.jsonl") == "s3://bkt/edited/2026/drop"
    assert idempotency_key("s3://b/x.csv", "etag:1", 1) == "qwenedit-manifest:s3://b/x.csv#etag:1"
    assert idempotency_key("s3://b/x.csv", "etag:1", 2).endswith("#attempt-2")
    assert is_current({"version": "etag:1"}, "etag:1")
    assert not is_current({"version": "etag:1"}, "etag:2") and not is_current(None, "etag:1")


def test_a_local_manifest_version_changes_with_its_content(tmp_path: Path) -> None:
    dest = LocalDestination(tmp_path)
    dest.put_bytes("drop.csv", b"job_id,image_1,prompt\n")
    first = manifest_version(dest, "drop.csv")
    assert first.startswith("sha256:") and first == manifest_version(dest, "drop.csv")
    dest.put_bytes("drop.csv", b"job_id,image_1,prompt\nx,a.png,p\n")
    assert manifest_version(dest, "drop.csv") != first


def test_two_manifests_with_one_destination_are_both_refused_naming_each_other() -> None:
    reasons = refusals(["a.csv", "a.jsonl", "b.csv", "x.csv", "x/y.csv", "_watch.csv", "c/_d.csv"])
    assert "'a.jsonl'" in reasons["a.csv"] and "'a.csv'" in reasons["a.jsonl"]
    assert "inside the destination of 'x.csv'" in reasons["x/y.csv"]
    assert "'x/y.csv'" in reasons["x.csv"]
    assert "reserved" in reasons["_watch.csv"] and "reserved" in reasons["c/_d.csv"]
    assert "b.csv" not in reasons
    assert refusals(["a.csv", "ab.csv", "a-b/c.csv"]) == {}  # a shared beginning is no collision


def test_a_marker_must_be_a_small_flat_object() -> None:
    assert parse_marker(b'{"version": "etag:1", "summary": {"by_status": {"succeeded": 1}}}')["version"]
    deep = b"[" * 100_000 + b"]" * 100_000
    for bad in (deep, b'{"version": ' + deep + b"}", b"not json", b"[1]", b'{"version": 3}'):
        with pytest.raises(ValueError):
            parse_marker(bad)
    assert parse_marker(b'{"version": "e", "note": "[[[[[[[[[[[["}')["note"] == "[[[[[[[[[[[["


def test_an_oversized_marker_is_refused_without_being_read(tmp_path: Path) -> None:
    store = LocalDestination(tmp_path)
    store.put_bytes(marker_key("a.csv"), b'{"version": "x", "pad": "' + b"p" * MARKER_MAX_BYTES + b'"}')

    def no_reading(key: str) -> bytes:
        raise AssertionError("an oversized marker was read")

    store.get_bytes = no_reading  # type: ignore[method-assign]
    marker, note = read_marker(store, "a.csv")
    assert marker is None and note is not None and "more than" in note


def test_artifact_keys_are_stable_per_manifest_and_valid_for_prefect() -> None:
    one = artifact_key("s3://bkt/incoming/Spring Sale_2026.csv")
    assert one == artifact_key("s3://bkt/incoming/Spring Sale_2026.csv")
    assert re.fullmatch(r"[a-z0-9-]+", one) and one.startswith("watch-spring-sale-2026-")
    assert artifact_key("s3://bkt/incoming/A.csv") != artifact_key("s3://bkt/incoming/a.csv")
    assert re.fullmatch(r"[a-z0-9-]+", artifact_key("s3://b/ünïcode/%%%.jsonl"))


# --- the tick, with a fake edit deployment ---------------------------------------------------------------


class FakeEditDeployment:
    """Stands in for ``arun_deployment``: idempotency keys map to runs, like the Prefect API does.

    ``behaviour`` maps a manifest name to what its run does: ``crash``, ``refuse`` (ManifestInvalid),
    ``stop:<cause>`` (a Completed run whose summary says it stopped), else it succeeds."""

    def __init__(self, behaviour: dict[str, str] | None = None) -> None:
        self.behaviour = behaviour or {}
        self.runs: dict[str, FlowRun] = {}
        self.started: list[str] = []
        self.options: list[dict[str, Any]] = []

    async def __call__(
        self, name: str, *, parameters: dict[str, object], idempotency_key: str, timeout: float | None
    ) -> FlowRun:
        assert timeout == 0  # the scheduler looks first, then waits itself
        if idempotency_key in self.runs:
            return self.runs[idempotency_key]
        self.started.append(idempotency_key)
        options = parameters["options"]
        assert isinstance(options, dict)
        self.options.append(options)
        what = self.behaviour.get(Path(str(options["manifest"])).name, "ok")
        state: State[Any]
        if what == "crash":
            state = Crashed(message="boom")
        elif what == "refuse":
            state = Failed(
                message="Flow run encountered an exception: ManifestInvalid: manifest has 1 invalid row problem(s)"
            )
        else:
            state = Completed()
            stopped = {"cause": what.split(":", 1)[1], "reason": "cap"} if what.startswith("stop:") else None
            summary = {"by_status": {"succeeded": 1}, "run_id": options["run_id"], "stopped_by": stopped}
            LocalDestination(str(options["dest"])).put_bytes(
                f"_runs/{options['run_id']}/summary.json", json.dumps(summary).encode()
            )
        run = FlowRun(flow_id=uuid4(), state=state, parameters=parameters)
        self.runs[idempotency_key] = run
        return run

    def starts_of(self, name: str) -> list[str]:
        return [k for k in self.started if f"/{name}#" in k]


@pytest.fixture
def no_prefect_api(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    """No artifacts, and the events the tick emits collected instead of sent."""
    events: list[tuple[str, dict[str, Any]]] = []

    async def skip(*args: object, **kwargs: object) -> None:
        return None

    monkeypatch.setattr("flows.scheduled._publish_manifest", skip)
    monkeypatch.setattr("flows.scheduled.acreate_table_artifact", skip)
    monkeypatch.setattr("flows.scheduled.emit", lambda event, subject, **kw: events.append((event, kw)))
    return events


def tick_dirs(tmp_path: Path) -> tuple[LocalDestination, LocalDestination, str, str]:
    prefix, dest = tmp_path / "incoming", tmp_path / "edited"
    return LocalDestination(prefix), LocalDestination(dest), str(prefix), str(dest)


def names(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(Path(r["manifest"]).name for r in rows)


async def tick(prefix: str, dest: str, **kwargs: Any) -> dict[str, Any]:
    from flows.scheduled import process_new_manifests

    result: dict[str, Any] = await process_new_manifests.fn(prefix=prefix, dest=dest, **kwargs)
    return result


async def test_each_manifest_version_runs_once_and_crashed_runs_are_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_prefect_api: list[Any]
) -> None:
    fake = FakeEditDeployment({"bad.csv": "crash"})
    monkeypatch.setattr("flows.scheduled.arun_deployment", fake)
    watched, store, prefix, dest = tick_dirs(tmp_path)
    for key in ("a.csv", "sub/b.jsonl", "bad.csv", "notes.txt", "_runs/x/results.csv"):
        watched.put_bytes(key, f"content of {key}".encode())

    first = await tick(prefix, dest)
    assert names(first["processed"]) == ["a.csv", "b.jsonl"] and names(first["failed"]) == ["bad.csv"]
    assert "CRASHED" in first["failed"][0]["reason"]
    marker = json.loads(store.get_bytes("_watch/sub/b.jsonl.json") or b"{}")
    assert marker["summary"]["by_status"] == {"succeeded": 1} and marker["dest"] == f"{dest}/sub/b"
    assert marker["outcome"] == "processed"
    assert store.get_bytes("_watch/bad.csv.json") is None  # a crash is not the manifest's fault
    assert not any(k.endswith(".json") for k in watched.list_keys())  # nothing written where drops land

    second = await tick(prefix, dest)
    assert len(second["skipped"]) == 2 and second["processed"] == []
    assert names(second["failed"]) == ["bad.csv"]
    assert len(fake.starts_of("a.csv")) == 1
    bad_attempts = [k.rsplit("#", 1)[-1] for k in fake.starts_of("bad.csv")]
    assert bad_attempts[1:] == ["attempt-2"]  # one new attempt per tick, not a retry storm

    watched.put_bytes("a.csv", b"a new version of the drop")
    third = await tick(prefix, dest)
    assert names(third["processed"]) == ["a.csv"] and len(fake.starts_of("a.csv")) == 2


async def test_a_tick_that_crashed_after_starting_a_run_attaches_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_prefect_api: list[Any]
) -> None:
    fake = FakeEditDeployment()
    monkeypatch.setattr("flows.scheduled.arun_deployment", fake)
    watched, store, prefix, dest = tick_dirs(tmp_path)
    watched.put_bytes("drop.csv", b"x")
    await tick(prefix, dest)
    store.delete(marker_key("drop.csv"))  # the marker write was lost with the crash

    again = await tick(prefix, dest)
    assert len(fake.started) == 1  # no second run: the same idempotency key found the first
    first_run_id = next(iter(fake.runs.values())).parameters["options"]["run_id"]  # type: ignore[index]
    assert again["processed"][0]["run_id"] == first_run_id
    assert json.loads(store.get_bytes(marker_key("drop.csv")) or b"{}")["run_id"] == first_run_id


async def test_a_forged_nested_marker_in_the_prefix_neither_stops_the_tick_nor_skips_its_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_prefect_api: list[Any]
) -> None:
    fake = FakeEditDeployment()
    monkeypatch.setattr("flows.scheduled.arun_deployment", fake)
    watched, store, prefix, dest = tick_dirs(tmp_path)
    deep = b"[" * 200_000 + b"]" * 200_000
    for key in ("a.csv", "b.csv", "c.csv"):
        watched.put_bytes(key, key.encode())
    # The old marker place, forged by a dropper: "processed" with the right version, and a parser bomb.
    version = manifest_version(watched, "a.csv")
    watched.put_bytes("a.csv.processed.json", json.dumps({"version": version}).encode())
    watched.put_bytes("b.csv.processed.json", deep)
    # A corrupt marker where markers do live: ignored (the run is redone, the ledger skips done jobs).
    store.put_bytes(marker_key("b.csv"), b"[" * 20_000 + b"]" * 20_000)  # small, yet a RecursionError

    result = await tick(prefix, dest)
    assert names(result["processed"]) == ["a.csv", "b.csv", "c.csv"] and result["failed"] == []
    b_row = next(r for r in result["processed"] if r["manifest"].endswith("b.csv"))
    assert "nested deeper" in b_row["note"]
    assert parse_marker(store.get_bytes(marker_key("b.csv")) or b"")["outcome"] == "processed"


async def test_colliding_drops_fail_with_their_reason_and_the_rest_of_the_tick_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_prefect_api: list[tuple[str, dict[str, Any]]]
) -> None:
    fake = FakeEditDeployment()
    monkeypatch.setattr("flows.scheduled.arun_deployment", fake)
    watched, _, prefix, dest = tick_dirs(tmp_path)
    for key in ("a.csv", "a.jsonl", "z.csv"):
        watched.put_bytes(key, key.encode())

    result = await tick(prefix, dest)
    assert names(result["failed"]) == ["a.csv", "a.jsonl"] and names(result["processed"]) == ["z.csv"]
    assert all("rename one" in r["reason"] for r in result["failed"])
    assert fake.starts_of("a.csv") == [] and fake.starts_of("a.jsonl") == []
    refused = [e for e, _ in no_prefect_api if e == "qwenedit.watch.refused"]
    assert len(refused) == 2
    assert no_prefect_api[-1][0] == "qwenedit.watch.tick-problems" and no_prefect_api[-1][1]["failed"] == 2

    watched.delete("a.jsonl")  # the dropper renames one: the other runs on the next tick
    again = await tick(prefix, dest)
    assert names(again["processed"]) == ["a.csv"] and again["failed"] == []


async def test_an_error_on_one_manifest_is_one_failed_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_prefect_api: list[Any]
) -> None:
    fake = FakeEditDeployment()
    monkeypatch.setattr("flows.scheduled.arun_deployment", fake)
    watched, _, prefix, dest = tick_dirs(tmp_path)
    for key in ("a.csv", "b.csv", "c.csv"):
        watched.put_bytes(key, key.encode())
    real_version = manifest_version

    def version(store: Any, key: str) -> str:
        if key == "b.csv":
            raise RecursionError("maximum recursion depth exceeded")
        return real_version(store, key)

    monkeypatch.setattr("flows.scheduled.manifest_version", version)
    result = await tick(prefix, dest)
    assert names(result["processed"]) == ["a.csv", "c.csv"]
    assert [r["reason"] for r in result["failed"]] == ["RecursionError: maximum recursion depth exceeded"]


async def test_a_refused_manifest_is_not_tried_again_until_a_new_version_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_prefect_api: list[Any]
) -> None:
    fake = FakeEditDeployment({"bad.csv": "refuse"})
    monkeypatch.setattr("flows.scheduled.arun_deployment", fake)
    watched, store, prefix, dest = tick_dirs(tmp_path)
    watched.put_bytes("bad.csv", b"v1")

    first = await tick(prefix, dest)
    assert "ManifestInvalid" in first["failed"][0]["reason"]
    assert "not retried until a new version" in first["failed"][0]["reason"]
    assert parse_marker(store.get_bytes(marker_key("bad.csv")) or b"")["outcome"] == "failed"

    second = await tick(prefix, dest)
    assert second["failed"] == [] and "drop a new version" in second["skipped"][0]["reason"]
    assert len(fake.starts_of("bad.csv")) == 1

    watched.put_bytes("bad.csv", b"v2")
    third = await tick(prefix, dest)
    assert names(third["failed"]) == ["bad.csv"] and len(fake.starts_of("bad.csv")) == 2


async def test_a_shared_cap_ends_the_ticks_starts_and_the_stopped_run_continues_next_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_prefect_api: list[Any]
) -> None:
    fake = FakeEditDeployment({"a.csv": "stop:daily_budget"})
    monkeypatch.setattr("flows.scheduled.arun_deployment", fake)
    watched, store, prefix, dest = tick_dirs(tmp_path)
    for key in ("a.csv", "b.csv", "c.csv"):
        watched.put_bytes(key, key.encode())

    first = await tick(prefix, dest)
    assert names(first["stopped"]) == ["a.csv"] and "daily_budget" in first["stopped"][0]["reason"]
    assert names(first["not_started"]) == ["b.csv", "c.csv"]
    assert "spend cap reached" in first["not_started"][0]["reason"]
    assert fake.starts_of("b.csv") == [] and store.get_bytes(marker_key("a.csv")) is None

    fake.behaviour = {}  # the next day: the cap has room again
    second = await tick(prefix, dest)
    assert names(second["processed"]) == ["a.csv", "b.csv", "c.csv"]
    assert [k.rsplit("#", 1)[-1] for k in fake.starts_of("a.csv")][1:] == ["attempt-2"]


async def test_a_runs_own_budget_stop_does_not_end_the_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_prefect_api: list[Any]
) -> None:
    fake = FakeEditDeployment({"a.csv": "stop:budget"})
    monkeypatch.setattr("flows.scheduled.arun_deployment", fake)
    watched, _, prefix, dest = tick_dirs(tmp_path)
    for key in ("a.csv", "b.csv"):
        watched.put_bytes(key, key.encode())
    result = await tick(prefix, dest)
    assert names(result["stopped"]) == ["a.csv"] and names(result["processed"]) == ["b.csv"]


@pytest.mark.skipif("spend_ledger" not in RunOptions.model_fields, reason="RunOptions.spend_ledger not yet")
async def test_every_run_of_the_watcher_shares_the_spend_ledger_at_its_destination_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_prefect_api: list[Any]
) -> None:
    fake = FakeEditDeployment()
    monkeypatch.setattr("flows.scheduled.arun_deployment", fake)
    watched, _, prefix, dest = tick_dirs(tmp_path)
    for key in ("a.csv", "sub/b.csv"):
        watched.put_bytes(key, key.encode())
    await tick(prefix, dest)
    assert {str(o["spend_ledger"]).rstrip("/") for o in fake.options} == {dest}


async def test_a_destination_inside_the_watched_prefix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="outside the prefix"):
        await tick(str(tmp_path / "in"), str(tmp_path / "in" / "out"))


def test_a_watched_s3_manifest_reads_inputs_only_from_its_own_bucket_unless_the_deployment_says() -> None:
    from flows.scheduled import bucket_root

    assert bucket_root("s3://catalogue/incoming/a.csv") == "s3://catalogue/"
    assert bucket_root("/srv/incoming/a.csv") is None


@pytest.mark.skipif("allow_input_prefix" not in RunOptions.model_fields, reason="policy options not yet")
async def test_runs_started_from_a_local_prefix_get_no_input_prefix_and_deployment_prefixes_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_prefect_api: list[Any]
) -> None:
    fake = FakeEditDeployment()
    monkeypatch.setattr("flows.scheduled.arun_deployment", fake)
    watched, _, prefix, dest = tick_dirs(tmp_path)
    watched.put_bytes("a.csv", b"a")
    await tick(prefix, dest)
    watched.put_bytes("a.csv", b"a, version 2")  # a new version: a new run, not the first one attached again
    await tick(prefix, str(tmp_path / "other"), parameters={"allow_input_prefix": ["s3://shared/img/"]})
    assert [list(o["allow_input_prefix"]) for o in fake.options] == [[], ["s3://shared/img/"]]
