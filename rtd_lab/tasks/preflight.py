"""Checks of the whole config before any data, model or cache is built.

A wrong value must fail in the first second, naming its field, not after a teacher has trained for
minutes (or, worse, train to the end: ``method.temperature=nan`` once trained 2,000 steps of NaN
losses). ``check_config`` runs first in every task and checks

1. every number is finite (NaN and infinities are never a meaningful setting here);
2. every node with a ``_target_`` against the signature it will be called with: unknown fields, and
   values whose type the signature's annotation rules out (``method.temperature=abc``);
3. every block the library reads as typed settings (``teacher``, ``student``, ``teacher_cache``,
   ``diagnostics``, ``segment``, ``sample``) against its dataclass: missing and unknown fields, types,
   and the dataclass's own checks;
4. the settings that would otherwise fail late or silently: the learning-rate schedule's ratios, the
   trainer's step counts and intervals, a missing ``teacher.pretrained`` folder.

Range checks that need a built object (e.g. a student layer index) stay in the object.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from rtd_lab.diagnostics import DiagnosticsSettings
from rtd_lab.models.provision import StudentBaseSettings, StudentSettings, TeacherSettings
from rtd_lab.optim import check_plateau_settings
from rtd_lab.teacher_cache import TeacherCacheSettings
from rtd_lab.traces.sample import SampleSettings
from rtd_lab.traces.segment import SegmenterSettings
from rtd_lab.traces.self_distill import SelfDistillSettings

# Keys of a _target_ node that the framework consumes before instantiating it.
CONSUMED = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
# The config blocks the library reads as typed settings (rtd_lab.tasks.settings builds them).
TYPED_BLOCKS = {
    "teacher": TeacherSettings,
    "student": StudentSettings,
    "student.base": StudentBaseSettings,
    "teacher_cache": TeacherCacheSettings,
    "diagnostics": DiagnosticsSettings,
    "segment": SegmenterSettings,
    "sample": SampleSettings,
    "self_distill": SelfDistillSettings,
}


def check_config(cfg: DictConfig) -> None:
    """Raise ValueError naming the first bad field of ``cfg`` (resolved, without Hydra's own node)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra", None)
    check_finite(config)
    for path, node in target_nodes(config):
        check_target(path, node)
    for path, cls in TYPED_BLOCKS.items():
        node = _select(config, path)
        if node is not None:
            check_settings(path, node, cls)
    check_known(cfg)
    check_data_requirements(config)
    for key in SWITCHES:
        if key in config and not isinstance(config[key], bool):
            raise ValueError(f"{key} must be true or false, got {config[key]!r}")


SWITCHES = ("parallel_builds", "retain_freed_memory")  # top-level on/off settings of conf/config.yaml


def check_data_requirements(config: dict) -> None:
    """The ``data:`` settings the method declares it needs (``ReasoningModule.data_requirements``)."""
    method, data = config.get("method"), config.get("data")
    if config.get("task", "train") not in ("train", "cache") or not isinstance(method, Mapping) or not data:
        return
    target = get_object(method["_target_"]) if "_target_" in method else None
    for key, value in getattr(target, "data_requirements", {}).items():
        if data.get(key) != value:
            shown = str(value).lower() if isinstance(value, bool) else value
            raise ValueError(f"{method['_target_']} trains only with data.{key}={shown} (got {data.get(key)!r})")
    benchmark = data.get("benchmark") if isinstance(data.get("benchmark"), Mapping) else {}
    if getattr(target, "single_path_only", False) and benchmark.get("paths", "chain") != "chain":
        raise ValueError(
            f"data.benchmark.paths={benchmark['paths']}: {method['_target_']} labels a sampled step right by its "
            "value at the gold step's index, which holds only with one valid path per question (paths=chain)"
        )


def check_settings(path: str, node: Any, cls: type) -> None:
    """``node`` against the dataclass ``cls`` the library will read it as."""
    if not isinstance(node, Mapping):
        raise ValueError(f"{path} must be a mapping of settings, got {node!r}")
    hints = typing.get_type_hints(cls)
    required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
    nested = {k.split(".", 1)[1] for k in TYPED_BLOCKS if k.startswith(path + ".")}
    own = {k: v for k, v in node.items() if k not in nested}  # a nested block is checked as its own
    check_fields(path, own, {k: v for k, v in hints.items() if k not in nested}, set(hints), False, path)
    missing = required - set(node)
    if missing:
        raise ValueError(f"{path}: missing setting(s) {sorted(missing)}")
    try:
        # The dataclass's own checks (e.g. teacher_cache.mode's choices); a nested block is checked as
        # its own (student.base), and left at its default here.
        cls(**own)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}" if not str(err).startswith(path) else str(err)) from err


