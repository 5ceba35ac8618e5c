"""Simple scikit-learn references for any task, on the task's own splits (``baseline.py``, ``evaluate.py``).

Features (``tasks/features.py``): per modality, fixed-length blocks (series: summary statistics and
the series resampled to a fixed length; tabular: the raw numeric and one-hot categorical values;
image: pixels; text: TF-IDF word 1-2 grams). A *feature set* is a list of blocks:

* one modality: each block alone and, where there are several, all of them together
  (``stats``, ``resampled``, ``stats+resampled``; ``raw`` for tabular; ``pixels``; ``tfidf``);
* several modalities: ``concat``, every block of every modality side by side; ``late_fusion``, one
  model per modality on its blocks, their outputs averaged (log-probabilities for classification, as
  the data README's late-fusion references); and, with ``per_modality``, each modality's blocks alone,
  named by the modality.

Preprocessing is fitted on the training rows only: dense blocks are imputed with the training
median (plus a missing-value indicator per column with gaps) and standardised; categorical codes
are one-hot encoded; text is TF-IDF weighted (word 1-2 grams, sublinear tf).

Models: ``lr`` logistic regression (ridge regression with alpha = 1 / C for regression tasks;
one-vs-rest for multilabel), C picked on the validation split from :data:`LR_GRID` (TF-IDF:
:data:`TEXT_LR_GRID`); ``rf`` a random forest (500 trees); ``gb`` histogram gradient boosting
(300 iterations, learning rate 0.05, 15 leaves, at least min(20, rows / 50) rows per leaf). Trees
never read text. Gradient boosting fits one tree per class per iteration, so it is skipped above
``max_gb_classes`` (10) classes; trees see at most ``max_tree_rows`` training rows (a seeded,
stratified subset) so that the largest tasks stay minutes, not hours. ``fit_seconds`` covers
preprocessing, choosing and fitting (all folds together under K-fold).

Protocol: models are fitted on ``train``, choices are made on ``validation`` and the task's metric
is reported on ``test`` (``tasks.loader.score``). A test split under ``cv_threshold`` rows is too
noisy to rank anything (robot failures: 10-33 rows), so ``cv="auto"`` pools train + validation +
test and runs repeated stratified K-fold instead (K = 5, fewer when the rarest class has fewer
rows: robot failures LP3 gets 3, as in the data README), reporting the mean and the sample SD
(ddof=1) over folds x repeats; inside each fold, C is picked on a stratified 20% of the training
folds and the model refitted on all of them. Repeat r uses ``StratifiedKFold(shuffle=True,
random_state=seed + r)``.

The best baseline of a task is the one with the best *test* value: the strictest reference a model
has to beat (``evaluate.py``'s margin is measured against it).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from highmmt.checkpoint import atomic_write_json
from highmmt.metrics import HIGHER_IS_BETTER
from tasks.base import TaskSpec
from tasks.cache import LoadedTask, rows_to_samples
from tasks.splits import SPLITS, stratified_holdout
from tasks.features import blocks_of, featurize, fit_params
from tasks.loader import score

# Bump when features, grids or models change: evaluate.py's cached baselines are then recomputed.
BASELINE_VERSION = "2"  # 2: late_fusion
MODELS = ("lr", "rf", "gb")
FEATURE_SET_MODES = ("each", "all")
LR_GRID = (0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
# TF-IDF features are sparse and many: weaker regularisation wins (the nltk README's grid)
TEXT_LR_GRID = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
CV_FOLDS = 5
FIT_SAMPLE_ROWS = 512  # training rows that fix the feature shapes (tasks/features.py fit_params)
CHUNK_ROWS = 1024
BLOCK_LABELS = {"text": "tfidf"}


@dataclass(frozen=True)
class BaselineSettings:
    """What to compute.

    Args:
        models: any of ``lr``, ``rf``, ``gb``.
        feature_sets: ``each`` (every block alone and together, see the module docstring) or
            ``all`` (only every block together: one feature set per task).
        per_modality: with several modalities, also each modality alone.
        cv: ``auto`` (K-fold when the test split has fewer than ``cv_threshold`` rows), ``none``
            (always the task's splits) or a fold count K as a string (always K-fold).
        cv_repeats: repetitions of K-fold, each with its own shuffle.
        cv_threshold: test rows below which ``auto`` switches to K-fold.
        seed: folds, subsets, forests and boosting.
        rf_trees: trees per forest.
        max_tree_rows: training rows a tree model sees at most.
        max_gb_classes: gradient boosting is skipped above this many classes.
        jobs: cores: the forests' ``n_jobs`` and the BLAS / OpenMP threads.
        cv_refit: under K-fold, refit the chosen model on all of a fold's training part (True, the references'
            protocol) or keep it as fitted on the inner 80% that C was chosen beside (False: the rows a neural
            model trains on while it selects its checkpoint on the other 20%, e.g. ``experiments/robot_cv.py``).
    """

    models: tuple[str, ...] = MODELS
    feature_sets: str = "each"
    per_modality: bool = False
    cv: str = "auto"
    cv_repeats: int = 3
    cv_threshold: int = 100
    seed: int = 0
    rf_trees: int = 500
    max_tree_rows: int = 20000
    max_gb_classes: int = 10
    jobs: int = 1
    cv_refit: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        bad = [m for m in self.models if m not in MODELS]
        if bad or not self.models:
            raise ValueError(f"baseline models must be a non-empty subset of {list(MODELS)}, got {list(self.models)}")
        if self.feature_sets not in FEATURE_SET_MODES:
            raise ValueError(f"baseline feature_sets must be one of {FEATURE_SET_MODES}, got {self.feature_sets!r}")
        if self.cv not in ("auto", "none") and not (str(self.cv).isdigit() and int(self.cv) >= 2):
            raise ValueError(f"baseline cv must be 'auto', 'none' or a fold count >= 2, got {self.cv!r}")
        for name in ("cv_repeats", "rf_trees", "max_tree_rows", "max_gb_classes", "jobs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"baseline {name} must be a positive integer, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["models"] = list(self.models)
        return d

    def key(self) -> str:
        """A short hash of everything that changes the numbers (not ``jobs``), code version included."""
        # cv_refit=True (the default) is left out, so that the keys of earlier caches stay valid
        d = {k: v for k, v in self.to_dict().items() if k != "jobs" and not (k == "cv_refit" and v)} | {"version": BASELINE_VERSION}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


# What evaluate.py computes when no baseline file is given: one feature set (everything), a linear
# model and a 100-tree forest, on the task's own splits (the model's test rows, a paired comparison).
EVALUATE_SETTINGS = BaselineSettings(models=("lr", "rf"), feature_sets="all", cv="none", rf_trees=100)


# ----------------------------------------------------------------------------------------------
# features of every row


@dataclass
class TaskFeatures:
    """A task's rows as feature blocks, pooled in split order (train, validation, test).

    Args:
        spec: the task spec.
        blocks: (modality, block) -> [N, f] float32 (text: [N] object, categorical: int64 codes).
        block_types: (modality, block) -> ``dense`` | ``categorical`` | ``text``.
        targets: [N] (classification) or [N, c].
        splits: split -> positions of its rows in the pool.
        seconds: time spent reading and featurising.
    """

    spec: TaskSpec
    blocks: dict[tuple[str, str], np.ndarray]
    block_types: dict[tuple[str, str], str]
    targets: np.ndarray
    splits: dict[str, np.ndarray]
    seconds: float = 0.0
    params: dict[str, dict[str, Any]] = field(default_factory=dict)


def extract_features(lt: LoadedTask, *, seed: int = 0, quiet: bool = True) -> TaskFeatures:
    """Read every labelled row of the task once (in chunks) and turn it into feature blocks."""
    start = time.perf_counter()
    spec = lt.spec
    train = lt.splits["train"]
    if len(train) == 0:
        raise ValueError(f"task {spec.name!r}: the training split is empty; a baseline needs training rows")
    sample_rows = np.sort(np.random.default_rng(seed).permutation(len(train))[:FIT_SAMPLE_ROWS])
    fit_samples, _ = rows_to_samples(train, sample_rows, spec)
    params = {m: fit_params(kind, fit_samples[m], spec.modality_options.get(m), where=f"task {spec.name!r}, modality {m!r}")
              for m, kind in spec.modalities.items()}
    parts: dict[tuple[str, str], list[np.ndarray]] = {}
    targets: list[np.ndarray] = []
    splits: dict[str, np.ndarray] = {}
    offset = 0
    total = sum(len(lt.splits[s]) for s in SPLITS)
    with tqdm(total=total, desc=f"{spec.name}: features", disable=quiet, leave=False) as bar:
        for split in SPLITS:
            ds = lt.splits[split]
            splits[split] = np.arange(offset, offset + len(ds))
            offset += len(ds)
            for lo in range(0, len(ds), CHUNK_ROWS):
                samples, labels = rows_to_samples(ds, np.arange(lo, min(lo + CHUNK_ROWS, len(ds))), spec)
                for m, kind in spec.modalities.items():
                    where = f"task {spec.name!r}, modality {m!r}"
                    for name, block in featurize(kind, samples[m], params[m], where=where).items():
                        parts.setdefault((m, name), []).append(block)
                targets.append(labels)
                bar.update(len(labels))
    types = {(m, b): t for m, kind in spec.modalities.items() for b, t in blocks_of(kind)}
    blocks = {key: np.concatenate(chunks) for key, chunks in parts.items()}
    return TaskFeatures(spec=spec, blocks=blocks, block_types=types, targets=np.concatenate(targets),
                        splits=splits, seconds=time.perf_counter() - start, params=params)


LATE_FUSION = "late_fusion"


def feature_sets(spec: TaskSpec, settings: BaselineSettings) -> dict[str, list[tuple[str, str]]]:
    """Feature set name -> its (modality, block) list (see the module docstring)."""
    per_mod = {m: [(m, b) for b, _ in blocks_of(kind)] for m, kind in spec.modalities.items()}
    if len(per_mod) > 1:
        sets = {"concat": [key for keys in per_mod.values() for key in keys]}
        sets[LATE_FUSION] = sets["concat"]  # fitted per modality, see run_task
        if settings.per_modality:
            sets.update(per_mod)
        return sets
    (m, keys), = per_mod.items()
    kind = spec.modalities[m]
    if kind == "tabular":
        return {"raw": keys}  # numeric and one-hot categorical belong together
    sets: dict[str, list[tuple[str, str]]] = {}
    if settings.feature_sets == "each" or len(keys) == 1:
        sets.update({BLOCK_LABELS.get(b, b): [(m, b)] for _, b in keys})
    if len(keys) > 1:
        sets["+".join(b for _, b in keys)] = keys
    return sets


class Design:
    """The feature matrix of a feature set, preprocessing fitted on training rows only.

    Dense blocks: training-median imputation with missing-value indicators, then standardisation.
    Categorical blocks: one-hot (codes unseen in training rows get all zeros). Text: TF-IDF word
    1-2 grams with sublinear tf. Any text makes the matrix sparse (CSR).
    """

    def __init__(self, feats: TaskFeatures, keys: Sequence[tuple[str, str]]) -> None:
        self.feats = feats
        self.keys = [k for k in keys if feats.blocks[k].ndim == 1 or feats.blocks[k].shape[1] > 0]
        self.steps: list[Any] = []

    @property
    def has_text(self) -> bool:
        return any(self.feats.block_types[k] == "text" for k in self.keys)

    def fit(self, rows: np.ndarray) -> Design:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        self.steps = []
        for key in self.keys:
            kind = self.feats.block_types[key]
            if kind == "text":
                step = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
            elif kind == "categorical":
                step = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
            else:
                step = make_pipeline(SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                                     StandardScaler())
            self.steps.append(step.fit(self.feats.blocks[key][rows]))
        return self

    def transform(self, rows: np.ndarray) -> Any:
        import scipy.sparse as sp

        parts = [step.transform(self.feats.blocks[key][rows]) for key, step in zip(self.keys, self.steps)]
        if self.has_text:
            return sp.hstack([p if sp.issparse(p) else sp.csr_matrix(p) for p in parts]).tocsr()
        return np.hstack([np.asarray(p, dtype=np.float32) for p in parts]) if parts else np.zeros((len(rows), 0), np.float32)


# ----------------------------------------------------------------------------------------------
# models


def _lr_model(spec: TaskSpec, C: float, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.multiclass import OneVsRestClassifier

    if spec.task_type == "regression":
        return Ridge(alpha=1.0 / C)
    lr = LogisticRegression(C=C, max_iter=2000, random_state=seed)
    return OneVsRestClassifier(lr) if spec.task_type == "multilabel" else lr


def _tree_model(name: str, spec: TaskSpec, settings: BaselineSettings, n_rows: int) -> Any:
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )

    regression = spec.task_type == "regression"
    if name == "rf":
        cls = RandomForestRegressor if regression else RandomForestClassifier
        return cls(n_estimators=settings.rf_trees, random_state=settings.seed, n_jobs=settings.jobs)
    cls = HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier
    # scikit-learn's 20 rows per leaf forbids every split on a 40-row task: scale it with the data
    leaf = max(1, min(20, n_rows // 50))
    return cls(max_iter=300, learning_rate=0.05, max_leaf_nodes=15, min_samples_leaf=leaf, early_stopping=False,
               random_state=settings.seed)


def skip_reason(model: str, spec: TaskSpec, design_has_text: bool, settings: BaselineSettings) -> str | None:
    """Why a model is not run on a feature set, or ``None``."""
    if model != "lr" and design_has_text:
        return "trees are not fitted on TF-IDF text features"
    if model == "gb":
        if spec.task_type == "multilabel":
            return "gradient boosting has no multilabel mode"
        if spec.task_type == "regression" and spec.num_classes > 1:
            return "gradient boosting has no multi-output regression"
        if spec.task_type == "classification" and spec.num_classes > settings.max_gb_classes:
            return f"{spec.num_classes} classes > max_gb_classes={settings.max_gb_classes} (one tree per class per iteration)"
    return None


def model_outputs(model: Any, X: Any, spec: TaskSpec) -> np.ndarray:
    """What ``tasks.loader.score`` reads: log-probabilities [N, classes] (classification), logits
    [N, labels] (multilabel) or predictions [N, outputs] (regression)."""
    n = X.shape[0]
    if spec.task_type == "regression":
        return np.asarray(model.predict(X), dtype=np.float64).reshape(n, -1)
    proba = model.predict_proba(X)
    if spec.task_type == "multilabel":
        if isinstance(proba, list):  # a forest: one [N, classes seen] array per label
            cols = [p[:, list(c).index(1)] if 1 in c else np.zeros(n) for p, c in zip(proba, model.classes_)]
            proba = np.stack(cols, axis=1)
        p = np.clip(proba, 1e-7, 1 - 1e-7)
        return np.log(p) - np.log1p(-p)
    full = np.full((n, spec.num_classes), 1e-12)
    full[:, np.asarray(model.classes_, dtype=int)] = np.maximum(proba, 1e-12)
    return np.log(full)


def _metric(spec: TaskSpec, model: Any, X: Any, y: np.ndarray) -> float:
    return score(spec, model_outputs(model, X, spec), y)[spec.metric]


def _better(a: float, b: float, metric: str) -> bool:
    if math.isnan(b):
        return not math.isnan(a)
    return a > b if HIGHER_IS_BETTER[metric] else a < b


class _OneClass:
    """Predicts the only class of a training part with one class (no model can be fitted on it)."""

    def __init__(self, y: np.ndarray) -> None:
        self.classes_ = np.unique(y)

    def predict_proba(self, X: Any) -> np.ndarray:
        return np.ones((X.shape[0], 1))


def fit_select(
    model: str, spec: TaskSpec, settings: BaselineSettings, X_fit: Any, y_fit: np.ndarray, X_val: Any, y_val: np.ndarray,
    *, text: bool, refit: tuple[Any, np.ndarray] | None = None,
) -> tuple[Any, dict[str, Any], float]:
    """Fit ``model``; for ``lr`` pick C on (X_val, y_val). Returns (fitted model, choices, validation metric).

    With ``refit`` = (X, y), the chosen configuration is fitted again on those rows (K-fold: the
    whole training part of the fold) and that model is returned.
    """
    if spec.task_type == "classification" and len(np.unique(y_fit)) < 2:
        fitted = _OneClass(y_fit)
        return fitted, {"one_class": True}, _metric(spec, fitted, X_val, y_val)
    if model != "lr":
        X, y = refit if refit is not None else (X_fit, y_fit)
        rows = _tree_rows(y, spec, settings)
        fitted = _tree_model(model, spec, settings, len(rows)).fit(X[rows], y[rows])
        val = _metric(spec, fitted, X_val, y_val) if refit is None else float("nan")
        return fitted, ({"rows": int(len(rows))} if len(rows) < len(y) else {}), val
    best, best_val, best_C = None, float("nan"), None
    estimator = _lr_model(spec, 1.0, settings.seed)
    if spec.task_type == "classification":
        estimator.set_params(warm_start=True)  # each C starts from the last C's solution
    for C in (TEXT_LR_GRID if text else LR_GRID):
        estimator.set_params(**({"alpha": 1.0 / C} if spec.task_type == "regression" else
                                {"estimator__C": C} if spec.task_type == "multilabel" else {"C": C}))
        estimator.fit(X_fit, y_fit)
        val = _metric(spec, estimator, X_val, y_val)
        if best is None or _better(val, best_val, spec.metric):
            best, best_val, best_C = copy.deepcopy(estimator), val, C
    if refit is not None:
        best = _lr_model(spec, best_C, settings.seed).fit(*refit)
    return best, {"C": best_C}, best_val


def fit_plan(model: str, spec: TaskSpec, settings: BaselineSettings, X: Mapping[str, Any], y: np.ndarray, plan: Plan,
             *, text: bool) -> tuple[Any, dict[str, Any], float]:
    """:func:`fit_select` on one plan's rows (``X``: its ``fit`` / ``val`` / ``test`` / ``inner`` matrices):
    on the split, fit on ``fit`` and choose on ``val``; under K-fold, choose on (``inner``, ``val``) and refit on ``fit``."""
    if plan.inner is None:
        return fit_select(model, spec, settings, X["fit"], y[plan.fit], X["val"], y[plan.val], text=text)
    return fit_select(model, spec, settings, X["inner"], y[plan.inner], X["val"], y[plan.val], text=text,
                      refit=(X["fit"], y[plan.fit]))


def _tree_rows(y: np.ndarray, spec: TaskSpec, settings: BaselineSettings) -> np.ndarray:
    """All rows, or a seeded (stratified for classification) subset of ``max_tree_rows``."""
    n = len(y)
    if n <= settings.max_tree_rows:
        return np.arange(n)
    labels = y if spec.task_type == "classification" else np.zeros(n, dtype=int)
    _, subset = stratified_holdout(labels, settings.max_tree_rows / n, seed=settings.seed)
    return subset


# ----------------------------------------------------------------------------------------------
# protocols


def protocol(n_test: int, settings: BaselineSettings) -> dict[str, Any]:
    """``{"kind": "split"}`` or ``{"kind": "cv", "folds": K, "repeats": R}`` for a test split of ``n_test`` rows."""
    if settings.cv == "none" or (settings.cv == "auto" and n_test >= settings.cv_threshold):
        return {"kind": "split"}
    folds = CV_FOLDS if settings.cv == "auto" else int(settings.cv)
    return {"kind": "cv", "folds": folds, "repeats": settings.cv_repeats}


def cv_folds(
    y: np.ndarray, spec: TaskSpec, folds: int, repeats: int, seed: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """(train rows, test rows) of every fold of every repeat, and the fold count used.

    Classification is stratified and gets at most as many folds as its rarest class has rows
    (at least 2).
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(y)
    if spec.task_type == "classification":
        rarest = int(np.unique(y, return_counts=True)[1].min())
        k = max(2, min(folds, rarest, n))
    else:
        k = max(2, min(folds, n))
    out = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for r in range(repeats):
            if spec.task_type == "classification":
                splitter = StratifiedKFold(k, shuffle=True, random_state=seed + r).split(np.zeros(n), y)
            else:
                splitter = KFold(k, shuffle=True, random_state=seed + r).split(np.zeros(n))
            out.extend((np.asarray(a), np.asarray(b)) for a, b in splitter)
    return out, k


