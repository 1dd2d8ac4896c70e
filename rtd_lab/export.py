"""The distilled student as a Hugging Face model folder that any tool can load.

``export_model`` writes ``save_pretrained`` weights (safetensors), the tokenizer, the generation
settings rtd_lab evaluates with, and a model card (``model_card``): lm-evaluation-harness, vLLM and
TRL read the folder with ``AutoModelForCausalLM.from_pretrained``. The folder appears whole or not
at all (written beside it, then renamed), with the user's umask.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def model_card(
    *,
    title: str,
    method: str,
    teacher: str,
    data: str,
    depth_table: str,
    command: str,
    example_prompt: str,
    extra: dict | None = None,
) -> str:
    """The folder's README.md: what the model is, how it was made and measured, how to load it."""
    rows = {"method": method, "teacher": teacher, "data": data, **(extra or {})}
    facts = "\n".join(f"| {k} | {v} |" for k, v in rows.items())
    return f"""---
library_name: transformers
tags: [rtd_lab, distillation, reasoning]
---
# {title}

A student model distilled with rtd_lab (Reasoning Trace Distillation and its baselines) from a
teacher's step-by-step reasoning.

| | |
|---|---|
{facts}

## Chain accuracy by depth (test split, greedy)

{depth_table}

## Reproduce

```bash
{command}
```

## Load

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("<this folder>")
tokenizer = AutoTokenizer.from_pretrained("<this folder>")
ids = tokenizer({example_prompt!r}, return_tensors="pt").input_ids
print(tokenizer.decode(model.generate(ids)[0]))  # greedy, as rtd_lab evaluates (generation_config.json)
```
"""


def export_model(model, tokenizer, out: Path, card: str, generation_config=None) -> Path:
    """``model`` (a transformers PreTrainedModel) + ``tokenizer`` + ``card`` as the folder ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if generation_config is not None:
        model.generation_config = generation_config
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "README.md").write_text(card)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out
