"""The summary of ``benchmarks/gpu_check.sh``: tokens/s and model-FLOPs utilisation of each run,
and whether its exported student, loaded with plain transformers, generates what the run recorded.

    python benchmarks/gpu_check_summary.py OUT_DIR PEAK_TFLOPS RUN [RUN ...]   # writes OUT_DIR/summary.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def n_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def summarise(run_dir: Path, peak_flops: float) -> dict:
    r = json.loads((run_dir / "results.json").read_text())
    student = AutoModelForCausalLM.from_pretrained(run_dir / "student")
    n_student = n_parameters(student)
    n_teacher = n_parameters(AutoModelForCausalLM.from_pretrained(r["teacher"]["source"]))
    tps = r["student"]["tokens_per_second"]
    # Model FLOPs per token: 6 N for the student (forward + backward), 2 N for the frozen teacher's forward.
    flops = (6 * n_student + 2 * n_teacher) * tps if tps else None
    tok = AutoTokenizer.from_pretrained(run_dir / "student")
    first = json.loads((run_dir / "predictions_student.jsonl").read_text().splitlines()[0])
    ids = tok(first["prompt"], return_tensors="pt").input_ids
    out = student.generate(ids, attention_mask=torch.ones_like(ids))
    text = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    return {
        "chain_acc": r["student"]["metrics"]["chain_acc"],
        "steps": r["student"]["steps"],
        "student_fit_seconds": r["timings_seconds"]["student_fit"],
        "tokens_per_second": tps,
        "student_parameters": n_student,
        "teacher_parameters": n_teacher,
        "mfu": flops / peak_flops if flops else None,
        "export_generates_as_in_run": text == first["completion"],
    }


def main() -> None:
    out, peak = Path(sys.argv[1]), float(sys.argv[2]) * 1e12
    summary = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    summary |= {run: summarise(out / run, peak) for run in sys.argv[3:]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
