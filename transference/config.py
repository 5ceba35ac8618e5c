"""Training configuration: what ``train.py`` and the methods in ``transference/`` read (``train.*``),
beside the model's config (:class:`highmmt.config.HighMMTConfig`) in one :class:`RunConfig`. Typed
``--set train.x=value`` overrides go through :func:`highmmt.config.apply_overrides`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Union

from highmmt.config import HighMMTConfig

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COLEARN_METHODS = ("none", "translation", "contrastive")
MISSING_SLOTS = ("auto", "translation", "zero", "none")
TRANSLATION_LOSSES = ("normalized_mse", "centered_mse")


def check_modality_pair(section: str, method: str, primary: str, secondary: str) -> None:
    """A two-modality method's ``train.<section>.primary`` and ``.secondary``: both named, and different."""
    if not primary or not secondary:
        raise ValueError(f"train.{section}.method={method} needs train.{section}.primary and train.{section}.secondary "
                         f"(modality names), got primary={primary!r}, secondary={secondary!r}")
    if primary == secondary:
        raise ValueError(f"train.{section}.primary and train.{section}.secondary must differ, both are {primary!r}")


@dataclass
class ColearnConfig:
    """Co-learning between two modalities of a task (``transference/colearn.py``; off while ``method`` is none).

    ``translation`` (Pham et al. 2019): a decoder maps the primary modality's latents to the secondary's
    (and back to the primary's when ``cyclic``); ``contrastive`` (CLIP / ALIGN): a symmetric InfoNCE
    loss at ``temperature`` aligns the two modalities' pooled, projected latents. ``weight`` scales the
    co-learning loss. ``tasks``: where it applies (empty: every task that reads both modalities).
    ``missing_slot``: what the head also learns to read in the secondary's slot, and what fills it when
    the secondary is missing (validation scores that primary-only path): ``translation`` (the
    translated latents), ``zero`` (a zero slot: modality dropout), ``none``; ``auto`` is
    ``translation`` for the translation method, else ``none``. ``supervise_secondary=false`` keeps the
    secondary out of the supervised forward: its labels are never used (cross-modal label transfer).
    ``translation_loss``: ``normalized_mse`` (MSE over the target's variance) or ``centered_mse`` (the
    same with the batch mean taken out, so the part of the target that depends on the sample is not
    drowned by the part that does not; see :func:`transference.colearn.centered_mse`).
    """

    method: str = "none"
    primary: str = ""
    secondary: str = ""
    tasks: list[str] = field(default_factory=list)
    weight: float = 1.0
    cyclic: bool = False
    temperature: float = 0.1
    detach_target: bool = True
    missing_slot: str = "auto"
    supervise_secondary: bool = True
    decoder_depth: int = 1
    proj_dim: int = 0
    translation_loss: str = "normalized_mse"

    def __post_init__(self) -> None:
        if self.method not in COLEARN_METHODS:
            raise ValueError(f"train.colearn.method must be one of {COLEARN_METHODS}, got {self.method!r}")
        if self.translation_loss not in TRANSLATION_LOSSES:
            raise ValueError(f"train.colearn.translation_loss must be one of {TRANSLATION_LOSSES}, got {self.translation_loss!r}")
        if self.missing_slot not in MISSING_SLOTS:
            raise ValueError(f"train.colearn.missing_slot must be one of {MISSING_SLOTS}, got {self.missing_slot!r}")
        if self.method == "none":
            return
        check_modality_pair("colearn", self.method, self.primary, self.secondary)
        if self.weight < 0.0:
            raise ValueError(f"train.colearn.weight must be >= 0, got {self.weight}")
        if self.temperature <= 0.0:
            raise ValueError(f"train.colearn.temperature must be > 0, got {self.temperature}")
        if self.decoder_depth < 1 or self.proj_dim < 0:
            raise ValueError(f"train.colearn.decoder_depth must be >= 1 and proj_dim >= 0 (0 = the model width), "
                             f"got {self.decoder_depth} and {self.proj_dim}")
        if self.method == "contrastive" and self.missing_slot == "translation":
            raise ValueError("train.colearn.missing_slot=translation needs method=translation (contrastive has no decoder)")


ZEROSHOT_METHODS = ("none", "contrastive")
ZEROSHOT_ALIGN_ROWS = ("all", "seen")


