"""End to end: compose the real config, shrink it, run ``train``; the CLI and its errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, InstantiationException, MissingConfigException
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import rtd_lab.models.provision as provision
from rtd_lab.data.synthetic import SyntheticBenchmark
from rtd_lab.data.tokenizer import build_synthetic_tokenizer
from rtd_lab.methods.base import ReasoningModule
from rtd_lab.tasks.settings import build_context, teacher_settings
from rtd_lab.tasks.train import train
from tests.cli import logged, run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_rtd_run_writes_results_and_prints_depth_table(make_cfg, capsys):
    cfg = make_cfg()
    results = train(cfg)
    out = Path(cfg.paths.output_dir)
    saved = json.loads((out / "results.json").read_text())
    assert saved["method"] == "rtd" and saved["depths"] == [1, 2, 3]
    for who in ("teacher", "student"):
        metrics = saved[who]["metrics"]
        for d in (1, 2, 3):
            assert 0.0 <= metrics[f"chain_acc/depth_{d}"] <= 1.0
        assert {"chain_acc", "step_acc", "answer_acc"} <= set(metrics)
    assert results["student"]["metrics"] == saved["student"]["metrics"]
    assert len((out / "predictions_student.jsonl").read_text().splitlines()) == 12
    assert (out / "checkpoints" / "last.ckpt").exists()
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert not any(k.startswith("teacher.") for k in ckpt["state_dict"])  # teacher lives in its cache
    assert any(k.startswith("f.") for k in ckpt["state_dict"])  # RTD's projections are saved
    printed = capsys.readouterr().out
    assert "| depth | teacher | student (rtd) |" in printed and "| 3 |" in printed
    metrics_csv = (out / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss_align" in metrics_csv and "train/loss_coherence" in metrics_csv
    assert "train/loss_kd" in metrics_csv


def test_teacher_and_student_base_train_side_by_side_as_one_after_the_other(make_cfg, caplog, tmp_path):
    """A fresh cache (parallel_builds): the base trains in a second process while the teacher trains;
    both come out byte for byte as when they are trained one after the other."""
    from omegaconf import open_dict

    from rtd_lab.tasks.train import prepare

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the side process needs two threads to share
    built = {}
    try:
        for parallel in (True, False):
            cfg = make_cfg(f"parallel_builds={str(parallel).lower()}", "student.base.train.max_steps=6")
            with open_dict(cfg):
                cfg.paths.cache_dir = str(tmp_path / f"cache_{parallel}")
            caplog.clear()
            with caplog.at_level("INFO"):
                prepare(cfg)
            assert ("trained beside the teacher" in caplog.text) == parallel
            built[parallel] = {
                kind: json.loads(next((Path(cfg.paths.cache_dir) / kind).glob(f"[!.]*/{meta}")).read_text())["files"]
                for kind, meta in (("teachers", provision.TEACHER_META), ("student_bases", provision.STUDENT_BASE_META))
            }
    finally:
        torch.set_num_threads(threads)
    assert built[True] == built[False] and "model.safetensors" in built[True]["student_bases"]
    assert torch.get_num_threads() == threads


def test_teacher_is_trained_once_then_reused_from_cache(make_cfg, monkeypatch):
    cfg = make_cfg("+experiment=standard_kd")
    train(cfg)
    teachers = list((Path(cfg.paths.cache_dir) / "teachers").glob("[!.]*"))
    assert len(teachers) == 1 and (teachers[0] / "model.safetensors").exists()

    def no_training(*args, **kwargs):
        raise AssertionError("the cached teacher should have been reused")

    monkeypatch.setattr(provision, "train_teacher", no_training)
    results = train(make_cfg("+experiment=rtd"))
    assert results["teacher"]["key"] == teachers[0].name
    # A different teacher config is a different key: it would train again.
    other = make_cfg("teacher.train.max_steps=4")
    assert provision.teacher_key(teacher_settings(other.teacher), build_context(other)) != teachers[0].name


def _tiny_pretrained_llama(tok, path: Path, width: int = 16) -> Path:
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_pretrained_teacher_and_student_load_from_local_paths(make_cfg, tmp_path):
    tok = build_synthetic_tokenizer(13)
    teacher_dir = _tiny_pretrained_llama(tok, tmp_path / "teacher", width=24)
    student_dir = _tiny_pretrained_llama(tok, tmp_path / "student", width=8)
    cfg = make_cfg("teacher=pretrained", f"teacher.pretrained={teacher_dir}", f"student.pretrained={student_dir}")
    results = train(cfg)
    assert results["teacher"]["source"] == str(teacher_dir)
    assert not (Path(cfg.paths.cache_dir) / "teachers").exists()  # nothing trained


def test_bpe_tokenizer_gpt2_teacher_boundaries_and_run(make_cfg, tmp_path):
    """Any fast tokenizer works: a byte-level BPE and a GPT-2 teacher, as a hub model would bring."""
    bm = SyntheticBenchmark(modulus=13, max_depth=3, n_train_per_depth=40, n_val_per_depth=4, n_test_per_depth=4)
    texts = [ex.question + bm.format.render(ex)[1] for ex in bm.splits()["train"]]
    raw = Tokenizer(models.BPE(unk_token=None))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=2, n_head=2, n_positions=256)).save_pretrained(
        tmp_path / "gpt2"
    )
    tok.save_pretrained(tmp_path / "gpt2")

    from rtd_lab.data.batch import encode_example

    for ex in bm.splits()["test"]:
        enc = encode_example(ex, tok, bm.format)
        for pos, step in zip(enc.boundary_pos, ex.steps, strict=True):
            assert tok.decode(enc.input_ids[pos]).strip().endswith(str(step.value)[-1])
    cfg = make_cfg(
        "teacher=pretrained",
        f"teacher.pretrained={tmp_path / 'gpt2'}",
        "student.arch=gpt2",
        "~student.model",
        "+student.model={n_embd: 8, n_layer: 2, n_head: 2, n_positions: 256}",
    )
    results = train(cfg)
    assert set(results["student"]["metrics"]) >= {"chain_acc/depth_1", "chain_acc/depth_3"}


def test_student_with_another_tokenizer_is_refused_before_training(make_cfg, tmp_path):
    student_dir = _tiny_pretrained_llama(build_synthetic_tokenizer(17), tmp_path / "student")
    cfg = make_cfg(f"student.pretrained={student_dir}")
    with pytest.raises(ValueError, match="student.pretrained.*different tokenizer"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


@pytest.mark.parametrize(
    "override,field",
    [
        ("method.w_align=-0.5", "method.w_align"),
        ("method.temperature=0", "method.temperature"),
        ("data.benchmark.min_depth=5", "data.max_depth"),
        ("data.benchmark.modulus=1", "data.modulus"),
        ("data.batch_size=0", "data.batch_size"),
    ],
)
def test_invalid_values_fail_with_the_field_name(make_cfg, override, field):
    with pytest.raises((ValueError, InstantiationException), match=field.replace(".", r"\.")):
        train(make_cfg(override))


def test_unknown_experiment_lists_the_known_ones(make_cfg):
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as err:
        make_cfg("+experiment=nope")
    assert "experiment/nope" in str(err.value) and "standard_kd" in str(err.value)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, tiny=False, timeout=600)


def test_cli_multirun_over_experiments(tmp_path):
    """`python -m rtd_lab -m +experiment=rtd,standard_kd`: two runs, one teacher, W&B offline."""
    proc = _cli("-m", "+experiment=rtd,standard_kd", "+debug=fast", "logger=wandb", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted(tmp_path.glob("multirun/*/*/*/results.json"))
    assert [json.loads(p.read_text())["method"] for p in results] == ["rtd", "standard_kd"]
    assert len(list((tmp_path / "cache" / "teachers").glob("[!.]*"))) == 1
    # One offline W&B run per job (syncable later with `wandb sync`), not one run shared by both.
    assert len(list(tmp_path.glob("multirun/*/*/*/wandb/offline-run-*"))) == 2
    assert proc.stdout.count("| depth | teacher |") == 2


def test_cli_unknown_experiment_is_a_clear_error(tmp_path):
    proc = _cli("+experiment=does_not_exist", cwd=tmp_path)
    assert proc.returncode != 0
    assert "Could not find 'experiment/does_not_exist'" in proc.stderr
    assert "Available options" in proc.stderr


@pytest.mark.slow
def test_default_calibration_teacher_solves_every_depth(make_cfg):
    """The embedded default as shipped (experiments/calibration): the teacher reaches >= 0.99 chain
    accuracy at every depth, and the student alone (cot_ft, from its base, to convergence) falls off
    with depth inside the band the calibration asks for. Minutes on 2 cores: `make test-slow`.
    """
    cfg = make_cfg("+experiment=cot_ft", "logger=csv", tiny=False)
    results = train(cfg)
    teacher = results["teacher"]["metrics"]
    assert all(teacher[f"chain_acc/depth_{d}"] >= 0.99 for d in results["depths"]), teacher
    student = results["student"]["metrics"]
    first, last = results["depths"][0], results["depths"][-1]
    assert student[f"chain_acc/depth_{first}"] >= 0.80, student
    assert student[f"chain_acc/depth_{first}"] - student[f"chain_acc/depth_{last}"] >= 0.25, student
    assert student["chain_acc"] <= 0.90, student
    assert results["student"]["learning_curve"]["converged"]


def test_teacher_key_changes_with_what_shapes_the_teacher(make_cfg, monkeypatch):
    def key(*overrides):
        cfg = make_cfg(*overrides)
        return provision.teacher_key(teacher_settings(cfg.teacher), build_context(cfg))

    base = key()
    assert key() == base  # stable
    assert key("data.benchmark.modulus=13") != base
    assert key("teacher.model.hidden_size=24") != base
    assert key("student.model.hidden_size=12") == base  # not the student's
    monkeypatch.setattr(provision, "TEACHER_CACHE_VERSION", provision.TEACHER_CACHE_VERSION + 1)
    assert key() != base


@pytest.mark.parametrize("divergence", ["reverse_kl", "jsd"])
def test_kd_divergence_is_chosen_by_config(make_cfg, divergence):
    cfg = make_cfg("+experiment=standard_kd", f"method.divergence={divergence}", "method.beta=0.3")
    results = train(cfg)
    assert results["config"]["method"]["divergence"] == divergence
    header = (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss_div" in header


def test_fitnets_experiment_trains_and_logs_its_hint(make_cfg):
    cfg = make_cfg("+experiment=fitnets")
    results = train(cfg)
    assert results["method"] == "fitnets"
    header = (Path(cfg.paths.output_dir) / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss_hint" in header and "train/loss_kd" in header


def test_training_values_are_logged_only_on_the_steps_lightning_writes(make_cfg, monkeypatch):
    """model_step skips self.log between log_every_n_steps; the loggers get the very same numbers."""
    calls: list[str] = []
    log = ReasoningModule.log
    monkeypatch.setattr(ReasoningModule, "log", lambda self, key, *a, **k: calls.append(key) or log(self, key, *a, **k))
    every = make_cfg("+experiment=standard_kd", "trainer.max_steps=7", "diagnostics.enabled=false")
    train(every)
    assert calls.count("train/loss") == 7
    sparse = make_cfg(
        "+experiment=standard_kd", "trainer.max_steps=7", "diagnostics.enabled=false", "trainer.log_every_n_steps=3"
    )
    calls.clear()
    train(sparse)
    assert calls.count("train/loss") == 2  # the calls themselves are skipped, not just their output
    all_steps = logged(Path(every.paths.output_dir), "train/loss")
    written = logged(Path(sparse.paths.output_dir), "train/loss")
    assert sorted(all_steps) == list(range(7)) and sorted(written) == [2, 5]
    assert written == {s: all_steps[s] for s in (2, 5)}
    for key in ("train/loss_kd", "train/loss_ce"):
        assert sorted(logged(Path(sparse.paths.output_dir), key)) == [2, 5]
    assert logged(Path(sparse.paths.output_dir), "val/loss")  # validation still logs every batch
