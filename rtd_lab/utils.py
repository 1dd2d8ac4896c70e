"""Small helpers: config hashing, atomic writes, flattening for loggers, the CPU allocator setting."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


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
        # mkstemp makes the file 0600; the user's umask decides, as for any file they write (a colleague
        # on a shared cluster must be able to read results and a shared cache).
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_dataset_atomically(ds, path: Path) -> None:
    """A Hugging Face dataset saved beside ``path`` and renamed into place: "it exists" means "it is whole"."""
    tmp = path.parent / f".{path.name}.tmp-{time.time_ns()}"
    ds.save_to_disk(str(tmp))
    if path.exists():  # an older assembly of the same rows: replace it
        shutil.rmtree(path)
    tmp.rename(path)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


def differing_fields(old: dict, new: dict, limit: int = 8) -> str:
    """``"sample.n_samples: 2 -> 4; seed: 0 -> 7"``: what a refusal to reuse an artifact names."""
    a, b = flatten(old), flatten(new)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, "<unset>") != b.get(k, "<unset>"))
    shown = "; ".join(f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in keys[:limit])
    return shown + (f"; and {len(keys) - limit} more" if len(keys) > limit else "")


def artifact_key(version: int, key_parts: dict) -> str:
    """The one key rule of every cached artifact (teachers, student bases, PRMs, segmenters, RFT
    samples, the teacher cache): a hash of what made it, plus the version of the code that builds it
    (bumped when that code's output changes for the same inputs, so no stale artifact is reused)."""
    return config_hash({"version": version, **key_parts})


def build_or_load(
    cache_dir: str | Path, kind: str, version: int, key_parts: dict, marker: str, build, what: str
) -> tuple[Path, dict]:
    """``<cache_dir>/<kind>/<key>``: built once by ``build(tmp) -> metadata`` on a miss (``build_once``:
    atomic, concurrent runs safe), every file verified against its hash on each load. Returns the
    folder and its metadata (which holds ``key``)."""
    key = artifact_key(version, key_parts)
    path = Path(cache_dir) / kind / key
    if (path / marker).exists():
        logging.getLogger(__name__).info("%s %s loaded from cache (%s)", what, key, path)
    else:
        logging.getLogger(__name__).info("%s %s not in cache: building it (%s)", what, key, path)
        build_once(path, marker, lambda tmp: {**build(tmp), "key": key})
    return path, verify_built(path, marker, f"cached {what}")


def build_once(path: Path, marker: str, build) -> None:
    """Make the cached folder ``path`` unless it is complete (``path/marker`` exists).

    ``build(tmp)`` fills a temporary folder beside it and returns the metadata written to
    ``marker`` last, so its presence means complete; the folder is then renamed into place. A
    crash leaves no half folder behind, and when a concurrent run got there first, theirs is kept.
    """
    if (path / marker).exists():
        return
    with build_lock(path):
        if (path / marker).exists():  # built by the run this one waited for
            return
        remove_stale_builds(path)
        tmp = path.parent / f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
        tmp.mkdir(parents=True)
        try:
            meta = build(tmp)
            # Every file's hash, checked at each load (verify_built): a flipped byte in a cached model
            # must stop the run that would use it, not train a student on it.
            atomic_write_json(tmp / marker, {**meta, "files": file_hashes(tmp, exclude={marker})})
            try:
                tmp.rename(path)
            except OSError:  # another run finished the same artifact first: use theirs
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextlib.contextmanager
def build_lock(path: Path):
    """Hold an exclusive lock on building ``path`` (``flock`` on a hidden file beside it).

    The jobs of a parallel sweep start together and need the same teacher, PRM or cache: the first
    builds it, the others wait and load it, instead of all building it at once. Where the file
    system has no locks, every run builds and the atomic rename of ``build_once`` keeps one.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        fcntl = None
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as handle:
        locked = False
        if fcntl is not None:
            try:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    logging.getLogger(__name__).info("waiting for another run that is building %s", path)
                    fcntl.flock(handle, fcntl.LOCK_EX)
                locked = True
            except OSError:  # a file system without locks
                pass
        try:
            yield
        finally:
            if locked:
                fcntl.flock(handle, fcntl.LOCK_UN)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_hashes(root: Path, exclude: set[str] = frozenset()) -> dict[str, str]:
    """{relative path: SHA-256} of every file under ``root``."""
    return {
        str(f.relative_to(root)): sha256_file(f)
        for f in sorted(root.rglob("*"))
        if f.is_file() and str(f.relative_to(root)) not in exclude
    }


def verify_built(path: Path, marker: str, what: str) -> dict:
    """The metadata of a folder made by ``build_once``, after checking every file against its hash."""
    meta = json.loads((path / marker).read_text())
    recorded = meta.get("files")
    if recorded is None:
        logging.getLogger(__name__).warning(
            "%s %s was built without file hashes (an older rtd_lab): not verified", what, path
        )
        return meta
    for name, digest in tqdm(recorded.items(), desc=f"verify {what}", leave=False, disable=len(recorded) < 16):
        file = path / name
        if not file.is_file():
            raise ValueError(f"{what} {path}: {name} is missing; delete {path} to rebuild it")
        if sha256_file(file) != digest:
            raise ValueError(
                f"{what} file {file} differs from the one built (SHA-256 mismatch: changed or corrupted); "
                f"delete {path} to rebuild it"
            )
    return meta


def remove_stale_builds(path: Path) -> None:
    """Delete the temporary folders of killed builds of ``path`` (this host's, whose process is gone)."""
    host = socket.gethostname()
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.tmp-{glob_escape(host)}-*"):
        pid = tmp.name[len(f".{path.name}.tmp-{host}-") :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# glibc mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def retain_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the kernel.

    A CPU training step allocates and frees the same activation buffers every step. By default glibc
    serves large blocks with fresh ``mmap`` pages (above M_MMAP_THRESHOLD: 128 KiB, adapted
    upwards as blocks are freed) and returns free memory at the heap's top (above M_TRIM_THRESHOLD),
    so every step faults its memory back in, page by page, in the kernel. Measured on the default
    models (benchmarks/step_time.py, benchmarks/README.md): a fifth of the process's CPU time was that
    kernel time, steps took about 30 % less time with this setting, and Lightning's loop, which frees in
    another order than a plain loop, had faulted 30-60 % more than the plain loop. This is what the
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables do, set from inside
    the process (they must be set before it starts). Blocks up to 32 MiB (glibc's maximum threshold)
    come from the heap, and up to 1 GiB of free heap is kept; the cost is a resident size that stays
    at its peak. GPU memory is not affected.

    Returns whether the setting took effect (False, and nothing changed, off Linux/glibc).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success, 0 on error
    return bool(mallopt(M_MMAP_THRESHOLD, 32 * 2**20)) and bool(mallopt(M_TRIM_THRESHOLD, 2**30))
