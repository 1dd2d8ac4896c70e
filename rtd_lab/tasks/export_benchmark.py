"""``task=export_benchmark``: the run's benchmark as an lm-evaluation-harness task.

Writes ``<out>/test.jsonl`` (one row per test question: its prompt and ``#### answer`` target) and
``<out>/rtd_lab_<name>.yaml``, a ``generate_until`` task scored as lm-eval scores GSM8K's
strict-match column (``rtd_lab.traces.answers``, ``answer_mode: strict``), greedy, zero-shot:

    lm-eval --model hf --model_args pretrained=<run dir>/student,add_bos_token=True \\
        --tasks rtd_lab_<name> --include_path <out>

``add_bos_token=True``: rtd_lab trains and evaluates with the tokenizer's BOS first, which lm-eval's
HF model leaves out by default.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import yaml
from omegaconf import DictConfig

from rtd_lab.traces.answers import LM_EVAL_FILTERS, LM_EVAL_IGNORE
from rtd_lab.utils import atomic_write_jsonl, atomic_write_text

log = logging.getLogger(__name__)


def lm_eval_task(name: str, data_file: Path, stop: list[str], max_gen_toks: int) -> dict:
    pattern, _ = LM_EVAL_FILTERS["strict"]
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{target}}",
        "num_fewshot": 0,
        "generation_kwargs": {"until": stop, "do_sample": False, "max_gen_toks": max_gen_toks},
        "filter_list": [
            {
                "name": "strict-match",
                "filter": [{"function": "regex", "regex_pattern": pattern.pattern}, {"function": "take_first"}],
            }
        ],
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "ignore_case": True,
                "ignore_punctuation": False,
                "regexes_to_ignore": list(LM_EVAL_IGNORE),
            }
        ],
        "metadata": {"version": 1.0},
    }


def run_export_benchmark(cfg: DictConfig) -> dict:
    benchmark = hydra.utils.instantiate(cfg.data.benchmark)
    out = Path(cfg.export.get("benchmark_dir") or Path(cfg.paths.output_dir) / "lm_eval_task").resolve()
    fmt = benchmark.format
    rows = []
    for ex in benchmark.splits()["test"]:
        prompt, _, _ = fmt.render(ex, False)
        rows.append({"uid": ex.uid, "depth": ex.depth, "prompt": prompt, "target": f"#### {ex.answer}"})
    name = f"rtd_lab_{getattr(benchmark, 'name', type(benchmark).__name__.lower())}"
    data_file = out / "test.jsonl"
    atomic_write_jsonl(data_file, rows)
    # lm-eval stops at the model's EOS by itself; a blank line ends a GSM8K-style answer otherwise.
    task = lm_eval_task(name, data_file, ["\n\n"], benchmark.max_completion_tokens())
    atomic_write_text(out / f"{name}.yaml", yaml.safe_dump(task, sort_keys=False))
    log.info("lm-eval task %s written to %s (%d test questions)", name, out, len(rows))
    return {"task": name, "dir": str(out), "questions": len(rows)}
