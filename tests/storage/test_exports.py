"""The storage package keeps every name callers imported from the single ``storage.py`` it replaced."""

from __future__ import annotations

import importlib

import pytest

# Every public name of the old module (its __all__ plus what callers imported beyond it).
OLD_NAMES = [
    "ConditionalWritesUnsupported",
    "CopyError",
    "Destination",
    "InvalidKey",
    "LocalDestination",
    "PutOutcome",
    "Readable",
    "S3Destination",
    "S3Settings",
    "StorageError",
    "copy_url",
    "decode_metadata",
    "encode_metadata",
    "make_s3_client",
    "open_destination",
    "validate_key",
    "parse_size",
    "KiB",
    "MiB",
    "GiB",
    "METADATA_BUDGET",
]


@pytest.mark.parametrize("name", OLD_NAMES)
def test_old_import_still_works(name: str) -> None:
    storage = importlib.import_module("qwenedit.storage")
    assert name in storage.__all__
    assert getattr(storage, name) is not None


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("S3Settings", "settings"),
        ("make_s3_client", "settings"),
        ("validate_key", "keys"),
        ("encode_metadata", "keys"),
        ("S3Destination", "s3"),
        ("LocalDestination", "local"),
        ("copy_url", "copy"),
        ("Destination", "base"),
    ],
)
def test_each_name_is_the_one_defined_in_its_module(name: str, module: str) -> None:
    storage = importlib.import_module("qwenedit.storage")
    home = importlib.import_module(f"qwenedit.storage.{module}")
    assert getattr(storage, name) is getattr(home, name)
