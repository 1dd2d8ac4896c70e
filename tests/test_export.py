"""The student leaves rtd_lab: the exported folder, task=export, load_from_checkpoint, the Hub upload,
the predictions a reader needs, and the W&B run a resumed run continues."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rtd_lab.data.datamodule import ReasoningDataModule
from rtd_lab.evaluation import Evaluator
from rtd_lab.methods.rtd import RTD
from rtd_lab.models.teacher import Teacher
from rtd_lab.tasks.export import run_export
from rtd_lab.tasks.train import make_logger, train, wandb_run_id


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.conftest import compose_cfg

    tmp = tmp_path_factory.mktemp("export")
    cfg = compose_cfg(["trainer.max_steps=4"], tmp)  # a checkpoint every 2 steps: last.ckpt is the end
    results = train(cfg)
    return cfg, Path(cfg.paths.output_dir), results, tmp


def test_the_exported_student_loads_with_transformers_and_generates_as_in_rtd_lab(trained):
    cfg, run, results, _ = trained
    folder = run / "student"
    assert results["student"]["export"] == str(folder)
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    records = [json.loads(line) for line in (run / "predictions_student.jsonl").read_text().splitlines()]

    # Plain transformers, one prompt at a time, with the folder's own generation settings.
    for r in records[:4]:
        ids = tokenizer(r["prompt"], return_tensors="pt").input_ids
        out = model.generate(ids, attention_mask=torch.ones_like(ids))
        assert tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True) == r["completion"]

    # rtd_lab's own evaluation of the loaded model gives the run's metrics.
    import hydra

    benchmark = hydra.utils.instantiate(cfg.data.benchmark)
    test = ReasoningDataModule.gold(benchmark, tokenizer, 16, 16).test_dataloader()
    metrics, _ = Evaluator(tokenizer, benchmark).evaluate(model, test)
    assert metrics == pytest.approx(results["student"]["metrics"])

    card = (folder / "README.md").read_text()
    assert "library_name: transformers" in card and "| depth | student |" in card
    assert "python -m rtd_lab" in card and results["command"] in card


def test_predictions_carry_question_prompt_gold_steps_and_step_marks(trained):
    _, run, _, _ = trained
    r = json.loads((run / "predictions_student.jsonl").read_text().splitlines()[0])
    assert r["prompt"].startswith(r["question"]) and r["gold_steps"] and r["gold_answer"]
    assert len(r["step_correct"]) == r["steps_total"] == len(r["gold_steps"])
    assert sum(r["step_correct"]) == r["steps_correct"]


def test_task_export_rebuilds_the_student_from_any_checkpoint(trained, make_cfg):
    _, run, _, tmp = trained
    out = tmp / "exported"
    cfg = make_cfg("task=export", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"export.out_dir={out}")
    assert run_export(cfg)["export"] == str(out)
    # last.ckpt is the final step's checkpoint: the same weights as the run's own export.
    a, b = load_file(out / "model.safetensors"), load_file(run / "student" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert AutoModelForCausalLM.from_pretrained(out) is not None


def test_load_from_checkpoint_restores_the_method_and_its_settings(trained):
    cfg, run, _, _ = trained
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    hparams = ckpt["hyper_parameters"]
    assert hparams["w_align"] == cfg.method.w_align and hparams["temperature"] == cfg.method.temperature
    student = AutoModelForCausalLM.from_pretrained(run / "student")
    teacher_dir = next((Path(cfg.paths.cache_dir) / "teachers").glob("[!.]*"))
    teacher = Teacher(AutoModelForCausalLM.from_pretrained(teacher_dir))
    module = RTD.load_from_checkpoint(run / "checkpoints" / "last.ckpt", student=student, teacher=teacher)
    assert module.w_align == cfg.method.w_align
    assert torch.equal(module.f.weight, ckpt["state_dict"]["f.weight"])


def test_push_to_hub_uploads_the_exported_folder(trained, make_cfg, monkeypatch):
    import huggingface_hub

    _, run, _, tmp = trained
    calls = []
    monkeypatch.setattr(
        huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw))
    )
    monkeypatch.setattr(
        huggingface_hub.HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw["repo_id"], kw))
    )
    cfg = make_cfg(
        "task=export",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        f"export.out_dir={tmp / 'pushed'}",
        "export.push_to_hub=true",
        "export.hub_repo_id=someone/rtd-student",
    )
    run_export(cfg)
    assert [c[:2] for c in calls] == [("create", "someone/rtd-student"), ("upload", "someone/rtd-student")]
    assert calls[0][2]["private"] is True and calls[1][2]["folder_path"] == str(tmp / "pushed")
    with pytest.raises(ValueError, match="export.hub_repo_id"):
        run_export(make_cfg("task=export", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "export.push_to_hub=true"))


def test_a_resumed_run_continues_its_wandb_run(tmp_path, make_cfg, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the user has not chosen: logger.offline decides
    cfg = make_cfg("logger=wandb")
    out = tmp_path / "some_run"
    first, again = make_logger(cfg, out), make_logger(cfg, out)
    assert first._wandb_init["id"] == again._wandb_init["id"] == wandb_run_id(out)
    assert first._wandb_init["resume"] == "allow"
    assert wandb_run_id(tmp_path / "another_run") != wandb_run_id(out)
    assert first._wandb_init["mode"] == "offline"  # logger.offline=true, the default
    assert make_logger(make_cfg("logger=wandb", "logger.offline=false"), out)._wandb_init["mode"] == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the user's choice is W&B's to read
    assert "mode" not in make_logger(cfg, out)._wandb_init


def test_model_hparams_leave_models_out():
    from rtd_lab.data.tokenizer import build_synthetic_tokenizer
    from tests.test_methods import tiny_lm

    tok = build_synthetic_tokenizer(11)
    module = RTD(tiny_lm(tok, 16), Teacher(tiny_lm(tok, 24)), w_align=0.2)
    assert module.hparams["w_align"] == 0.2
    assert not {"student", "teacher", "optimizer", "scheduler", "evaluator"} & set(module.hparams)


def test_export_benchmark_writes_an_lm_eval_task_scored_like_rtd_lab(trained, make_cfg):
    import re

    import yaml

    from rtd_lab.tasks.export_benchmark import run_export_benchmark
    from rtd_lab.traces.answers import lm_eval_normalize

    _, run, results, tmp = trained
    out = tmp / "lm_eval"
    info = run_export_benchmark(make_cfg("task=export_benchmark", f"export.benchmark_dir={out}"))
    task = yaml.safe_load((out / f"{info['task']}.yaml").read_text())
    rows = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    records = [json.loads(line) for line in (run / "predictions_student.jsonl").read_text().splitlines()]
    assert task["dataset_kwargs"]["data_files"]["test"] == str(out / "test.jsonl")
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in records]  # the prompts rtd_lab generated from

    # The task's own filter and exact_match, applied to the student's completions, give rtd_lab's answer accuracy.
    (step,) = [f for f in task["filter_list"][0]["filter"] if f["function"] == "regex"]
    ignore = task["metric_list"][0]["regexes_to_ignore"]

    def lm_eval_normalised(text: str) -> str:
        for pattern in ignore:
            text = re.sub(pattern, "", text)
        return text.lower()

    def filtered(completion: str) -> str:
        found = re.findall(step["regex_pattern"], completion)
        return found[0].strip() if found else "[invalid]"

    hits = [
        lm_eval_normalised(filtered(r["completion"])) == lm_eval_normalised(row["target"])
        for r, row in zip(records, rows, strict=True)
    ]
    assert sum(hits) / len(hits) == pytest.approx(results["student"]["metrics"]["answer_acc"])
    # The gold completions score 1 under the task, and an off-by-one answer 0 (the student above may be weak).
    for r, row in zip(records, rows, strict=True):
        gold = " ".join(r["gold_steps"]) + f" #### {r['gold_answer']}"
        assert lm_eval_normalised(filtered(gold)) == lm_eval_normalised(row["target"])
        wrong = f"#### {int(r['gold_answer']) + 1}"
        assert lm_eval_normalised(filtered(wrong)) != lm_eval_normalised(row["target"])
    assert lm_eval_normalize(row["target"]) == r["gold_answer"]


def test_results_report_training_throughput(trained):
    _, _, results, _ = trained
    student = results["student"]
    # 4 steps of 16 examples: at least one token per example of every batch.
    assert student["train_tokens"] >= 4 * 16 and student["tokens_per_second"] > 0


def test_a_wandb_run_logs_sample_traces_and_the_student_artifact(make_cfg, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # logger.offline (true) decides, as for a user
    cfg = make_cfg("logger=wandb", "logger.log_model=true", "trainer.max_steps=4", "diagnostics.enabled=false")
    train(cfg)
    out = Path(cfg.paths.output_dir)
    (run,) = (out / "wandb").glob("offline-run-*")
    assert run.name.endswith(wandb_run_id(out))  # the id a resumed run reuses
    (table,) = run.glob("files/media/table/test/samples_*.table.json")
    rows = json.loads(table.read_text())
    assert rows["columns"][:4] == ["uid", "depth", "question", "gold"] and len(rows["data"]) == 12
    # The exported student is logged as a model artifact (offline: recorded in the run's log).
    assert f"student-{wandb_run_id(out)}".encode() in next(run.glob("*.wandb")).read_bytes()