@dataclass(frozen=True)
class Plan:
    """The rows of one fit: ``fit`` to fit on, ``val`` to choose on, ``test`` to score; K-fold
    plans choose on (``inner``, ``val``), two parts of ``fit``, then refit on all of ``fit``."""

    fit: np.ndarray
    val: np.ndarray
    test: np.ndarray
    inner: np.ndarray | None = None


def plans(feats: TaskFeatures, proto: dict[str, Any], settings: BaselineSettings) -> list[Plan]:
    """One plan (the task's splits) or one per fold x repeat; fills ``proto``'s fold count and rows."""
    if proto["kind"] == "split":
        return [Plan(feats.splits["train"], feats.splits["validation"], feats.splits["test"])]
    spec, y = feats.spec, feats.targets
    pool = np.concatenate([feats.splits[s] for s in SPLITS])
    folds, proto["folds"] = cv_folds(y[pool], spec, proto["folds"], proto["repeats"], settings.seed)
    proto["pooled_rows"] = int(len(pool))
    out = []
    for tr, te in folds:
        strat = y[pool[tr]] if spec.task_type == "classification" else np.zeros(len(tr), int)
        inner, val = stratified_holdout(strat, 0.2, seed=settings.seed)
        out.append(Plan(pool[tr], pool[tr][val], pool[te], pool[tr][inner]) if settings.cv_refit
                   else Plan(pool[tr][inner], pool[tr][val], pool[te]))  # no refit: fit on inner, as on a split
    return out


