"""What parameter sharing does inside a trained HighMMT model (``python analyze.py``; docs/sharing-analysis.md).

- :mod:`analysis.involvement`: which neurons each task uses (HighMMT §3.3, Table 6).
- :mod:`analysis.conflict`: cosine similarity of per-task gradients on shared parameters (PCGrad).
- :mod:`analysis.interference`: one task's training labels shuffled during multitask training, the
  change of every other task's test metric (HighMMT Table 7), optionally with only one part trainable.

:mod:`analysis.common` opens a run folder and computes per-task gradients; :mod:`analysis.report`
writes each analysis's JSON, markdown table and heatmap.
"""
