"""SAMPLE: provenance, batching, several teachers and temperatures, and kill-and-resume."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

import rtd_lab.traces.sample as sample_mod
from rtd_lab.tasks.sample import run_sample

SMALL = [
    "sample.max_questions=12",
    "sample.chunk_questions=5",
    "sample.n_samples=2",
    "sample.batch_size=4",
    "sample.temperatures=[0,1.0]",
    "sample.teachers=[{name: a},{name: b, overrides: {train: {max_steps: 2}}}]",
]


def _cfg(make_cfg, tmp_path, *extra):
    return make_cfg("task=sample", f"sample.out_dir={tmp_path / 'samples'}", *SMALL, *extra)


ONE_TEACHER = "sample.teachers=[{name: a}]"


def test_sample_writes_a_dataset_with_provenance(make_cfg, tmp_path):
    path = run_sample(_cfg(make_cfg, tmp_path))
    ds = datasets.load_from_disk(str(path))
    assert set(ds.column_names) == set(sample_mod.COLUMNS)
    # 12 questions x 2 teachers x 2 temperatures x 2 samples
    assert len(ds) == 12 * 2 * 2 * 2
    assert set(ds["teacher"]) == {"a", "b"} and set(ds["temperature"]) == {0.0, 1.0}
    assert set(ds["sample_index"]) == {0, 1} and len(set(ds["uid"])) == 12
    # Greedy samples of one question agree; the two teachers are different models (different keys).
    rows = ds.to_list()
    greedy = {}
    for r in rows:
        if r["temperature"] == 0:
            greedy.setdefault((r["teacher"], r["uid"]), set()).add(r["completion"])
    assert all(len(v) == 1 for v in greedy.values())
    assert len(list((Path(tmp_path) / "run").parent.glob("cache/teachers/[!.]*"))) == 2


def test_killed_sample_run_resumes_to_the_same_dataset(make_cfg, tmp_path, monkeypatch):
    reference = datasets.load_from_disk(str(run_sample(_cfg(make_cfg, tmp_path / "ref", ONE_TEACHER)))).to_list()

    real = sample_mod.sample_chunk
    calls = {"n": 0}

    def dies_on_the_fourth_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt  # as if killed mid-run
        return real(*args, **kwargs)

    monkeypatch.setattr(sample_mod, "sample_chunk", dies_on_the_fourth_chunk)
    cfg = _cfg(make_cfg, tmp_path / "killed", ONE_TEACHER)
    with pytest.raises(KeyboardInterrupt):
        run_sample(cfg)
    out = tmp_path / "killed" / "samples"
    assert len(list((out / "chunks").iterdir())) == 3 and not (out / "dataset").exists()
    assert not list(out.glob("chunks/.*"))  # no half-written chunk left where a reader could see it

    monkeypatch.setattr(sample_mod, "sample_chunk", real)
    resumed = datasets.load_from_disk(str(run_sample(cfg))).to_list()
    assert resumed == reference


def test_sample_config_errors(make_cfg, tmp_path):
    with pytest.raises(ValueError, match="names must be unique"):
        run_sample(_cfg(make_cfg, tmp_path, "sample.teachers=[{name: a},{name: a}]"))


def test_the_vllm_backend_is_refused_before_any_work_without_vllm(make_cfg, tmp_path):
    import importlib.util

    from rtd_lab.tasks.preflight import check_config

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed: the backend itself is tested below")
    with pytest.raises(ValueError, match="sample.backend=vllm needs the vllm package"):
        check_config(_cfg(make_cfg, tmp_path, "sample.backend=vllm"))
    with pytest.raises(ValueError, match="sample.backend must be one of"):
        check_config(_cfg(make_cfg, tmp_path, "sample.backend=sglang"))


def test_the_vllm_backend_writes_the_same_dataset_shape(make_cfg, tmp_path):
    pytest.importorskip("vllm", reason="sample.backend=vllm needs vllm (pip install .[vllm], a GPU)")
    path = run_sample(_cfg(make_cfg, tmp_path, ONE_TEACHER, "sample.backend=vllm"))
    ds = datasets.load_from_disk(str(path))
    assert set(ds.column_names) == set(sample_mod.COLUMNS)
    assert len(ds) == 12 * 1 * 2 * 2 and set(ds["sample_index"]) == {0, 1}
