"""The run layer: one manifest, start to finish, with no Prefect in it.

- ``run.wiring``: every check before anything is spent (``prepare``, ``check_destination``) and the
  services and state a run's jobs share (``wire``, ``pacer_pool``);
- ``run.planning``: each row classified against the done listing (``Skip | Fail | Pending``) in a thread;
- ``run.chunks``: chunks of pending rows, scheduled over per-model lanes of the run's window;
- ``run.reports``: results.csv, summary.json, failed.jsonl and report.html, local and at the destination;
- ``run.run``: ``Run`` — open, execute (with the canary question), stop, finish — and ``run_manifest``.
"""

from qwenedit.run.chunks import Chunk, ChunkRunner, outcome_text
from qwenedit.run.run import Approver, Run, exit_code, run_manifest
from qwenedit.run.wiring import Prepared, check_destination, manifest_reading, new_run_id, prepare

__all__ = [
    "Approver",
    "Chunk",
    "ChunkRunner",
    "Prepared",
    "Run",
    "check_destination",
    "exit_code",
    "manifest_reading",
    "new_run_id",
    "outcome_text",
    "prepare",
    "run_manifest",
]