def check_fields(path: str, node: Mapping, hints: dict, names: set[str], open_: bool, owner: str) -> None:
    """Unknown fields (unless ``open_``) and values whose type ``hints`` rule out, named by field."""
    for key, value in node.items():
        field = f"{path}.{key}" if path else key
        if key not in names:
            if not open_:
                raise ValueError(f"{field} is not a setting of {owner} (its settings: {sorted(names)})")
            continue
        if key in hints and _matches(value, hints[key]) is False:
            raise ValueError(f"{field} must be {_describe(hints[key])}, got {value!r} ({type(value).__name__})")


def _select(config: dict, path: str) -> Any:
    """``config``'s node at the dotted ``path``, or None."""
    for key in path.split("."):
        if not isinstance(config, Mapping) or key not in config:
            return None
        config = config[key]
    return config


def check_finite(node: Any, path: str = "") -> None:
    if isinstance(node, float) and not math.isfinite(node):
        raise ValueError(f"{path} must be a finite number, got {node}")
    if isinstance(node, Mapping):
        for k, v in node.items():
            check_finite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            check_finite(v, f"{path}[{i}]")


def target_nodes(node: Any, path: str = "") -> typing.Iterator[tuple[str, dict]]:
    if isinstance(node, Mapping):
        if "_target_" in node:
            yield path, node
        for k, v in node.items():
            yield from target_nodes(v, f"{path}.{k}" if path else str(k))


def _signature(target: Any) -> tuple[dict[str, Any], set[str], bool]:
    """(annotations, parameter names, open): ``open`` when unknown keywords cannot be ruled out."""
    settings = getattr(target, "SETTINGS", None)  # a class configured by a dataclass: check its fields
    if settings is not None:
        return typing.get_type_hints(settings), {f.name for f in dataclasses.fields(settings)}, False
    if inspect.isclass(target) and target.__module__.startswith("rtd_lab."):
        # Ours pass **kwargs on to the parent class: the settings are the union along the MRO. (Others'
        # **kwargs may go anywhere, e.g. DDPStrategy's to DistributedDataParallel: left open.)
        hints, names = {}, set()
        for cls in inspect.getmro(target):
            if "__init__" not in vars(cls):
                continue
            h, n, more = _function_signature(vars(cls)["__init__"])
            hints, names = {**h, **hints}, names | n
            if not more:
                return hints, names, False
        return hints, names, True
    return _function_signature(target.__init__ if inspect.isclass(target) else target)