def run_task(lt: LoadedTask, settings: BaselineSettings = BaselineSettings(), *, quiet: bool = True,
             feats: TaskFeatures | None = None) -> dict[str, Any]:
    """Every baseline of one task; the task's entry of ``baselines.json`` (see ``baseline.py``)."""
    from sklearn.exceptions import ConvergenceWarning

    spec = lt.spec
    feats = feats or extract_features(lt, seed=settings.seed, quiet=quiet)
    proto = protocol(len(lt.splits["test"]), settings)
    sets = feature_sets(spec, settings)
    todo = plans(feats, proto, settings)
    y = feats.targets
    results: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    # BLAS / OpenMP pools sized to ``jobs``: on a busy machine gradient boosting's OpenMP threads
    # spin far longer than they work (a 100-row fit took seconds instead of a fraction of one)
    total = len(sets) * len(settings.models) * len(todo)
    with threadpool_limits(limits=settings.jobs), warnings.catch_warnings(), \
            tqdm(total=total, desc=f"{spec.name}: baselines", disable=quiet, leave=False) as bar:
        warnings.filterwarnings("ignore", category=ConvergenceWarning)  # max_iter=2000; the grid's weakest C may not converge
        warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")  # e.g. a class absent from a tiny fold
        for set_name, keys in sets.items():
            # one design per modality for late fusion (each fitted alone, outputs averaged), else one for all keys
            groups = ([[k for k in keys if k[0] == m] for m in dict.fromkeys(k[0] for k in keys)]
                      if set_name == LATE_FUSION else [keys])
            acc: dict[str, dict[str, Any]] = {}
            for plan in todo:
                t0 = time.perf_counter()
                designs = [Design(feats, g).fit(plan.fit) for g in groups]
                data = [{part: design.transform(rows) for part, rows in
                         (("fit", plan.fit), ("val", plan.val), ("test", plan.test), ("inner", plan.inner)) if rows is not None}
                        for design in designs]
                design_s = time.perf_counter() - t0
                has_text = any(d.has_text for d in designs)
                for model in settings.models:
                    name = f"{set_name}_{model}"
                    reason = skip_reason(model, spec, has_text, settings)
                    if reason:
                        skipped[name] = reason
                        bar.update(1)
                        continue
                    t1 = time.perf_counter()
                    fits = [fit_plan(model, spec, settings, X, y, plan, text=d.has_text) for X, d in zip(data, designs)]
                    if len(fits) == 1:
                        (fitted, chosen, val), = fits
                        test_outputs = model_outputs(fitted, data[0]["test"], spec)
                    else:  # late fusion: the mean of the modalities' outputs, scored as one model
                        chosen = {g[0][0]: c for g, (_, c, _) in zip(groups, fits)}
                        test_outputs = np.mean([model_outputs(f, X["test"], spec) for (f, _, _), X in zip(fits, data)], axis=0)
                        val = (score(spec, np.mean([model_outputs(f, X["val"], spec) for (f, _, _), X in zip(fits, data)], axis=0),
                                     y[plan.val])[spec.metric] if plan.inner is None else float("nan"))
                    test = score(spec, test_outputs, y[plan.test])
                    a = acc.setdefault(name, {"tests": [], "vals": [], "chosen": [], "seconds": 0.0})
                    a["tests"].append(test)
                    a["vals"].append(val)
                    a["chosen"].append(chosen)
                    a["seconds"] += design_s + time.perf_counter() - t1
                    a["n_features"] = int(sum(X["fit"].shape[1] for X in data))
                    bar.update(1)
            results.update({name: _summarise(name, set_name, a, spec, proto) for name, a in acc.items()})
    entry = {
        "task": spec.name, "task_type": spec.task_type, "metric": spec.metric,
        "higher_is_better": HIGHER_IS_BETTER[spec.metric], "protocol": proto,
        "rows": {s: int(len(feats.splits[s])) for s in SPLITS}, "fingerprint": fingerprint(lt),
        "features_seconds": round(feats.seconds, 3),
        "feature_sets": {s: ["/".join(k) for k in keys] for s, keys in sets.items()},
        "block_sizes": {"/".join(k): int(v.shape[1]) if v.ndim > 1 else "text" for k, v in feats.blocks.items()},
        "baselines": results, "skipped": skipped, "settings": settings.to_dict(),
    }
    best = best_baseline(entry)
    entry["best"] = {"name": best[0], "value": best[1]} if best else None
    return entry


