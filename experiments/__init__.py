"""Research studies: each trains ordinary ``train.py`` runs, scores them with ``evaluate.py`` and
writes a JSON + markdown report (default ``experiments/results/<study>/``). Run one with
``python -m experiments.<study> --help``.

- ``suite_results``  the suite: multitask vs single-task runs over seeds (docs/results.md)
- ``transfer``       learning curves of transfer to a new task (docs/transfer.md)
- ``colearn``        co-learning between two modalities (docs/colearning.md)
- ``semisup``        learning from unlabeled data (docs/semisupervised.md)
- ``pretrained``     pretrained backbones and adapters (docs/pretrained.md)
- ``heterogeneity``  heterogeneity matrices and sharing groups; ``sharing`` compares the configurations (docs/heterogeneity.md)
- ``robot_cv``       robot-failure tasks by cross-validation
- ``compare_runs``, ``curves``  two sets of runs compared; training vs validation curves

Speed and data benchmarks live in ``benchmarks/``; the statistics and report helpers they share
are in ``benchmarks/common.py``.
"""