def _function_signature(fn: Any) -> tuple[dict[str, Any], set[str], bool]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}, set(), True
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # a third-party annotation that only resolves under TYPE_CHECKING: check names only
        hints = {}
    names = {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    open_ = any(p.kind == p.VAR_KEYWORD for p in params.values())
    return hints, names, open_


def check_target(path: str, node: dict) -> None:
    try:
        target = get_object(node["_target_"])
    except Exception as err:
        raise ValueError(f"{path}._target_: cannot import {node['_target_']!r} ({err})") from err
    hints, names, open_ = _signature(target)
    check_fields(path, {k: v for k, v in node.items() if k not in CONSUMED}, hints, names, open_, node["_target_"])
    checks = getattr(target, "check_settings", None)
    if inspect.isclass(target) and target.__module__.startswith("rtd_lab.") and checks is not None:
        # Range checks a class can make without its models (a method's weights, the curriculum's ratios).
        checks({k: v for k, v in node.items() if k not in CONSUMED})


def _matches(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` fits ``hint``; None when the annotation is beyond this check."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        verdicts = [_matches(value, a) for a in args]
        return True if True in verdicts else (None if None in verdicts else False)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    container = origin or hint
    if container in (list, tuple, Sequence) or (inspect.isclass(container) and container is typing.Sequence):
        return isinstance(value, list | tuple)
    if container in (dict, Mapping):
        return isinstance(value, Mapping)
    return None


def _describe(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is typing.Literal:
        return f"one of {list(typing.get_args(hint))}"
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _int_at_least(value: Any, low: int, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{field} must be an integer >= {low}, got {value!r}")


def check_known(cfg: DictConfig) -> None:
    """The settings named by the fault probes: each failed late, silently or without its field."""
    task = cfg.get("task", "train")
    scheduler = OmegaConf.select(cfg, "optim.scheduler") or {}
    for name, low, high, closed in (
        ("warmup_ratio", 0, 1, False),
        ("decay_ratio", 0, 1, True),
        ("min_lr_ratio", 0, 1, True),
    ):
        if name in scheduler:
            v = scheduler[name]
            if (
                not isinstance(v, int | float)
                or isinstance(v, bool)
                or not (low <= v <= high if closed else low <= v < high)
            ):
                raise ValueError(f"optim.scheduler.{name} must be in [{low}, {high}{']' if closed else ')'}, got {v!r}")
    trainer = cfg.get("trainer") or {}
    if task == "train" and "max_steps" in trainer:
        # Training is counted in steps; Lightning reads -1 as "no limit" (1,000 epochs by default).
        _int_at_least(trainer.max_steps, 1, "trainer.max_steps")
    if task == "train" and str(scheduler.get("_target_", "")).endswith(".warmup_stable_decay_on_plateau"):
        check_plateau_schedule(cfg, scheduler)
    interval = trainer.get("val_check_interval")
    if interval is not None:
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            raise ValueError(
                f"trainer.val_check_interval must be > 0 (steps, or a fraction of an epoch), got {interval!r}"
            )
        if isinstance(interval, float) and interval > 1:
            raise ValueError(f"trainer.val_check_interval as a fraction of an epoch must be <= 1, got {interval}")
    for who in ("teacher", "student"):
        check_pretrained(OmegaConf.select(cfg, f"{who}.pretrained"), f"{who}.pretrained")


def check_plateau_schedule(cfg: DictConfig, scheduler: Mapping) -> None:
    """The decay-on-plateau schedule's own settings check, and that it has a validation curve to read."""
    max_steps = OmegaConf.select(cfg, "trainer.max_steps")
    check_plateau_settings(scheduler, max_steps if isinstance(max_steps, int) else None)
    if not OmegaConf.select(cfg, "callbacks.learning_curve"):
        raise ValueError(
            "optim.scheduler: warmup_stable_decay_on_plateau decays when the validation curve of "
            "callbacks.learning_curve stalls, and callbacks.learning_curve is not set (callbacks=default, "
            "or a fixed schedule: optim=adamw_wsd)"
        )


def check_pretrained(value: Any, field: str) -> None:
    """A hub id is ``name`` or ``org/name``; anything else that looks like a path must exist."""
    if value is None:
        return
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} must be a hub id or a local folder, got {value!r}")
    looks_local = value.startswith(("/", "./", "../", "~")) or value.count("/") > 1 or "\\" in value
    path = Path(value).expanduser()
    if looks_local and not path.is_dir():
        raise ValueError(f"{field}={value}: no such directory")