@dataclass
class ZeroShotConfig:
    """Zero-shot classification of classes never labeled for the primary modality (``transference/zeroshot.py``;
    off while ``method`` is none). Socher et al. 2013 / CLIP: a symmetric InfoNCE loss at ``temperature``
    (scaled by ``weight``) aligns the primary's and the secondary's pooled latents, projected to
    ``proj_dim`` (0: the model width), on paired rows of ``task`` (empty: the one trained task reading
    both). The primary's supervised loss sees only rows of the seen classes (``unseen_classes`` are
    taken out of its training and validation splits); primary rows of any class are classified by the
    nearest prototype of labeled secondary examples (``prototypes_per_class`` training rows per class,
    every class). ``align_rows``: the rows the alignment reads, without their labels: ``all`` training
    rows (unseen-class pairs included: transductive) or only the ``seen`` ones (inductive).
    """

    method: str = "none"
    primary: str = ""
    secondary: str = ""
    task: str = ""
    unseen_classes: list[int] = field(default_factory=list)
    align_rows: str = "all"
    weight: float = 1.0
    temperature: float = 0.1
    proj_dim: int = 0
    prototypes_per_class: int = 50
    align_batch_size: int = 0

    def __post_init__(self) -> None:
        if self.method not in ZEROSHOT_METHODS:
            raise ValueError(f"train.zeroshot.method must be one of {ZEROSHOT_METHODS}, got {self.method!r}")
        if self.align_rows not in ZEROSHOT_ALIGN_ROWS:
            raise ValueError(f"train.zeroshot.align_rows must be one of {ZEROSHOT_ALIGN_ROWS}, got {self.align_rows!r}")
        if self.method == "none":
            return
        check_modality_pair("zeroshot", self.method, self.primary, self.secondary)
        if not self.unseen_classes:
            raise ValueError("train.zeroshot.unseen_classes is empty: name the classes held out of the primary's labels, "
                             "e.g. train.zeroshot.unseen_classes=[7,8,9]")
        if any(c < 0 for c in self.unseen_classes) or len(set(self.unseen_classes)) != len(self.unseen_classes):
            raise ValueError(f"train.zeroshot.unseen_classes must be distinct class indices >= 0, got {self.unseen_classes}")
        if self.weight < 0.0 or self.temperature <= 0.0:
            raise ValueError(f"train.zeroshot.weight must be >= 0 and temperature > 0, got {self.weight} and {self.temperature}")
        if self.proj_dim < 0 or self.prototypes_per_class < 1 or self.align_batch_size < 0:
            raise ValueError(f"train.zeroshot.proj_dim must be >= 0 (0 = the model width), prototypes_per_class >= 1 and "
                             f"align_batch_size >= 0 (0 = the task's batch size), got {self.proj_dim}, "
                             f"{self.prototypes_per_class} and {self.align_batch_size}")


SEMI_METHODS = ("none", "self_training", "co_training", "co_regularization")
SEMI_PREDICT = ("views", "views+fused", "fused")
SEMI_VIEW_ENCODERS = ("separate", "shared")


