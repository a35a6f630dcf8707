"""Alerts for runs nobody watches, through Prefect's own notification blocks and automations.

    python -m flows.alerts --webhook https://alerts.example.com/hook   # a Custom Webhook block, saved
    python -m flows.alerts --block slack-webhook/qwenedit-alerts       # any notification block you saved

Installs (or replaces, by name) one Prefect automation per alert. Each fires on one event and sends
one notification through the block: Prefect's server renders the text and sends it (its ``triggers``
and ``actions`` services, on by default in ``prefect server start``). qwenedit sends no HTTP itself:
the flows only emit events (``flows/runlog.py``), and a run that cannot emit one still runs.

| Automation | Fires on |
|---|---|
| ``qwenedit-alert-approval`` | a run waits for approval in the Prefect UI (``qwenedit.run.approval-requested``) |
| ``qwenedit-alert-cap`` | a run stopped at a money cap: its budget, the daily or monthly cap (``qwenedit.run.cap-reached``) |
| ``qwenedit-alert-failed`` | an ``edit-manifest`` / ``edit-manifest-sharded`` / ``process-new-manifests`` flow run Failed or Crashed (Prefect's own events), or a run stopped on anything else (``qwenedit.run.stopped``: breaker, signal, declined) |
| ``qwenedit-alert-flagged`` | a run ended with QA-flagged jobs, possibly billed calls or billed-not-stored images (``qwenedit.run.flagged``) |
| ``qwenedit-alert-watch`` | a watcher tick had failed manifests or reached a cap (``qwenedit.watch.tick-problems``) |
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from uuid import UUID

from prefect.automations import Automation, EventTrigger, Posture, SendNotification
from prefect.blocks.core import Block
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client

from flows.runlog import APPROVAL_REQUESTED, CAP_REACHED, FLAGGED, STOPPED, TICK_PROBLEMS

PREFIX = "qwenedit-alert-"
WEBHOOK_BLOCK = "qwenedit-alerts"
FLOWS = ["edit-manifest", "edit-manifest-sharded", "process-new-manifests"]

# Rendered by the Prefect server (Jinja): `event` is the triggering event; `flow_run` the flow run it
# relates to (looked up by the server).
_WHERE = "{{ event.resource['prefect.resource.name'] }}"
_RUN = "flow run {{ flow_run.name }}"


@dataclass(frozen=True)
class Alert:
    """One automation: the events it fires on and the notification it sends."""

    name: str
    events: tuple[str, ...]
    subject: str
    body: str
    match: dict[str, str | list[str]] = field(default_factory=lambda: {"prefect.resource.id": "qwenedit.*"})
    match_related: dict[str, str | list[str]] = field(default_factory=dict)

    def automation(self, block_document_id: UUID) -> Automation:
        return Automation(
            name=PREFIX + self.name,
            description=f"qwenedit alert ({', '.join(self.events)}); installed by python -m flows.alerts",
            trigger=EventTrigger(
                expect=set(self.events),
                match=self.match,  # type: ignore[arg-type]
                match_related=self.match_related,  # type: ignore[arg-type]
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=[
                SendNotification(block_document_id=block_document_id, subject=self.subject, body=self.body)
            ],
        )


ALERTS: tuple[Alert, ...] = (
    Alert(
        "approval",
        (APPROVAL_REQUESTED,),
        "qwenedit: a run waits for approval",
        f"{_WHERE} waits for approval ({_RUN}); it declines by itself after "
        "{{ event.payload.timeout_s }} s. Approve or decline on the flow run's page in the Prefect UI.",
    ),
    Alert(
        "cap",
        (CAP_REACHED,),
        "qwenedit: a run reached a spending cap",
        f"{_WHERE}: run {{{{ event.resource['qwenedit.run-id'] }}}} stopped at a cap "
        "({{ event.payload.cause }}: {{ event.payload.detail }}); spent {{ event.payload.spend }}. "
        "No new call was started.",
    ),
    Alert(
        "failed",
        ("prefect.flow-run.Failed", "prefect.flow-run.Crashed"),
        "qwenedit: a run failed",
        f"{_RUN} of {{{{ flow.name }}}} ended {{{{ flow_run.state.name }}}}: {{{{ flow_run.state.message }}}}",
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={"prefect.resource.role": "flow", "prefect.resource.name": FLOWS},
    ),
    Alert(
        "stopped",
        (STOPPED,),
        "qwenedit: a run stopped",
        f"{_WHERE}: run {{{{ event.resource['qwenedit.run-id'] }}}} stopped "
        "({{ event.payload.cause }}: {{ event.payload.detail }}); spent {{ event.payload.spend }}.",
    ),
    Alert(
        "flagged",
        (FLAGGED,),
        "qwenedit: a run needs a look",
        f"{_WHERE}: run {{{{ event.resource['qwenedit.run-id'] }}}} ended with "
        "{{ event.payload.qa_flagged_jobs }} QA-flagged job(s), {{ event.payload.possibly_billed_jobs }} "
        "possibly billed call(s), {{ event.payload.billed_not_stored_images }} image(s) billed but not "
        "stored; spent {{ event.payload.spend }}.",
    ),
    Alert(
        "watch",
        (TICK_PROBLEMS,),
        "qwenedit: the watcher's tick had problems",
        f"Tick of {_WHERE} ({_RUN}): {{{{ event.payload.failed }}}} failed manifest(s) "
        "{{ event.payload.manifests }}; cap: {{ event.payload.cap_reached or 'not reached' }}. "
        "See the tick's manifest-tick artifact for each reason.",
    ),
)


async def webhook_block(url: str, name: str = WEBHOOK_BLOCK) -> UUID:
    """Save (or overwrite) a Custom Webhook notification block that POSTs ``{"subject", "body"}`` as JSON."""
    block = CustomWebhookNotificationBlock(
        name=name, url=url, json_data={"subject": "{{subject}}", "body": "{{body}}"}
    )
    return await block.asave(name, overwrite=True)


async def saved_block(slug: str) -> UUID:
    """The id of a saved notification block, named ``block-type-slug/name`` (``slack-webhook/alerts``)."""
    block: Block = await Block.aload(slug)
    document_id: UUID | None = block._block_document_id
    if document_id is None:
        raise ValueError(f"block {slug} has no saved document")
    return document_id


async def install(block_document_id: UUID, alerts: Sequence[Alert] = ALERTS) -> dict[str, UUID]:
    """Create every alert's automation, replacing any of the same name; their ids by name."""
    ids: dict[str, UUID] = {}
    async with get_client() as client:
        for alert in alerts:
            for old in await client.read_automations_by_name(PREFIX + alert.name):
                await client.delete_automation(old.id)
            created = await alert.automation(block_document_id).acreate()
            assert created.id is not None
            ids[PREFIX + alert.name] = created.id
    return ids


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.alerts", description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--webhook", help=f"URL to POST alerts to (saved as the block {WEBHOOK_BLOCK!r})")
    where.add_argument(
        "--block", help="a saved notification block, TYPE-SLUG/NAME (e.g. slack-webhook/alerts)"
    )
    args = parser.parse_args(argv)

    async def run() -> dict[str, UUID]:
        block_id = await (webhook_block(args.webhook) if args.webhook else saved_block(args.block))
        return await install(block_id)

    for name, automation_id in asyncio.run(run()).items():
        print(f"{name}\t{automation_id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
