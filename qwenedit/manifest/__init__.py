"""Read a CSV or JSONL manifest, report every problem in it at once, and turn its rows into Jobs.

=============  ========================================================================================
Module         Its job
=============  ========================================================================================
``source``     open a manifest: local path, ``s3://`` or ``https://`` (downloaded once), gzip, UTF-8,
               within ``ManifestLimits`` (bytes, decompressed bytes, rows; line length)
``records``    one CSV or JSONL row as canonical fields, image references and extra columns
``rules``      the per-field checks of one record (job_id, images, prompt, model, n, size, seed, ...)
``problems``   ``Problem`` (located: row, job_id, column, reason), ``Validation``, the bounded store
``read``       the two passes: ``validate_manifest`` (every problem and the quote), ``iter_jobs``
=============  ========================================================================================

``ManifestError`` lives in :mod:`qwenedit.errors`. Import the names from here.
"""

from __future__ import annotations

from qwenedit.manifest.problems import ROW_NUMBERS, Problem, Severity, Validation
from qwenedit.manifest.read import iter_jobs, validate_manifest
from qwenedit.manifest.records import IMAGE_COLUMNS, REQUIRED_CSV_COLUMNS
from qwenedit.manifest.source import DEFAULT_LIMITS, MIB, ManifestLimits, ManifestSource, manifest_base

__all__ = [
    "DEFAULT_LIMITS",
    "IMAGE_COLUMNS",
    "MIB",
    "REQUIRED_CSV_COLUMNS",
    "ROW_NUMBERS",
    "ManifestLimits",
    "ManifestSource",
    "Problem",
    "Severity",
    "Validation",
    "iter_jobs",
    "manifest_base",
    "validate_manifest",
]
