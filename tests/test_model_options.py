"""Real-model knobs: dtype (float32 master weights by default), attention kernel, revision,
gradient checkpointing, compile; each validated before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from rtd_lab.data.tokenizer import build_synthetic_tokenizer
from rtd_lab.models.provision import BuildContext, StudentSettings, prepare_student
from rtd_lab.tasks.preflight import check_config
from tests.test_methods import tiny_lm

TOK = build_synthetic_tokenizer(11)


def student(tmp_path, **options) -> nn.Module:
    s = StudentSettings(pretrained=options.pop("pretrained", None), arch="llama", model=TINY, **options)
    return prepare_student(s, BuildContext(benchmark={}, cache_dir=tmp_path), TOK, None, 0)


TINY = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}


@pytest.fixture
def bf16_checkpoint(tmp_path):
    path = tmp_path / "bf16"
    tiny_lm(TOK, 16).to(torch.bfloat16).save_pretrained(path)
    TOK.save_pretrained(path)
    return str(path)


def test_a_bf16_checkpoint_trains_in_float32_master_weights_unless_asked(tmp_path, bf16_checkpoint):
    assert {p.dtype for p in student(tmp_path, pretrained=bf16_checkpoint).parameters()} == {torch.float32}
    kept = student(tmp_path, pretrained=bf16_checkpoint, dtype="bfloat16")
    assert {p.dtype for p in kept.parameters()} == {torch.bfloat16}
    built = student(tmp_path, dtype="bfloat16")  # a model built from its config, in the asked dtype
    assert {p.dtype for p in built.parameters()} == {torch.bfloat16}


def test_attention_kernel_gradient_checkpointing_and_compile(tmp_path, monkeypatch):
    assert student(tmp_path, attn_implementation="eager").config._attn_implementation == "eager"
    assert student(tmp_path, gradient_checkpointing=True).is_gradient_checkpointing
    compiled = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    model = student(tmp_path, compile=True)
    assert compiled == [type(model).__name__]
    assert all(not k.startswith("_orig_mod") for k in model.state_dict())  # checkpoints keep their keys


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("student.dtype=float8", "student.dtype"),
        ("teacher.dtype=int4", "teacher.dtype"),
        ("student.attn_implementation=fast", "student.attn_implementation"),
        ("student.gradient_checkpointing=maybe", "student.gradient_checkpointing"),
    ],
)
def test_bad_model_options_fail_before_any_work(make_cfg, override, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        check_config(make_cfg(override))


LORA = {"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def override(settings: dict) -> str:
    """``student.lora=<settings>`` in Hydra's override grammar."""
    fields = (f"{k}: [{', '.join(v)}]" if isinstance(v, list) else f"{k}: {v}" for k, v in settings.items())
    return "student.lora={" + ", ".join(fields) + "}"


def test_a_lora_student_trains_only_its_adapters(tmp_path):
    pytest.importorskip("peft", reason="student.lora needs peft (pip install .[lora])")
    model = student(tmp_path, lora=LORA)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("q_proj" in n for n in trainable) and any("v_proj" in n for n in trainable)


@pytest.mark.parametrize(
    ("lora", "field"),
    [
        ({**LORA, "r": 0}, "student.lora.r"),
        ({**LORA, "rank": 2}, "student.lora needs exactly"),
        ({**LORA, "target_modules": []}, "student.lora.target_modules"),
    ],
)
def test_bad_lora_settings_fail_before_any_work(make_cfg, lora, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        check_config(make_cfg(override(lora)))


def test_a_lora_run_exports_a_merged_plain_model_that_reproduces_its_metrics(make_cfg):
    pytest.importorskip("peft", reason="student.lora needs peft (pip install .[lora])")
    import json

    import hydra
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rtd_lab.data.datamodule import ReasoningDataModule
    from rtd_lab.evaluation import Evaluator
    from rtd_lab.tasks.train import train

    cfg = make_cfg(override(LORA), "trainer.max_steps=4", "diagnostics.enabled=false")
    results = train(cfg)
    exported = AutoModelForCausalLM.from_pretrained(results["student"]["export"])
    assert type(exported).__name__ == "LlamaForCausalLM"  # merged: no adapters, no peft needed to load
    assert not any("lora" in k for k in exported.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(results["student"]["export"])
    benchmark = hydra.utils.instantiate(cfg.data.benchmark)
    test = ReasoningDataModule.gold(benchmark, tokenizer, 16, 16).test_dataloader()
    metrics, records = Evaluator(tokenizer, benchmark).evaluate(exported, test)
    assert metrics == pytest.approx(results["student"]["metrics"])
    run = [
        json.loads(line) for line in (Path(cfg.paths.output_dir) / "predictions_student.jsonl").read_text().splitlines()
    ]
    assert [r["completion"] for r in records] == [r["completion"] for r in run]
