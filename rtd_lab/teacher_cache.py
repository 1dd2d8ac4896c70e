"""The offline teacher cache: one teacher pass over the training set, reused by every run of a sweep.

The RTD paper prices RTD at ~60 % more training time than standard KD, most of it the teacher's forward
pass in every step. The teacher is frozen, so its outputs on the (fixed) training traces can be
computed once and read back:

* **logits**, sparse: the top-k logits of every supervised position (values in ``dtype``, indices
  in int16 when the vocabulary allows) and ``logsumexp(z / T)`` over the whole vocabulary at the
  KD temperature T, which gives the exact teacher probability of each stored token and the total
  mass of the tail (see ``losses.sparse_kd_loss`` for how the tail is used);
* **boundary states**: the teacher's hidden state at ``teacher.layer`` at every step boundary (RTD);
* **hint states** (only when a method asks, FitNets): full hidden states of its teacher layers.

Layout: ``<paths.cache_dir>/teacher_outputs/<key>/`` with ``manifest.json`` and shards
``shard_00000/ ...`` of ``shard_size`` examples, one ``.npy`` per array, read memory-mapped. The key
hashes what produced it: the teacher (its cache key, or its path and weight files), the training
data as encoded (token ids, boundary positions: so the boundary source is in it), k, the dtype,
the temperature, the layers. Writing is atomic at two levels: each shard lands with a rename into a
``.partial`` folder (a crash keeps finished shards, the next build resumes after them), and the
folder becomes the cache by a last rename once the manifest is written. On load, every file's size
(and, with ``verify: hash``, its SHA-256) and the data fingerprint are checked; a cache that fails is
rebuilt (mode build) or ignored with a warning (mode auto), never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rtd_lab.models.teacher import SparseLogits, TeacherOutput, layer_states
from rtd_lab.utils import artifact_key, atomic_write_json, build_lock, sha256_file

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
CACHE_VERSION = 1
MODES = ("auto", "build", "off")
TAILS = ("bucket", "renormalize")
DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass(frozen=True)
class TeacherCacheSettings:
    """The config's ``teacher_cache:`` block; its defaults live in conf/config.yaml."""

    mode: str  # auto: use the cache when present | build: build if missing | off: the teacher runs online
    top_k: int  # logits stored per position (k >= the vocabulary is exact)
    tail: str  # mass outside the top-k: bucket (one extra bin, exact teacher probs) | renormalize
    dtype: str  # of stored logits and hidden states (float32: exact)
    shard_size: int  # examples per shard
    verify: str  # on load: hash (SHA-256 of every file) | size (byte counts only)

    def __post_init__(self):
        for name, allowed in (("mode", MODES), ("tail", TAILS), ("verify", ("hash", "size"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"teacher_cache.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class CacheSpec:
    """What a cache holds: fixed by the run's config and its method."""

    top_k: int
    temperature: float
    layer: int | str  # boundary states of this teacher layer (an index, or "mean": models.teacher.layer_states)
    hint_layers: tuple[int, ...] = ()
    dtype: str = "float16"

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"teacher_cache.top_k must be >= 1, got {self.top_k}")
        if self.dtype not in DTYPES:
            raise ValueError(f"teacher_cache.dtype must be one of {list(DTYPES)}, got {self.dtype!r}")


def data_fingerprint(encoded: list) -> str:
    """A hash of the training examples as the student sees them: ids, prompt lengths, boundaries."""
    h = hashlib.sha256()
    for x in encoded:
        h.update(np.asarray(x.input_ids, dtype=np.int64).tobytes())
        h.update(np.asarray([x.prompt_len, len(x.boundary_pos)], dtype=np.int64).tobytes())
        h.update(np.asarray(x.boundary_pos, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def teacher_identity(teacher_info: dict, model) -> dict:
    """A from-scratch teacher is named by its cache key; a pretrained one by its path and weight files."""
    if "key" in teacher_info:
        return {"key": teacher_info["key"]}
    source = Path(str(teacher_info.get("source", model.name_or_path)))
    files = sorted(source.glob("*.safetensors")) + sorted(source.glob("*.bin")) if source.is_dir() else []
    return {"source": str(source), "weights": [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files]}


def cache_key(identity: dict, fingerprint: str, spec: CacheSpec) -> str:
    return artifact_key(CACHE_VERSION, {"teacher": identity, "data": fingerprint, "spec": spec.__dict__})


# ---- building -----------------------------------------------------------------------------------
@torch.no_grad()
def _teacher_rows(teacher, items: list, spec: CacheSpec, batch_size: int, pad_id: int, device) -> dict[str, list]:
    """The cached arrays of each example of ``items``: a dict of per-example numpy arrays."""
    out: dict[str, list] = {
        "values": [],
        "indices": [],
        "lse": [],
        "boundary": [],
        **{f"hint_{i}": [] for i in spec.hint_layers},
    }
    for start in tqdm(range(0, len(items), batch_size), desc="teacher cache", leave=False):
        chunk = items[start : start + batch_size]
        T = max(len(x.input_ids) for x in chunk)
        ids = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        for b, x in enumerate(chunk):
            ids[b, : len(x.input_ids)] = torch.tensor(x.input_ids)
        # Right padding and causal attention: real positions never see a pad (as in training).
        res = teacher(input_ids=ids.to(device), output_hidden_states=True, use_cache=False)
        logits = res.logits.float()
        k = min(spec.top_k, logits.size(-1))
        values, indices = logits.topk(k, dim=-1)  # (B, T, k), sorted
        lse = torch.logsumexp(logits / spec.temperature, dim=-1)  # (B, T)
        boundary_states = layer_states(res.hidden_states, spec.layer)
        for b, x in enumerate(chunk):
            n, p = len(x.input_ids), x.prompt_len
            sl = slice(p - 1, n - 1)  # positions that predict a supervised token (labels shift by one)
            out["values"].append(values[b, sl].cpu().numpy())
            out["indices"].append(indices[b, sl].cpu().numpy())
            out["lse"].append(lse[b, sl].cpu().numpy())
            pos = torch.tensor(x.boundary_pos, dtype=torch.long, device=ids.device)
            out["boundary"].append(boundary_states[b, pos].float().cpu().numpy())
            for i in spec.hint_layers:
                out[f"hint_{i}"].append(res.hidden_states[i][b, :n].float().cpu().numpy())
    return out


def _write_shard(folder: Path, rows: dict[str, list], spec: CacheSpec, vocab: int) -> None:
    """One shard: per array a flat .npy plus per-example offsets, written then renamed into place."""
    tmp = folder.parent / f".{folder.name}.tmp-{time.time_ns()}"
    tmp.mkdir(parents=True)
    dtype = DTYPES[spec.dtype]
    index_dtype = np.int16 if vocab <= np.iinfo(np.int16).max else np.int32
    arrays = {
        "topk_values": (np.concatenate(rows["values"]).astype(dtype), "pos"),
        "topk_indices": (np.concatenate(rows["indices"]).astype(index_dtype), "pos"),
        "lse": (np.concatenate(rows["lse"]).astype(np.float32), "pos"),
        "boundary_hidden": (np.concatenate(rows["boundary"]).astype(dtype), "boundary"),
        **{name: (np.concatenate(rows[name]).astype(dtype), "tok") for name in rows if name.startswith("hint_")},
    }
    lengths = {"pos": rows["values"], "boundary": rows["boundary"]}
    if spec.hint_layers:
        lengths["tok"] = rows[f"hint_{spec.hint_layers[0]}"]
    for kind, per_example in lengths.items():
        np.save(tmp / f"offsets_{kind}.npy", np.cumsum([0] + [len(a) for a in per_example]).astype(np.int64))
    for name, (array, _) in arrays.items():
        np.save(tmp / f"{name}.npy", array)
    os.replace(tmp, folder)


def build_cache(
    path: Path,
    teacher,
    encoded: list,
    spec: CacheSpec,
    meta: dict,
    *,
    batch_size: int,
    pad_id: int,
    shard_size: int = 4096,
) -> dict:
    """Fill ``path`` (the cache folder) from ``teacher`` over ``encoded``; resumes a crashed build."""
    if shard_size < 1:
        raise ValueError(f"teacher_cache.shard_size must be >= 1, got {shard_size}")
    partial = path.parent / f".{path.name}.partial"
    partial.mkdir(parents=True, exist_ok=True)
    model = teacher.model
    device = next(model.parameters()).device
    vocab = model.get_output_embeddings().out_features
    start_time = time.time()
    shards = []
    for n, start in enumerate(range(0, len(encoded), shard_size)):
        end = min(start + shard_size, len(encoded))
        folder = partial / f"shard_{n:05d}"
        if not folder.exists():  # shards of an earlier, interrupted build are kept
            rows = _teacher_rows(model, encoded[start:end], spec, batch_size, pad_id, device)
            _write_shard(folder, rows, spec, vocab)
            log.info("teacher cache: shard %d (examples %d-%d) written", n, start, end)
        files = {f.name: {"bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in sorted(folder.glob("*.npy"))}
        shards.append({"dir": folder.name, "start": start, "end": end, "files": files})
    n_tokens = sum(len(x.input_ids) - x.prompt_len for x in encoded)
    total = sum(f["bytes"] for s in shards for f in s["files"].values())
    manifest = {
        **meta,
        "n_examples": len(encoded),
        "shards": shards,
        "stats": {
            "supervised_tokens": n_tokens,
            "bytes": total,
            "bytes_per_token": total / max(n_tokens, 1),
            "build_seconds": round(time.time() - start_time, 1),
        },
    }
    atomic_write_json(partial / MANIFEST, manifest)  # last: its presence means complete
    try:
        partial.rename(path)
    except OSError:  # another run finished the same cache first: keep theirs
        shutil.rmtree(partial, ignore_errors=True)
    return manifest


# ---- loading --------------------------------------------------------------------------------------
class TeacherCache:
    """A verified, memory-mapped cache; ``rows(i)`` gives one training example's arrays."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self.spec = CacheSpec(**{**manifest["spec"], "hint_layers": tuple(manifest["spec"]["hint_layers"])})
        self.tail = manifest["tail"]
        self.shards = []
        for shard in manifest["shards"]:
            folder = path / shard["dir"]
            arrays = {f[: -len(".npy")]: np.load(folder / f, mmap_mode="r") for f in shard["files"]}
            self.shards.append((shard["start"], shard["end"], arrays))

    def __len__(self) -> int:
        return self.manifest["n_examples"]

    def spec_hint_names(self) -> set[str]:
        return {f"hint_{i}" for i in self.spec.hint_layers}

    def row(self, i: int) -> dict[str, np.ndarray]:
        for start, end, a in self.shards:
            if start <= i < end:
                j = i - start
                out = {}
                for name, arr in a.items():
                    if name.startswith("offsets_"):
                        continue
                    kind = "pos" if name in ("topk_values", "topk_indices", "lse") else "boundary"
                    kind = "tok" if name.startswith("hint_") else kind
                    off = a[f"offsets_{kind}"]
                    out[name] = arr[off[j] : off[j + 1]]
                return out
        raise IndexError(f"example {i} is not in the teacher cache {self.path} ({len(self)} examples)")


def verify(path: Path, fingerprint: str, encoded: list, level: str = "hash") -> tuple[dict | None, str]:
    """(manifest, "ok") when the cache at ``path`` is complete and matches the data, else (None, why)."""
    manifest_file = path / MANIFEST
    if not manifest_file.exists():
        return None, "absent"
    try:
        manifest = json.loads(manifest_file.read_text())
    except json.JSONDecodeError as err:
        return None, f"{manifest_file}: unreadable manifest ({err})"
    if manifest.get("fingerprint") != fingerprint or manifest.get("n_examples") != len(encoded):
        return None, f"{path}: built for other training data (fingerprint or example count differs)"
    for shard in tqdm(manifest["shards"], desc=f"verify teacher cache ({level})", leave=False):
        for name, info in shard["files"].items():
            f = path / shard["dir"] / name
            if not f.exists():
                return None, f"{f}: missing"
            if f.stat().st_size != info["bytes"]:
                return None, f"{f}: {f.stat().st_size} bytes, the manifest says {info['bytes']} (truncated?)"
            if level == "hash" and sha256_file(f) != info["sha256"]:
                return None, f"{f}: SHA-256 differs from the manifest (corrupted)"
        offsets = np.load(path / shard["dir"] / "offsets_pos.npy")
        expected = [len(x.input_ids) - x.prompt_len for x in encoded[shard["start"] : shard["end"]]]
        if np.diff(offsets).tolist() != expected:
            return None, f"{path / shard['dir']}: token counts differ from the training data"
    return manifest, "ok"


def prepare_teacher_cache(
    settings: TeacherCacheSettings,
    teacher,
    encoded: list,
    spec: CacheSpec,
    teacher_identity_: dict,
    cache_dir: Path,
    *,
    batch_size: int,
    pad_id: int,
    force_build: bool = False,
) -> TeacherCache | None:
    """The run's cache, per ``teacher_cache.mode``: None when the teacher runs online."""
    mode, tail, level = settings.mode, settings.tail, settings.verify
    if mode == "off" and not force_build:
        return None
    fingerprint = data_fingerprint(encoded)
    key = cache_key(teacher_identity_, fingerprint, spec)
    path = Path(cache_dir) / "teacher_outputs" / key
    manifest, why = verify(path, fingerprint, encoded, level)
    if manifest is None and why != "absent":
        log.warning("teacher cache %s is invalid: %s", path, why)
        if mode == "auto" and not force_build:
            log.warning("teacher_cache.mode=auto: the teacher runs online; task=cache (or mode=build) rebuilds it")
            return None
        shutil.rmtree(path, ignore_errors=True)
    if manifest is None:
        if mode == "auto" and not force_build:
            log.info("no teacher cache for this run (%s): teacher online; build one with task=cache", key)
            return None
        # One builder at a time (the jobs of a parallel sweep share the ``.partial`` folder): the
        # others wait, then find the cache complete.
        with build_lock(path):
            manifest, why = verify(path, fingerprint, encoded, level)
            if manifest is None:
                log.info("building the teacher cache %s (%d examples)", path, len(encoded))
                meta = {
                    "key": key,
                    "version": CACHE_VERSION,
                    "fingerprint": fingerprint,
                    "teacher": teacher_identity_,
                    "spec": {**spec.__dict__, "hint_layers": list(spec.hint_layers)},
                    "tail": tail,
                }
                build_cache(
                    path,
                    teacher,
                    encoded,
                    spec,
                    meta,
                    batch_size=batch_size,
                    pad_id=pad_id,
                    shard_size=settings.shard_size,
                )
                manifest, why = verify(path, fingerprint, encoded, level)
                if manifest is None:
                    raise RuntimeError(f"the teacher cache just built at {path} does not verify: {why}")
    manifest["tail"] = tail  # how the tail is used is a loss setting, not part of what is stored
    log.info(
        "teacher cache %s: %d examples, %.1f bytes per supervised token",
        path,
        len(encoded),
        manifest["stats"]["bytes_per_token"],
    )
    return TeacherCache(path, manifest)


def cached_outputs(cache: TeacherCache, batch: dict, hidden_layers: list[int] | None = None):
    """The cached teacher outputs of a training batch, placed and padded like its tokens: a
    ``TeacherOutput`` with the top-k logits (``SparseLogits``, at the positions that predict a
    supervised token; zeros elsewhere, where no label is) and the boundary states (B, K, D), plus
    the hint states (B, T, D) of ``hidden_layers``. Read by the example's ``row`` in the training
    split; the batch's own tensors give each example's length, prompt length and boundary count.
    """
    B, T = batch["input_ids"].shape
    K = batch["boundary_mask"].size(1)
    lengths = batch["attention_mask"].sum(1).tolist()
    prompt_lens = (batch["labels"] != -100).int().argmax(1).tolist()  # the first supervised token
    n_boundaries = batch["boundary_mask"].sum(1).tolist()
    missing = [i for i in hidden_layers or () if f"hint_{i}" not in cache.spec_hint_names()]
    if missing:
        raise RuntimeError(f"the teacher cache holds no hidden states of layers {missing}")
    per = [cache.row(int(r)) for r in batch["row"]]
    k, d = per[0]["topk_values"].shape[1], per[0]["boundary_hidden"].shape[-1]
    values, indices, lse = torch.zeros(B, T, k), torch.zeros(B, T, k, dtype=torch.long), torch.zeros(B, T)
    boundary = torch.zeros(B, K, d)
    hints = {i: torch.zeros(B, T, d) for i in hidden_layers or ()}
    for b, row in enumerate(per):
        sl = slice(prompt_lens[b] - 1, lengths[b] - 1)
        values[b, sl] = torch.from_numpy(np.asarray(row["topk_values"], dtype=np.float32))
        indices[b, sl] = torch.from_numpy(np.asarray(row["topk_indices"], dtype=np.int64))
        lse[b, sl] = torch.from_numpy(np.asarray(row["lse"], dtype=np.float32))
        boundary[b, : n_boundaries[b]] = torch.from_numpy(np.asarray(row["boundary_hidden"], dtype=np.float32))
        for i in hints:
            hints[i][b, : lengths[b]] = torch.from_numpy(np.asarray(row[f"hint_{i}"], dtype=np.float32))
    device = batch["input_ids"].device
    logits = SparseLogits(values.to(device), indices.to(device), lse.to(device), cache.tail)
    layers = tuple(hints[i].to(device) for i in hidden_layers) if hidden_layers else None
    return TeacherOutput(logits, boundary.to(device), layers)
