"""Input images: what a manifest reference means, how it reaches the API, and whether it is usable.

=================  ====================================================================================
Module             What it holds
=================  ====================================================================================
``references``     ``parse_reference`` (syntax only: URL, ``s3://``, local path, data URI), ``Ref``,
                   ``data_uri_bytes``, ``short_ref``
``images``         content checks by magic bytes and Pillow (``sniff_image_format``, ``inspect_image``),
                   data URI sizes
``listings``       ``PrefixListings``: S3 ETags learned by listing a prefix instead of one HEAD per key
``resolver``       ``InputResolver``: the input-root guard, ``resolve`` (what the API gets),
                   ``identity`` (what the fingerprint hashes), ``check`` (``--check-images``)
=================  ====================================================================================

``InputError`` lives in :mod:`qwenedit.errors`; the API's byte and pixel limits in
:mod:`qwenedit.catalog.limits`. Import the names from here.
"""

from __future__ import annotations

from qwenedit.catalog.limits import MAX_DATA_URI_BYTES, MAX_IMAGE_BYTES
from qwenedit.inputs.images import (
    MAX_SIDE_PX,
    MIME_TYPES,
    MIN_SIDE_PX,
    ImageInfo,
    data_uri_for,
    data_uri_length,
    inspect_image,
    sniff_image_format,
)
from qwenedit.inputs.listings import ListPage, PrefixListings, s3_prefix
from qwenedit.inputs.references import Ref, data_uri_bytes, parse_reference, short_ref
from qwenedit.inputs.resolver import DEFAULT_PRESIGN_EXPIRY_S, Check, InputResolver, S3Mode, identities

__all__ = [
    "DEFAULT_PRESIGN_EXPIRY_S",
    "MAX_DATA_URI_BYTES",
    "MAX_IMAGE_BYTES",
    "MAX_SIDE_PX",
    "MIME_TYPES",
    "MIN_SIDE_PX",
    "Check",
    "ImageInfo",
    "InputResolver",
    "ListPage",
    "PrefixListings",
    "Ref",
    "S3Mode",
    "data_uri_bytes",
    "data_uri_for",
    "data_uri_length",
    "identities",
    "inspect_image",
    "parse_reference",
    "s3_prefix",
    "short_ref",
    "sniff_image_format",
]
