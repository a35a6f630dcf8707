"""The CLI's one way into the Prefect flows: ``qwenedit/`` imports no ``flows`` or ``prefect`` elsewhere.

Imports are deferred: ``qwenedit validate`` and ``--help`` never load Prefect.
"""

from __future__ import annotations

from typing import Any

from qwenedit.run import Approver, Run
from qwenedit.summary import RunSummary


def start_prefect_server() -> None:
    """Prefect's temporary API server, in its own process group (a Ctrl-C must not stop it mid-drain)."""
    from flows.ephemeral_server import start_detached

    start_detached()


async def run_in_flow(run: Run, approve: Approver) -> RunSummary:
    """Execute and finish ``run`` (opened by the caller) as an ``edit-manifest`` flow run."""
    from flows.edit_manifest import OpenedRun, edit_opened_run

    # The flow ends in a Completed state whose data is the summary.json form: calling it returns that data.
    data: Any = await edit_opened_run(OpenedRun.of(run, approve))
    return RunSummary.from_json(data)
