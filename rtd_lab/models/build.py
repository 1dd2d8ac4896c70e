"""Build a Hugging Face causal LM from a config (trained from scratch) or load one by hub id / path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from rtd_lab.data.tokenizer import same_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTENTION = ("eager", "sdpa", "flash_attention_2", "flex_attention")


def check_load_options(dtype: str | None, attn_implementation: str | None, field: str) -> None:
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"{field}.dtype must be null or one of {list(DTYPES)}, got {dtype!r}")
    if attn_implementation is not None and attn_implementation not in ATTENTION:
        raise ValueError(
            f"{field}.attn_implementation must be null or one of {list(ATTENTION)}, got {attn_implementation!r}"
        )


def build_causal_lm(
    tokenizer,
    arch: str = "llama",
    model: dict[str, Any] | None = None,
    pretrained: str | None = None,
    trust_remote_code: bool = False,
    field: str = "model",
    revision: str | None = None,
    dtype: str | None = None,
    attn_implementation: str | None = None,
):
    """A causal LM: ``pretrained`` (hub id or local dir) if given, else ``arch`` built from ``model``.

    Built models take their vocabulary size and special-token ids from ``tokenizer``. ``field``
    names the config group in error messages ("teacher", "student"). ``revision`` pins a hub
    model's commit, branch or tag; ``dtype`` (float32 | bfloat16 | float16) is the weights' dtype
    (None: as stored, or float32 for a built model); ``attn_implementation`` picks transformers'
    attention kernel (eager | sdpa | flash_attention_2 | flex_attention; None: its default).
    """
    check_load_options(dtype, attn_implementation, field)
    options: dict[str, Any] = {}
    if attn_implementation is not None:
        options["attn_implementation"] = attn_implementation
    if pretrained:
        if revision is not None:
            options["revision"] = revision
        if dtype is not None:
            options["dtype"] = DTYPES[dtype]
        # safetensors first; transformers loads any .bin fallback with weights_only=True.
        return AutoModelForCausalLM.from_pretrained(str(pretrained), trust_remote_code=trust_remote_code, **options)
    try:
        config = AutoConfig.for_model(
            arch,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **dict(model or {}),
        )
    except ValueError as e:
        raise ValueError(f"{field}.arch={arch!r} is not a model type transformers knows: {e}") from e
    built = AutoModelForCausalLM.from_config(config, **options)
    return built if dtype is None else built.to(DTYPES[dtype])


def load_tokenizer(pretrained: str, trust_remote_code: bool = False, field: str = "teacher"):
    tok = AutoTokenizer.from_pretrained(str(pretrained), trust_remote_code=trust_remote_code)
    if not isinstance(tok, PreTrainedTokenizerFast) and not getattr(tok, "is_fast", False):
        raise ValueError(
            f"{field}.pretrained={pretrained}: its tokenizer is not a fast tokenizer; step boundaries "
            "need the offset mapping only fast tokenizers give"
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # common for causal LMs; padding is always masked out
    return tok


def check_same_tokenizer(student_source: str | Path, tokenizer, field: str = "student.pretrained") -> None:
    """Distillation compares logits token by token: the student must share the teacher's tokenizer."""
    path = Path(student_source)
    try:
        student_tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError):
        return  # a checkpoint without a tokenizer: its vocabulary size is checked against the model
    if not same_tokenizer(student_tok, tokenizer):
        raise ValueError(
            f"{field}={student_source} uses a different tokenizer than the teacher "
            f"(vocab {len(student_tok)} vs {len(tokenizer)}); distillation needs the same one"
        )


def merged_copy(model):
    """A copy of ``model`` as it is deployed: a LoRA student (``student.lora``, a PEFT model) with its
    adapters merged into a plain transformers model; any other model copied as it is."""
    model = copy.deepcopy(model)
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def check_finite_weights(model, what: str) -> None:
    """A NaN or infinite weight would train a NaN student to the end: stop at load, naming the model."""
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise ValueError(f"{what}: weight {name} holds NaN or infinite values (a corrupted or diverged model)")
