"""A real Hugging Face tokenizer for the synthetic benchmark, built locally (no download).

Word-level: every whitespace-separated unit of the synthetic text (a number below the modulus, a
variable name, an operator) is one token, so a step's value is exactly one token, its boundary.
It is a ``PreTrainedTokenizerFast``, saved next to every model with ``save_pretrained``.
"""

from __future__ import annotations

import string

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}
SYMBOLS = ["=", ",", ";", "?", ":", "####", "+", "-", "*", "@", "&", "%"]


def build_synthetic_tokenizer(modulus: int) -> PreTrainedTokenizerFast:
    words = list(SPECIAL.values()) + SYMBOLS + list(string.ascii_lowercase) + [str(i) for i in range(modulus)]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bos = SPECIAL["bos_token"]
    # Every encoded text starts with <bos>, as a pretrained causal LM's tokenizer would do.
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="right", **SPECIAL)


def same_tokenizer(a, b) -> bool:
    """Two tokenizers are interchangeable for distillation when they map every string alike."""
    return (
        a.get_vocab() == b.get_vocab()
        and a.pad_token_id == b.pad_token_id
        and a.eos_token_id == b.eos_token_id
        and a.bos_token_id == b.bos_token_id
    )
