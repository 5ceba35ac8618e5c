"""Task heads and their losses.

A head maps the fused vector [b, f] to outputs [b, c]: class logits (classification), per-label
logits (multilabel) or values (regression).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn


class TaskHead(nn.Module):
    """LayerNorm + linear (HighMMT's head), or an MLP when ``hidden > 0``; plus, for modalities whose
    embedder has a wide input, a linear read-out of that sparse bag added to the outputs (the wide
    part of Wide & Deep, Cheng et al. 2016; zero at initialisation).

    Args:
        in_dim: fused width f. out_dim: outputs c. hidden: MLP width (0 = linear). dropout: before the output layer.
        wide: {modality key: wide_size} of the task's modalities that have a wide input.
    """

    def __init__(self, *, in_dim: int, out_dim: int, hidden: int = 0, dropout: float = 0.0,
                 wide: Mapping[str, int] | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.LayerNorm(in_dim)]
        if hidden > 0:
            layers += [nn.Linear(in_dim, hidden), nn.GELU()]
            in_dim = hidden
        layers += [nn.Dropout(dropout), nn.Linear(in_dim, out_dim)]
        self.to_logits = nn.Sequential(*layers)
        self.wide = nn.ModuleDict({m: nn.EmbeddingBag(size, out_dim, mode="sum", padding_idx=0) for m, size in (wide or {}).items()})
        for bag in self.wide.values():
            nn.init.zeros_(bag.weight)

    def forward(self, fused: Tensor, wide: Mapping[str, tuple[Tensor, Tensor]] | None = None) -> Tensor:
        """fused [b, f] (+ ``wide`` {modality key: (ids [b, k], weights [b, k])} of the modalities present) -> [b, c]."""
        outputs = self.to_logits(fused)
        wide_outputs = self.wide_logits(wide)
        return outputs if wide_outputs is None else outputs + wide_outputs.to(outputs.dtype)

    def wide_logits(self, wide: Mapping[str, tuple[Tensor, Tensor]] | None) -> Tensor | None:
        """The wide read-outs' sum [b, c] over the modalities in ``wide`` (None when there are none)."""
        parts = [self.wide[m](ids, per_sample_weights=weights.to(self.wide[m].weight.dtype)) for m, (ids, weights) in (wide or {}).items()]
        return sum(parts[1:], parts[0]) if parts else None


def task_loss(outputs: Tensor, target: Tensor, task_type: str, *, label_smoothing: float = 0.0) -> Tensor:
    """Mean loss of one batch: cross-entropy, binary cross-entropy or MSE by ``task_type``.

    ``label_smoothing`` (classification only): the target puts ``1 - s`` on the label and ``s``
    spread uniformly over all classes (Szegedy et al. 2016), which keeps logits from growing without
    bound on training rows the model already fits.
    """
    if task_type == "classification":
        return F.cross_entropy(outputs.float(), target.long(), label_smoothing=label_smoothing)
    if task_type == "multilabel":
        return F.binary_cross_entropy_with_logits(outputs.float(), target.float())
    if task_type == "regression":
        return F.mse_loss(outputs.float(), target.float().reshape(outputs.shape))
    raise ValueError(f"unknown task_type {task_type!r}")
