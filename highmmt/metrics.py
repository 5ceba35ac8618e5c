"""Task metrics from collected outputs (scikit-learn), by name.

``outputs`` are the head's raw outputs [N, c]; ``targets`` the labels [N] (classification),
[N, c] (multilabel, 0/1) or values [N, c] (regression).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, softmax
from sklearn import metrics as skm

HIGHER_IS_BETTER = {"accuracy": True, "auroc": True, "auprc": True, "f1": True, "mse": False, "mae": False}


def compute_metric(name: str, outputs: np.ndarray, targets: np.ndarray, task_type: str) -> float:
    """One metric value; AUROC/AUPRC of a 2-class task use the positive class's probability."""
    outputs = np.asarray(outputs, dtype=np.float64)
    targets = np.asarray(targets)
    if len(outputs) == 0:
        raise ValueError(f"cannot compute {name} on zero samples")
    if task_type == "regression":
        if name == "mse":
            return float(skm.mean_squared_error(targets.reshape(outputs.shape), outputs))
        if name == "mae":
            return float(skm.mean_absolute_error(targets.reshape(outputs.shape), outputs))
        raise ValueError(f"metric {name!r} does not apply to regression; use mse or mae")
    if task_type == "multilabel":
        probs = expit(outputs)
        if name == "accuracy":
            return float(((probs > 0.5) == targets.astype(bool)).mean())
        if name == "f1":
            return float(skm.f1_score(targets, probs > 0.5, average="micro", zero_division=0))
        if name == "auroc":
            return float(skm.roc_auc_score(targets, probs, average="macro"))
        if name == "auprc":
            return float(skm.average_precision_score(targets, probs, average="macro"))
        raise ValueError(f"metric {name!r} does not apply to multilabel")
    probs = softmax(outputs, axis=1)
    pred = probs.argmax(axis=1)
    if name == "accuracy":
        return float((pred == targets).mean())
    if name == "f1":
        return float(skm.f1_score(targets, pred, average="macro" if outputs.shape[1] > 2 else "binary", zero_division=0))
    if name in ("auroc", "auprc"):
        if len(np.unique(targets)) < 2:
            return float("nan")
        if outputs.shape[1] == 2:
            score = probs[:, 1]
            return float(skm.roc_auc_score(targets, score) if name == "auroc" else skm.average_precision_score(targets, score))
        if name == "auroc":
            return float(skm.roc_auc_score(targets, probs, multi_class="ovr", labels=list(range(outputs.shape[1]))))
        onehot = np.eye(outputs.shape[1])[targets]
        return float(skm.average_precision_score(onehot, probs, average="macro"))
    if name in ("mse", "mae"):
        raise ValueError(f"metric {name!r} does not apply to classification")
    raise ValueError(f"unknown metric {name!r}; known: {sorted(HIGHER_IS_BETTER)}")
