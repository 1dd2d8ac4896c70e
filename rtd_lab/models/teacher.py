"""The teacher as distillation sees it: frozen, always in eval mode, never building a graph."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from rtd_lab.losses import gather_boundaries


class SparseLogits(NamedTuple):
    """The teacher's logits as the offline cache stores them (``rtd_lab.teacher_cache``)."""

    values: torch.Tensor  # (B, T, k) the k largest logits
    indices: torch.Tensor  # (B, T, k) their token ids
    lse: torch.Tensor  # (B, T) logsumexp over the whole vocabulary of logits / T
    tail: str = "bucket"  # how the mass outside the top-k counts (losses.sparse_log_probs)


class TeacherOutput(NamedTuple):
    logits: torch.Tensor | SparseLogits  # (B, T, V) online, or the cache's top-k
    boundary_hidden: torch.Tensor | None  # (B, K, D_T) at ``layer``, or None when not asked for
    layer_hidden: tuple[torch.Tensor, ...] | None = None  # (B, T, D_T) per layer of ``hidden_layers``


class Teacher(nn.Module):
    def __init__(self, model: nn.Module, layer: int | str = -1):
        super().__init__()
        check_layer(layer, model.config.num_hidden_layers, "teacher.layer")
        self.model = model
        self.layer = layer
        self.model.requires_grad_(False)
        self.model.eval()

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def train(self, mode: bool = True) -> Teacher:
        # Lightning calls .train() on the whole LightningModule each epoch: the teacher stays in eval.
        return super().train(False)

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        boundary_pos: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        hidden_layers: list[int] | None = None,
    ) -> TeacherOutput:
        """Logits (B, T, V) and, given ``boundary_pos`` (B, K), hidden states there (B, K, D_T);
        given ``hidden_layers``, the full hidden states (B, T, D_T) of those layers (FitNets hints).

        Training batches are right-padded, so ``attention_mask`` may be left out (see
        ``ReasoningModule.student_forward``).
        """
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=boundary_pos is not None or bool(hidden_layers),
            use_cache=False,
        )
        hidden = None
        if boundary_pos is not None:
            hidden = gather_boundaries(layer_states(out.hidden_states, self.layer), boundary_pos)
        layers = tuple(out.hidden_states[i] for i in hidden_layers) if hidden_layers else None
        return TeacherOutput(out.logits, hidden, layers)


def check_layer(layer: int | str, n_layers: int | None, field: str) -> None:
    """A layer whose states a method reads: an index into ``hidden_states`` (n_layers + 1 entries,
    the embeddings first; -1: the last layer's output, after the final norm) or ``"mean"``.
    ``n_layers`` None: the model is not built yet, only the kind of value is checked."""
    if layer == "mean":
        return
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise ValueError(f"{field} must be a layer index or 'mean', got {layer!r}")
    if n_layers is not None and not -(n_layers + 1) <= layer <= n_layers:
        raise ValueError(f"{field} must be an index in [{-(n_layers + 1)}, {n_layers}] or 'mean', got {layer!r}")


def layer_states(hidden_states: tuple[torch.Tensor, ...], layer: int | str) -> torch.Tensor:
    """(B, T, D) states of ``layer`` (``check_layer``); ``"mean"``: the average of every block's
    output (the embeddings left out), so a method reads what all layers hold, not only the last,
    which next to the output mostly encodes the next token."""
    if layer == "mean":
        return torch.stack(hidden_states[1:]).mean(dim=0)
    return hidden_states[layer]
