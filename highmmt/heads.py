"""Task heads and their losses.

A head maps the fused vector [b, f] to outputs [b, c]: class logits (classification), per-label
logits (multilabel) or values (regression).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class TaskHead(nn.Module):
    """LayerNorm + linear (HighMMT's head), or an MLP when ``hidden > 0``.

    Args:
        in_dim: fused width f. out_dim: outputs c. hidden: MLP width (0 = linear). dropout: before the output layer.
    """

    def __init__(self, *, in_dim: int, out_dim: int, hidden: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.LayerNorm(in_dim)]
        if hidden > 0:
            layers += [nn.Linear(in_dim, hidden), nn.GELU()]
            in_dim = hidden
        layers += [nn.Dropout(dropout), nn.Linear(in_dim, out_dim)]
        self.to_logits = nn.Sequential(*layers)

    def forward(self, fused: Tensor) -> Tensor:
        return self.to_logits(fused)


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
