"""Training methods: how a HighMMT model learns, apart from the model library (``highmmt/``).

Each method is one module behind the method protocol of :mod:`transference.hooks` (a
:class:`~transference.hooks.TrainHook` built from the run config by a registered factory);
``train.py`` and ``evaluate.py`` run whatever the config switches on. Importing this package
registers them all.

- ``config.py``         the training config (``train.*``) and the run config (model + training)
- ``schedules.py``      multitask schedules (which tasks give a batch at each step) and the lr schedule
- ``finetune.py``       transfer: loading a checkpoint, freezing policies, LoRA, layer-wise lr decay
- ``semisup.py``        unlabeled data: self-training, co-training, co-regularization
- ``colearn.py``        co-learning between two modalities (translation, contrastive)
- ``zeroshot.py``       zero-shot classification of classes never labeled for a modality
- ``heterogeneity.py``  heterogeneity-guided parameter sharing
- ``autotune.py``       precision choice and the optimizer

Imports run one way: transference -> tasks -> modalities -> highmmt.
"""

from transference import colearn, finetune, semisup, zeroshot  # noqa: F401  (register their hooks; finetune first)
