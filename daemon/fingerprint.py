"""A run's input fingerprint: the item (its key belongs to it), its data, the stage's config
and code. The same fingerprint at the same stage is the same work (a checkpoint skips it),
and `pipewarden replay` checks by it that the data it rebuilt is what a run had."""

from __future__ import annotations

import hashlib
import json
from typing import Any

_CANONICAL = json.JSONEncoder(sort_keys=True, default=str)  # what json.dumps(..., sort_keys=True,
# default=str) makes once per call; fingerprints already stored depend on its exact text


def input_fingerprint(
    pipeline: str, key: str, data: dict[str, Any], config_hash: str, code_ref: str | None,
    code_digest: str,
) -> str:  # fmt: skip
    item = _CANONICAL.encode([pipeline, key, data])
    blob = item + config_hash + (code_ref or "") + code_digest
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
