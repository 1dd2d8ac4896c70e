"""``task=export``: a run's student as a Hugging Face model folder (``rtd_lab.export``).

The train task calls ``export_student`` after evaluation; ``task=export ckpt_path=<checkpoint>``
does the same for any checkpoint of a run (the run's own config and results are read from its
directory when it has them, else the command line's config describes the run).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from rtd_lab.evaluation import Evaluator
from rtd_lab.export import export_model, model_card
from rtd_lab.methods.base import student_state
from rtd_lab.models.build import merged_copy
from rtd_lab.results import depth_table

log = logging.getLogger(__name__)


def command_line() -> str:
    """The command that made this run: ``python -m rtd_lab`` and Hydra's overrides."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        overrides = list(HydraConfig.get().overrides.task)
        return " ".join(["python -m rtd_lab", *overrides])
    return " ".join(["python -m rtd_lab", *sys.argv[1:]])


def student_card(cfg: DictConfig, method: str, metrics: dict, depths: list[int], command: str, evaluator) -> str:
    teacher = cfg.teacher.get("pretrained") or f"trained from scratch by rtd_lab ({cfg.teacher.get('arch', 'scratch')})"
    bench = OmegaConf.to_container(cfg.data.benchmark, resolve=True)
    data = f"{bench.pop('_target_').rsplit('.', 1)[-1]} ({', '.join(f'{k}={v}' for k, v in bench.items())})"
    example = evaluator.benchmark.splits()["test"][0]
    return model_card(
        title=f"{cfg.get('run_name', method)} (seed {cfg.seed}): an rtd_lab student",
        method=method,
        teacher=str(teacher),
        data=data,
        depth_table=depth_table(depths, {"student": metrics}),
        command=command,
        example_prompt=evaluator.benchmark.format.render(example, False)[0],
        extra={
            "seed": cfg.seed,
            "training examples": cfg.data.get("max_train_examples") or "all",
            "chain accuracy (all depths)": f"{metrics.get('chain_acc', float('nan')):.3f}",
        },
    )


def export_student(
    cfg: DictConfig,
    student,
    tokenizer,
    evaluator: Evaluator,
    out: Path,
    method: str,
    metrics: dict,
    command: str,
    settings: DictConfig,
) -> Path:
    """The student, its tokenizer, rtd_lab's greedy generation settings and a model card at ``out``
    (``cfg``: the run's config, for the card); uploaded too when ``settings.push_to_hub`` (``export:``)."""
    student = merged_copy(student)  # LoRA (student.lora): the adapters merged in
    card = student_card(cfg, method, metrics, list(evaluator.benchmark.depths), command, evaluator)
    path = export_model(student, tokenizer, out, card, generation_config=evaluator.generation_config)
    log.info("student exported to %s (AutoModelForCausalLM.from_pretrained loads it)", path)
    if settings.push_to_hub:
        push_to_hub(path, settings.hub_repo_id, bool(settings.hub_private))
    return path


def push_to_hub(folder: Path, repo_id: str | None, private: bool) -> str:
    if not repo_id:
        raise ValueError("export.push_to_hub=true needs export.hub_repo_id (<user or org>/<name>)")
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="rtd_lab export")
    log.info("student uploaded to the Hub: %s", repo_id)
    return repo_id


def run_export(cfg: DictConfig) -> dict:
    """``task=export ckpt_path=<run dir>/checkpoints/last.ckpt [export.out_dir=...]``."""
    from transformers import AutoTokenizer

    from rtd_lab.models.provision import prepare_student
    from rtd_lab.tasks.settings import build_context, student_settings

    if not cfg.get("ckpt_path"):
        raise ValueError("task=export needs ckpt_path=<a run's checkpoints/last.ckpt>")
    ckpt = Path(hydra.utils.to_absolute_path(cfg.ckpt_path))
    if not ckpt.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt}: no such checkpoint")
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    results_path = run_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    run_cfg = OmegaConf.create(results["config"]) if "config" in results else cfg
    benchmark = hydra.utils.instantiate(run_cfg.data.benchmark)
    tokenizer = (
        AutoTokenizer.from_pretrained(run_dir / "tokenizer")
        if (run_dir / "tokenizer").is_dir()
        else benchmark.build_tokenizer()
    )
    student = prepare_student(student_settings(run_cfg.student), build_context(run_cfg), tokenizer, None, run_cfg.seed)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    student.load_state_dict(student_state(state))
    out = cfg.export.get("out_dir") or run_dir / "student"
    method = results.get("method") or run_cfg.get("run_name") or "?"
    metrics = (results.get("student") or {}).get("metrics") or {}
    command = results.get("command") or command_line()
    evaluator = Evaluator(tokenizer, benchmark)
    path = export_student(run_cfg, student, tokenizer, evaluator, Path(out), method, metrics, command, cfg.export)
    return {"export": str(path), "checkpoint": str(ckpt)}
