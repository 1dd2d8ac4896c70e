"""The config, read once: typed settings for the library (which never sees a DictConfig)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from rtd_lab.models.provision import BuildContext, StudentBaseSettings, StudentSettings, TeacherSettings


def container(node: Any) -> Any:
    """A config node as plain Python (resolved), anything else as it is."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def method_name(cfg: DictConfig) -> str:
    """The method's name: Hydra's choice of the ``method`` group, else (a config built by hand) the
    name of the module its ``_target_`` lives in, which is the method's name by convention."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("method")
        if choice:
            return choice
    return cfg.method._target_.rsplit(".", 2)[-2]


def cache_dir(cfg: DictConfig) -> Path:
    return Path(hydra.utils.to_absolute_path(cfg.paths.cache_dir))


def build_context(cfg: DictConfig) -> BuildContext:
    return BuildContext(
        benchmark=container(cfg.data.benchmark),
        cache_dir=cache_dir(cfg),
        accelerator=cfg.trainer.accelerator,
        precision=cfg.trainer.precision,
        eval_batch_size=cfg.data.eval_batch_size,
        progress=cfg.trainer.get("enable_progress_bar", True),
    )


def teacher_settings(teacher: DictConfig) -> TeacherSettings:
    """The ``teacher:`` block (or a copy with a sampling spec's overrides)."""
    return TeacherSettings(**container(teacher))


def student_settings(student: DictConfig) -> StudentSettings:
    fields = container(student)
    base = fields.pop("base", None)
    return StudentSettings(**fields, base=StudentBaseSettings(**base) if base else None)