@dataclass
class SemiConfig:
    """Learning from unlabeled data (``transference/semisup.py``): off while ``method`` is none and
    ``labeled_fraction`` is 1 (``method=none`` with a fraction < 1 is the supervised-only baseline).

    ``labeled_fraction`` keeps labels for a stratified, seeded fraction of each training split (at least
    one row per class; ``train.py --labeled-fraction``); the other rows, and a bring-your-own task's
    ``unlabeled`` split, are the unlabeled pool. ``tasks``: classification tasks it applies to (empty:
    all). ``views``: two views of a task for co-training / co-regularization, ``"a+b|c"`` over modality
    names or kinds, one string for every task or ``{task: "a|b"}`` (empty: first modality | the rest).
    Pseudo-labeling rounds start after ``warmup_epochs`` and repeat every ``epochs_per_round``; each
    labels at most ``round_fraction`` of the initial pool (per view for co-training), only predictions
    of confidence >= ``threshold``, top-confidence first (per predicted class when ``class_balance``),
    scoring at most ``score_limit`` pool rows (0: all). Self-training adds a consistency loss
    (``consistency_weight``) between clean and ``noise``-perturbed unlabeled inputs; co-regularization
    an agreement loss (``agreement_weight``) between the views. ``predict_with``: what co-trained tasks
    predict with (``views``: the views' ensemble, ``views+fused`` also the task's own head, ``fused``).
    ``view_encoders``: ``separate`` (Blum & Mitchell's two classifiers) gives each view's modalities
    their own encoder groups and fusion blocks, so the views share no parameter; ``shared`` keeps the
    model's sharing (``model.sharing``; by default one encoder for every modality, both views included).
    """

    method: str = "none"
    labeled_fraction: float = 1.0
    tasks: list[str] = field(default_factory=list)
    views: Union[str, dict[str, str]] = ""
    threshold: float = 0.9
    round_fraction: float = 0.1
    warmup_epochs: int = 1
    epochs_per_round: int = 1
    score_limit: int = 0
    class_balance: bool = True
    noise: float = 0.1
    consistency_weight: float = 1.0
    agreement_weight: float = 1.0
    unlabeled_batch_size: int = 0
    predict_with: str = "views"
    view_encoders: str = "separate"

    def __post_init__(self) -> None:
        if self.method not in SEMI_METHODS:
            raise ValueError(f"train.semi.method must be one of {SEMI_METHODS}, got {self.method!r}")
        if self.view_encoders not in SEMI_VIEW_ENCODERS:
            raise ValueError(f"train.semi.view_encoders must be one of {SEMI_VIEW_ENCODERS}, got {self.view_encoders!r}")
        if self.predict_with not in SEMI_PREDICT:
            raise ValueError(f"train.semi.predict_with must be one of {SEMI_PREDICT}, got {self.predict_with!r}")
        if not 0.0 < self.labeled_fraction <= 1.0:
            raise ValueError(f"train.semi.labeled_fraction must be in (0, 1], got {self.labeled_fraction}")
        if not 0.0 <= self.threshold <= 1.0 or not 0.0 < self.round_fraction <= 1.0:
            raise ValueError(f"train.semi.threshold must be in [0, 1] and round_fraction in (0, 1], "
                             f"got {self.threshold} and {self.round_fraction}")
        if self.warmup_epochs < 1 or self.epochs_per_round < 1:
            raise ValueError(f"train.semi.warmup_epochs and epochs_per_round must be >= 1, "
                             f"got {self.warmup_epochs} and {self.epochs_per_round}")
        for key in ("score_limit", "noise", "consistency_weight", "agreement_weight", "unlabeled_batch_size"):
            if getattr(self, key) < 0:
                raise ValueError(f"train.semi.{key} must be >= 0, got {getattr(self, key)}")


FINETUNE_POLICIES = ("full", "head", "embedders_head", "lora", "prefix")


@dataclass
class PrefixConfig:
    """Prefix tuning (``train.finetune=prefix``; Frozen, Tsimpoukelli et al. 2021; ``transference/finetune.py``).

    The ``--init-from`` model stays frozen, every parameter of it. The embedder of the prefix modality
    (a modality new to the checkpoint: a fresh embedder that trains; one the checkpoint has keeps its
    frozen embedder) is pooled and mapped to ``tokens`` prefix tokens, prepended to the token sequence
    of ``host``, a modality of the checkpoint, in front of the frozen encoder; with no host input the
    prefix tokens alone are the host's sequence. The task's head is the checkpoint's, frozen (task
    ``head_from``; "" = the checkpoint task of the same name, else the checkpoint's only task), or with
    ``new_head`` a new one that trains (other classes). ``modality``: the prefix modality ("" = the
    trained tasks' one modality new to the checkpoint; if none is new, their one modality besides the host).
    """

    host: str = ""
    modality: str = ""
    tokens: int = 2
    new_head: bool = False
    head_from: str = ""

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise ValueError(f"train.prefix.tokens must be >= 1, got {self.tokens}")
        if self.new_head and self.head_from:
            raise ValueError(f"train.prefix.head_from={self.head_from!r} reuses a checkpoint head; it contradicts "
                             "train.prefix.new_head=true (a new head): set one of them")
        if self.host and self.host == self.modality:
            raise ValueError(f"train.prefix.modality and train.prefix.host must differ, both are {self.host!r}")


