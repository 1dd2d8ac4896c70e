"""Small helpers: config hashing, atomic writes, flattening for loggers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any


def config_hash(obj: Any, length: int = 12) -> str:
    """A stable key for whatever produced an artifact (a plain, JSON-serialisable structure)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_jsonl(path: str | Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in records))


def flatten(d: dict, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}: loggers (W&B, CSV) compare runs by flat keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key, sep))
        else:
            out[key] = v
    return out


def build_once(path: Path, marker: str, build) -> None:
    """Make the cached folder ``path`` unless it is complete (``path/marker`` exists).

    ``build(tmp)`` fills a temporary folder beside it and returns the metadata written to
    ``marker`` last, so its presence means complete; the folder is then renamed into place. A
    crash leaves no half folder behind, and when a concurrent run got there first, theirs is kept.
    """
    if (path / marker).exists():
        return
    tmp = path.parent / f".{path.name}.tmp-{time.time_ns()}"
    tmp.mkdir(parents=True)
    try:
        atomic_write_json(tmp / marker, build(tmp))
        try:
            tmp.rename(path)
        except OSError:  # another run finished the same artifact first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
