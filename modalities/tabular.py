"""Tabular embedder: one token per feature (FT-Transformer style feature tokenizer).

One sample: ``{"numeric": float32 [f] (anything where missing), "numeric_observed": bool [f],
"categorical": int64 [g] (-1 = missing)}``; f = ``num_numeric``, g = ``len(categorical_cardinalities)``.
Numeric values should be standardised by the task (the tokenizer is linear in them).

Batch (from ``collate``): ``x`` [b, f] float32 (0 where missing), ``numeric_observed`` [b, f] bool,
``categorical`` [b, g] int64, ``mask`` [b, f + g] bool (all True: every feature is a token).

Tokens: [b, f + g, d], numeric features first. Numeric feature i: ``value * weight_i + bias_i``, or a
learned ``missing_i`` when unobserved; categorical feature j: a row of its own embedding table, row 0
meaning missing. Every token adds a learned feature-identity embedding (the positional part).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from highmmt.embedder import Batch, Embedder
from highmmt.registry import EMBEDDERS
from modalities._common import batch_mask, finish, nonempty, positive_int, sample_array, who, zero_invalid

LAYOUT = '{"numeric": [f], "numeric_observed": [f], "categorical": [g]}'
INIT_STD = 0.02


@EMBEDDERS.register("tabular")
class TabularEmbedder(Embedder):
    """Feature tokenizer for rows of numeric and categorical features.

    Args:
        name: the modality's name.
        dim: token width d.
        num_numeric: f, numeric features.
        categorical_cardinalities: categories of each categorical feature (values 0..card-1, -1 = missing).
    """

    kind = "tabular"

    def __init__(
        self,
        *,
        name: str,
        dim: int,
        num_numeric: int = 0,
        categorical_cardinalities: Sequence[int] = (),
    ) -> None:
        super().__init__(name=name, dim=dim)
        if isinstance(num_numeric, bool) or not isinstance(num_numeric, (int, np.integer)) or num_numeric < 0:
            raise ValueError(f"tabular embedder: option 'num_numeric' must be an integer >= 0, got {num_numeric!r}")
        self.num_numeric = int(num_numeric)
        self.cardinalities = tuple(
            positive_int(self.kind, "categorical_cardinalities", c) for c in categorical_cardinalities
        )
        f, g = self.num_numeric, len(self.cardinalities)
        if f + g == 0:
            raise ValueError("tabular embedder: needs num_numeric > 0 or at least one categorical cardinality")
        if f:
            self.numeric_weight = nn.Parameter(torch.randn(f, dim) * INIT_STD)
            self.numeric_bias = nn.Parameter(torch.randn(f, dim) * INIT_STD)
            self.numeric_missing = nn.Parameter(torch.randn(f, dim) * INIT_STD)
        if g:
            # one table for all categorical features; feature j owns rows offsets[j] .. offsets[j] + card_j
            sizes = [c + 1 for c in self.cardinalities]
            self.categorical_embed = nn.Embedding(sum(sizes), dim)
            nn.init.normal_(self.categorical_embed.weight, std=INIT_STD)
            offsets = torch.tensor([0, *np.cumsum(sizes)[:-1].tolist()], dtype=torch.long)
            self.register_buffer("offsets", offsets, persistent=False)
            max_category = torch.tensor(self.cardinalities, dtype=torch.long) - 1
            self.register_buffer("max_category", max_category, persistent=False)
        self.feature_embed = nn.Parameter(torch.randn(f + g, dim) * INIT_STD)

    @classmethod
    def collate(cls, samples: Sequence[Any], **options: Any) -> Batch:
        """samples: dicts of numeric [f], numeric_observed [f], categorical [g] -> stacked batch (module doc).

        A missing ``numeric_observed`` means "observed where finite"; a missing ``categorical`` means g = 0.
        ``options`` are the embedder's options; the feature counts they imply are checked.
        """
        nonempty(cls.kind, samples)
        numeric, observed, categorical = [], [], []
        for i, s in enumerate(samples):
            num, obs, cat = cls._sample_fields(i, s)
            for what, arr, first in (("numeric", num, numeric), ("categorical", cat, categorical)):
                if first and arr.shape != first[0].shape:
                    raise ValueError(
                        f"{cls.kind} sample {i}: expected {first[0].shape[0]} {what} features (as sample 0), "
                        f"got {arr.shape[0]}"
                    )
            numeric.append(np.where(obs, num, 0.0).astype(np.float32))
            observed.append(obs)
            categorical.append(cat)
        f, g = numeric[0].shape[0], categorical[0].shape[0]
        if options.get("num_numeric") is not None and options["num_numeric"] != f:
            raise ValueError(f"{cls.kind}: option num_numeric is {options['num_numeric']}, the samples have {f}")
        cards = options.get("categorical_cardinalities")
        if cards is not None and len(cards) != g:
            raise ValueError(f"{cls.kind}: option categorical_cardinalities has {len(cards)}, the samples have {g}")
        return {
            "x": torch.from_numpy(np.stack(numeric)),
            "numeric_observed": torch.from_numpy(np.stack(observed)),
            "categorical": torch.from_numpy(np.stack(categorical)),
            "mask": torch.ones(len(samples), f + g, dtype=torch.bool),
        }

    @classmethod
    def _sample_fields(cls, i: int, s: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One raw sample -> numeric [f] float32, observed [f] bool, categorical [g] int64."""
        if not isinstance(s, Mapping) or not ({"numeric", "categorical"} & set(s)):
            got = sorted(s) if isinstance(s, Mapping) else type(s).__name__
            raise ValueError(f"{cls.kind} sample {i}: expected a dict {LAYOUT}, got {got}")
        num = s.get("numeric", np.zeros(0, np.float32))
        num = sample_array(cls.kind, i, num, rank=1, layout="[f]", key="numeric").astype(np.float32)
        obs = s.get("numeric_observed")
        if obs is None:
            obs = np.isfinite(num)
        obs = sample_array(cls.kind, i, obs, rank=1, layout="[f]", key="numeric_observed").astype(bool)
        if obs.shape != num.shape:
            raise ValueError(f"{cls.kind} sample {i}: numeric {num.shape} and numeric_observed {obs.shape} differ")
        cat = s.get("categorical", np.zeros(0, np.int64))
        cat = sample_array(cls.kind, i, cat, rank=1, layout="[g]", key="categorical")
        if cat.size and not np.issubdtype(cat.dtype, np.integer):
            raise TypeError(f"{cls.kind} sample {i}: 'categorical' must hold integers (-1 = missing), got {cat.dtype}")
        return num, obs, cat.astype(np.int64)

    def embed(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """``x`` [b, f] (+ ``numeric_observed`` [b, f], ``categorical`` [b, g]) -> tokens [b, f + g, d], mask."""
        x = batch["x"]
        b = x.shape[0]
        f, g = self.num_numeric, len(self.cardinalities)
        self.check_rank(x, 2, "[b, f] (numeric features)")
        self.check_size(x, 1, f, "numeric features")
        self.check_float(x)
        parts = []
        if f:
            observed = batch_mask(self, batch, (b, f), key="numeric_observed")
            self.check_finite(x, where=observed)
            dtype = self.numeric_weight.dtype
            x = zero_invalid(x, observed).to(dtype)
            value = x.unsqueeze(-1) * self.numeric_weight + self.numeric_bias  # [b, f, d]
            parts.append(torch.where(observed.unsqueeze(-1), value, self.numeric_missing))
        if g:
            cat = batch.get("categorical")
            if cat is None:
                raise ValueError(
                    f"{who(self)}: batch needs 'categorical' [b, {g}] (-1 = missing); got keys {sorted(batch)}"
                )
            if tuple(cat.shape) != (b, g):
                raise ValueError(
                    f"{who(self)}: batch['categorical'] should have shape {(b, g)}, got {tuple(cat.shape)}"
                )
            if torch.is_floating_point(cat) or cat.dtype == torch.bool:
                raise TypeError(
                    f"{who(self)}: batch['categorical'] must hold integers (-1 = missing), got {cat.dtype}"
                )
            cat = cat.long().to(x.device)
            bad = (cat < -1) | (cat > self.max_category)
            if bool(bad.any()):
                j = int(bad.any(dim=0).nonzero()[0])
                got = cat[:, j][bad[:, j]].unique().tolist()[:5]
                raise ValueError(
                    f"{who(self)}: categorical feature {j} must lie in -1..{self.cardinalities[j] - 1} "
                    f"(cardinality {self.cardinalities[j]}), got {got}"
                )
            parts.append(self.categorical_embed(cat + 1 + self.offsets))  # [b, g, d]
        tokens = torch.cat(parts, dim=1) + self.feature_embed
        return finish(tokens, batch_mask(self, batch, (b, f + g)))
