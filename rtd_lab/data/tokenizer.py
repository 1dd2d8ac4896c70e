"""A real Hugging Face tokenizer for the synthetic benchmark, built locally (no download).

Word-level: every whitespace-separated unit of the synthetic text (a number below the modulus, a
variable name, an operator) is one token, so a step's value is exactly one token, its boundary.
It is a ``PreTrainedTokenizerFast``, saved next to every model with ``save_pretrained``.
"""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
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


def train_bpe_tokenizer(texts: list[str], vocab_size: int = 4000) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained here on ``texts`` (any text encodes; no download), GPT-2 style
    specials: one ``<|endoftext|>`` for eos and padding, and a ``<bos>`` prepended to every text."""
    from tokenizers import trainers

    bos, eos = "<bos>", "<|endoftext|>"
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[eos, bos], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)  # all 256 bytes in the alphabet: no character is ever lost
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=eos, padding_side="right"
    )