#: TrainConfig's per-task dicts ({task: value}); a task they name must be one being trained
PER_TASK_SETTINGS = ("batch_sizes", "loss_weights", "eval_weights", "task_options", "task_min_fraction", "task_augment_time",
                     "task_mixup", "task_select_stacked")


@dataclass
class TrainConfig:
    """How to train (``train.py``). Per-task dicts are keyed by task name."""

    epochs: int = 10
    steps_per_epoch: int = 100
    strategy: str = "highmmt"
    temperature: float = 2.0
    min_task_fraction: float = 0.2
    # per-task overrides of min_task_fraction ({task: fraction}; the highmmt schedule)
    task_min_fraction: dict[str, float] = field(default_factory=dict)
    batch_size: int = 32
    batch_sizes: dict[str, int] = field(default_factory=dict)
    loss_weights: dict[str, float] = field(default_factory=dict)
    eval_weights: dict[str, float] = field(default_factory=dict)
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    # auto: from the device's capabilities (transference/autotune.py); compile: torch.compile the model (see the README's
    # Speed section for when it pays on a CPU)
    precision: str = "auto"
    compile: bool = False
    eval_batch_size: int = 128
    max_eval_samples: int = 2000
    prefetch_workers: int = 1
    threads: int = 0
    task_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    train_fraction: float = 1.0
    augment_noise: float = 0.0
    # > 0: window warping of regular series and poses (train.py augment_time): each training sample is read through a
    # random window covering 1 - augment_time * U(0, 1) of its steps, stretched back over them.
    augment_time: float = 0.0
    # per-task overrides of augment_time ({task: strength}; 0 switches it off for that task)
    task_augment_time: dict[str, float] = field(default_factory=dict)
    # With this probability a training batch of a task that reads 2+ modalities loses one of them, drawn
    # uniformly (train.py drop_one_modality): each modality must also predict alone, as with a missing one.
    modality_dropout: float = 0.0
    # > 0: validation, the best checkpoint and evaluation use an exponential moving average of the model's
    # weights with this decay per optimizer step (torch.optim.swa_utils; 0 = off, the live weights).
    ema_decay: float = 0.0
    # Checkpoint choice: "mean" keeps one model.safetensors, the epoch with the best weighted mean of the tasks'
    # primary validation metrics; "task" also keeps, for each task, the weights of the epoch where that task's own
    # validation metric was best (task_weights/<task>.safetensors: what the task reads, nothing else), and
    # evaluate.py / predict.py score each task with its own (per-task early stopping of one training run) when its
    # validation split is large enough to choose on (select_min_rows).
    select: str = "mean"
    # train.select=task: a task whose validation split (as scored: at most max_eval_samples rows) has fewer rows
    # keeps the mean's checkpoint; a best-of-30-epochs accuracy on 10-100 rows is mostly noise (sd ~ 0.5/sqrt(rows)).
    select_min_rows: int = 500
    # {task: true}: that task's validation metric (what chooses its epoch, and its share of the mean's) is scored on its
    # output parts stacked with weights fitted on the validation rows at each validation (train.py stacked_outputs; as
    # train.part_weights=validation fits them after training, what the task is then scored with), not on their plain
    # sum as trained (every weight 1). For a task with two or more parts (HighMMT.part_names). Session 20 (pilot
    # SELSTACK, docs/experiments.md): on the multitask model's sentiment it chose epochs 8-21 instead of 2-4 and lost 0.011
    # on test over three seeds (a fit scored on the rows it was fitted on flatters the later epochs, whose parts disagree
    # more); off by default.
    task_select_stacked: dict[str, bool] = field(default_factory=dict)
    label_smoothing: float = 0.0  # classification losses in train.py (highmmt.heads.task_loss)
    mixup: float = 0.0  # manifold mixup at the encoder's output: lam ~ Beta(mixup, mixup) per batch; 0 = off (train.TaskLoss)
    task_mixup: dict[str, float] = field(default_factory=dict)  # per task, over mixup (0 = off for that task)
    # Heads with a wide read-out (a text embedder's ``wide`` option): the read-out's logits alone also get the task's
    # loss, times this weight (0 = only the sum of deep and wide outputs is trained). Trained only through the sum,
    # the wide part learns little: the deep path fits the training rows first and leaves it no gradient.
    wide_loss: float = 1.0
    # True: the wide read-outs learn from their own loss only (the one above); in the sum the task's loss is computed
    # on, their logits enter detached (train.TaskLoss). Their training then does not depend on how well the deep path
    # fits, which differs between a multitask and a single-task model; the deep path learns against them as before.
    wide_own_loss_only: bool = False
    # ... and the deep path's logits alone (the head's outputs less the wide read-outs and the modality heads) too, times
    # this weight (0 = off):
    # each part then learns the whole task, and the head's output is the sum of two whole predictors. In a multitask
    # model this keeps the text tasks training the encoder every modality shares, which a read-out that already fits
    # the text (wide_prior) would otherwise take away (docs/experiments.md, session 11, pilot DEEPMT: AV-MNIST, UTD-MHAD
    # and PhysioNet gain, the text tasks lose up to 0.005).
    deep_loss: float = 1.0
    # With ``model.modality_heads`` (late fusion: one head per modality of a multimodal task, on that modality's pooled
    # latents, added to the task's outputs), each modality head's logits alone also get the task's loss, times this
    # weight (0 = only through the sum): each modality must then predict the task by itself, as in a late fusion of
    # per-modality models.
    modality_loss: float = 1.0
    # After training, the weight of each part of a task's outputs (the fused head, the wide read-outs of a text head,
    # each modality head with ``model.modality_heads``; HighMMT.part_names) is fitted on the validation split
    # ("validation": stacking, highmmt.heads.fit_part_weights, its ridge toward equal weights chosen by cross-validation
    # on those rows; each task with the weights it is scored with) or left
    # at 1 ("none"). Acts on tasks with two or more parts (not regressions). A part that generalises badly to new rows
    # (a depth head near chance on unseen subjects) is weighed down instead of adding its noise to the sum, and a text
    # task's naive Bayes read-out and deep path get the mix that predicts held-out rows best.
    part_weights: str = "validation"
    # The wide read-outs' learning rate, as a multiple of ``lr``: a linear model on a sparse bag needs many more
    # passes at the model's lr than the deep path needs to peak, so at the deep path's best epoch it is still half-way.
    wide_lr_scale: float = 10.0
    # The wide read-outs' starting point: "naive_bayes" fits, before training, a fixed prior for the read-out of each
    # classification task: multinomial naive Bayes log-probabilities of the bag's ids on the task's training rows
    # (highmmt.heads.naive_bayes_prior, smoothing wide_prior_alpha). The trained weights add to it, and weight decay
    # pulls them toward it instead of toward zero. "none": the read-out starts at zero.
    wide_prior: str = "naive_bayes"
    wide_prior_alpha: float = 1.0
    bad_rows: str = "error"  # rows with a missing value or NaN/inf: "error" names them, "drop" leaves them out
    # Modality name -> embedder options merged over the task specs' (a ``backbone`` option makes the
    # modality a pretrained backbone, modalities/pretrained.py).
    modality_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    colearn: ColearnConfig = field(default_factory=ColearnConfig)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)  # zero-shot classes; see transference/zeroshot.py
    semi: SemiConfig = field(default_factory=SemiConfig)  # learning from unlabeled data; see transference/semisup.py
    # Transfer (--init-from): freezing policy, LoRA sizes, layer-wise lr decay (1.0 = off); see transference/finetune.py.
    finetune: str = "full"
    prefix: PrefixConfig = field(default_factory=PrefixConfig)  # train.finetune=prefix: host modality, k tokens, head
    lora_rank: int = 8
    lora_alpha: float = 16.0
    layer_decay: float = 1.0
    # Sharing analysis (analysis/interference.py): permute this task's training labels ("" = none), and train
    # only this part besides the heads ("" = every part; embedders | encoders | fusion; the rest stays at its start).
    shuffle_labels: str = ""
    train_only: str = ""

    def __post_init__(self) -> None:
        if self.train_only not in ("", "embedders", "encoders", "fusion"):
            raise ValueError(f"train.train_only must be '', 'embedders', 'encoders' or 'fusion', got {self.train_only!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        if self.select not in ("mean", "task"):
            raise ValueError(f"train.select must be 'mean' or 'task', got {self.select!r}")
        if self.select_min_rows < 1:
            raise ValueError(f"train.select_min_rows must be >= 1, got {self.select_min_rows}")
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError(f"train.modality_dropout must be in [0, 1), got {self.modality_dropout}")
        if self.augment_noise < 0.0:
            raise ValueError(f"train.augment_noise must be >= 0, got {self.augment_noise}")
        for name, value in [("augment_time", self.augment_time),
                            *((f"task_augment_time.{t}", v) for t, v in self.task_augment_time.items())]:
            if not 0.0 <= value < 1.0:
                raise ValueError(f"train.{name} must be in [0, 1) (the largest share of a series a window drops), "
                                 f"got {value}")
        for name, value in [("min_task_fraction", self.min_task_fraction),
                            *((f"task_min_fraction.{t}", v) for t, v in self.task_min_fraction.items())]:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"train.{name} must be in [0, 1], got {value}")
        if self.task_min_fraction and self.strategy != "highmmt":
            raise ValueError(f"train.task_min_fraction is a floor of the 'highmmt' schedule's active steps; strategy "
                             f"{self.strategy!r} draws or cycles one task per step and has none")
        if self.bad_rows not in ("error", "drop"):
            raise ValueError(f"train.bad_rows must be 'error' or 'drop', got {self.bad_rows!r}")
        for name, value in [("mixup", self.mixup), *((f"task_mixup.{t}", v) for t, v in self.task_mixup.items())]:
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"train.{name} is the Beta(a, a) parameter of mixup's weights (a finite number >= 0; "
                                 f"0 = off), got {value}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.wide_loss < 0.0 or self.deep_loss < 0.0 or self.modality_loss < 0.0:
            raise ValueError(f"train.wide_loss, train.deep_loss and train.modality_loss must be >= 0, got "
                             f"{self.wide_loss}, {self.deep_loss}, {self.modality_loss}")
        if self.part_weights not in ("none", "validation"):
            raise ValueError(f"train.part_weights must be 'none' or 'validation', got {self.part_weights!r}")
        if self.wide_own_loss_only and self.wide_loss <= 0.0:
            raise ValueError("train.wide_own_loss_only=true needs train.wide_loss > 0: the wide read-outs would not learn")
        if self.wide_prior not in ("none", "naive_bayes"):
            raise ValueError(f"train.wide_prior must be 'none' or 'naive_bayes', got {self.wide_prior!r}")
        if self.wide_prior_alpha <= 0.0:
            raise ValueError(f"train.wide_prior_alpha must be > 0, got {self.wide_prior_alpha}")
        if self.wide_lr_scale <= 0.0:
            raise ValueError(f"train.wide_lr_scale must be > 0, got {self.wide_lr_scale}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.epochs < 1 or self.steps_per_epoch < 1 or self.batch_size < 1:
            raise ValueError("train.epochs, train.steps_per_epoch and train.batch_size must be >= 1")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ValueError(f"train.train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.finetune not in FINETUNE_POLICIES:
            raise ValueError(f"train.finetune must be one of {FINETUNE_POLICIES}, got {self.finetune!r}")
        if self.finetune == "prefix" and not self.prefix.host:
            raise ValueError("train.finetune=prefix needs train.prefix.host: the checkpoint's modality whose token "
                             "sequence the prefix tokens are prepended to")
        if self.lora_rank < 1 or self.lora_alpha <= 0:
            raise ValueError(f"train.lora_rank must be >= 1 and train.lora_alpha > 0, got {self.lora_rank} and {self.lora_alpha}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"train.layer_decay must be in (0, 1] (1.0 = off), got {self.layer_decay}")


@dataclass
class RunConfig:
    """A preset / a run's resolved config: model sizes + training. ``model.modalities`` and
    ``model.tasks`` are filled from the task specs at run time."""

    model: HighMMTConfig = field(default_factory=HighMMTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


__all__ = [
    "COLEARN_METHODS",
    "FINETUNE_POLICIES",
    "MISSING_SLOTS",
    "TRANSLATION_LOSSES",
    "PRECISIONS",
    "PrefixConfig",
    "SEMI_METHODS",
    "SEMI_PREDICT",
    "ColearnConfig",
    "RunConfig",
    "SemiConfig",
    "TrainConfig",
    "ZEROSHOT_ALIGN_ROWS",
    "ZEROSHOT_METHODS",
    "ZeroShotConfig",
]
