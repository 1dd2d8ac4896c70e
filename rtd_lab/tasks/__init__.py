"""The top layer: one module per ``task=``, the only code that reads the Hydra config.

Each task turns the config into typed settings (``rtd_lab.tasks.settings``) and calls the library
below it, which never sees a DictConfig. ``TASKS`` maps a task name to ``module:function``; the
module is imported only when its task runs (heavy imports after Hydra has parsed the command line).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

TASKS = {
    "train": "rtd_lab.tasks.train:train",
    "teacher": "rtd_lab.tasks.teacher:run_teacher",
    "sample": "rtd_lab.tasks.sample:run_sample",
    "filter": "rtd_lab.tasks.filter:run_filter",
    "segment": "rtd_lab.tasks.segment:run_segment",
    "cache": "rtd_lab.tasks.cache:run_cache",
    "report": "rtd_lab.tasks.report:run_report",
    "export": "rtd_lab.tasks.export:run_export",
    "export_benchmark": "rtd_lab.tasks.export_benchmark:run_export_benchmark",
    "self_distill": "rtd_lab.tasks.self_distill:run_self_distill",
}


def task_function(name: str) -> Callable:
    if name not in TASKS:
        raise ValueError(f"task={name!r} is not one of {list(TASKS)}")
    module, function = TASKS[name].split(":")
    return getattr(importlib.import_module(module), function)