def _summarise(name: str, set_name: str, a: Mapping[str, Any], spec: TaskSpec, proto: Mapping[str, Any]) -> dict[str, Any]:
    tests = a["tests"]
    primary = np.array([t[spec.metric] for t in tests], dtype=float)
    out: dict[str, Any] = {
        "features": set_name, "model": name.rsplit("_", 1)[1], "metric": spec.metric,
        "value": float(np.nanmean(primary)) if len(primary) else float("nan"),
        "metrics": {m: float(np.nanmean([t[m] for t in tests])) for m in tests[0]},
        "fit_seconds": round(float(a["seconds"]), 3), "n_features": a["n_features"],
    }
    if proto["kind"] == "split":
        out["validation"] = float(a["vals"][0])
        out["params"] = a["chosen"][0]
    else:
        out["std"] = float(np.nanstd(primary, ddof=1)) if len(primary) > 1 else float("nan")
        out["scores"] = [float(v) for v in primary]
        out["params"] = {k: [c.get(k) for c in a["chosen"]] for k in sorted({k for c in a["chosen"] for k in c})}
    return out


# ----------------------------------------------------------------------------------------------
# results: best, margin, caching, report


def fingerprint(lt: LoadedTask) -> str:
    """Names the exact data: a built-in task's cache folder (its key hashes files, options and code
    version), else a hash of the spec and each split's size and ``datasets`` fingerprint."""
    if lt.source in ("built", "cache") and lt.path is not None:
        return lt.path.name
    payload = {"spec": lt.spec.to_dict(), "splits": {s: [len(lt.splits[s]), getattr(lt.splits[s], "_fingerprint", None)]
                                                      for s in SPLITS}}
    return f"{lt.spec.name}-" + hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def best_baseline(entry: Mapping[str, Any], split: str = "test") -> tuple[str, float] | None:
    """(name, value) of the best baseline of a task entry on ``split`` (``test`` or ``validation``;
    K-fold entries have no validation value), or ``None``. Ties go to the alphabetically first name."""
    key = "value" if split == "test" else "validation"
    higher = HIGHER_IS_BETTER[entry["metric"]]
    scored = [(n, float(b[key])) for n, b in entry.get("baselines", {}).items()
              if key in b and b[key] is not None and not math.isnan(float(b[key]))]
    if not scored:
        return None
    return min(scored, key=lambda nv: (-nv[1] if higher else nv[1], nv[0]))  # ties: the first name


