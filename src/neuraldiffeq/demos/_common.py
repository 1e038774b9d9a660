"""Shared plumbing of the demos: output folder, metrics file."""

from __future__ import annotations

import json
import os
import tempfile


def prepare_out(out: str) -> str:
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out!r}: cannot create the folder ({e}).") from None
    return out


def write_json(path: str, payload: dict) -> None:
    """Write JSON atomically (temp file + rename)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2, default=float)
    os.replace(tmp, path)