def margin(value: float, best: float, metric: str) -> float:
    """How much better ``value`` is than ``best``: positive = better, whichever way the metric runs."""
    return float(value - best) if HIGHER_IS_BETTER[metric] else float(best - value)


def cached_run(lt: LoadedTask, settings: BaselineSettings, cache_dir: Path, *, quiet: bool = True) -> dict[str, Any]:
    """:func:`run_task`, computed once per data fingerprint and settings under ``cache_dir/baselines/``."""
    path = Path(cache_dir) / "baselines" / f"{fingerprint(lt)}-{settings.key()}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # unreadable: recompute and overwrite
    entry = run_task(lt, settings, quiet=quiet)
    atomic_write_json(path, entry)
    return entry


def load_results(path: str | Path) -> dict[str, Any]:
    """The ``tasks`` of a ``baselines.json`` written by ``baseline.py`` (a file or its folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / "baselines.json"
    if not p.is_file():
        raise FileNotFoundError(f"baseline results {str(path)!r}: expected baseline.py's baselines.json (or its folder)")
    raw = json.loads(p.read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("tasks"), dict):
        raise ValueError(f"baseline results {str(p)!r}: expected an object with 'tasks' (task -> entry), got {type(raw).__name__}"
                         f"{' with keys ' + str(sorted(raw)) if isinstance(raw, dict) else ''}")
    return raw["tasks"]


def _fmt(b: Mapping[str, Any]) -> str:
    v = f"{b['value']:.4f}"
    return f"{v} ± {b['std']:.4f}" if "std" in b and b["std"] == b["std"] else v


def report_markdown(entries: Mapping[str, Mapping[str, Any]]) -> str:
    """One table over every task and baseline (best per task in bold), then what was skipped."""
    lines = ["## Simple baselines", "",
             "| task | protocol | baseline | metric | test value | validation | params | fit s |",
             "|---|---|---|---|---|---|---|---|"]
    skipped = []
    for task, e in entries.items():
        p = e["protocol"]
        proto = "split" if p["kind"] == "split" else f"{p['folds']}-fold x {p['repeats']} ({p.get('pooled_rows', '?')} rows)"
        best = (e.get("best") or {}).get("name")
        for name, b in e["baselines"].items():
            val = f"{b['validation']:.4f}" if "validation" in b else "-"
            params = ", ".join(f"{k}={v}" for k, v in b.get("params", {}).items() if not isinstance(v, list)) or "-"
            shown = f"**{_fmt(b)}**" if name == best else _fmt(b)
            lines.append(f"| {task} | {proto} | {name} | {b['metric']} | {shown} | {val} | {params} | {b['fit_seconds']:.1f} |")
        skipped += [f"- {task} {n}: {why}" for n, why in e.get("skipped", {}).items()]
    lines += ["", "Features: tasks/features.py; models and protocol: tasks/baselines.py. Test value: mean ± "
              "sample SD over folds x repeats for K-fold tasks. Bold: the task's best test value.", ""]
    if skipped:
        lines += ["Skipped:", *sorted(set(skipped)), ""]
    return "\n".join(lines)
