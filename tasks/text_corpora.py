"""Pang & Lee sentence corpora from NLTK: ``sentiment`` (sentence polarity) and ``subjectivity``.

Sources (under the data root): ``nltk/corpora/sentence_polarity.zip`` (``rt-polarity.pos`` 5,331
+ ``rt-polarity.neg`` 5,331 lines) and ``nltk/corpora/subjectivity.zip`` (``quote.tok.gt9.5000``
5,000 subjective + ``plot.tok.gt9.5000`` 5,000 objective lines), read in place with ``zipfile``;
one lower-cased, tokenised sentence per line, decoded as UTF-8 (latin-1 with a warning if that
fails). Empty lines are dropped.

Both tasks use the modality name ``text``, so they share one text embedder.

Split (``nltk/README.md``): concatenate positive-then-negative (subjective-then-objective), index
0..N-1 in that order, ``tr, rest = train_test_split(idx, test_size=0.2, stratify=y,
random_state=0)``, ``va, te = train_test_split(rest, test_size=0.5, stratify=y[rest],
random_state=0)`` with y = 1 for positive / subjective and 0 for negative / objective (this coding
reproduces the README's test counts, 533 positive / 534 negative). Rows keep file order within a
split. Polarity: 8,529 / 1,066 / 1,067; subjectivity: 8,000 / 1,000 / 1,000.

Columns: ``text`` (str), ``label`` (int64, 0/1 as above).
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
from sklearn.model_selection import train_test_split

from tasks._io import decode_text, make_dataset, open_zip, progress, read_member
from tasks.base import BuiltinTask, TaskSpec, register_task

# Bump when the built dataset changes for the same files and options (part of the cache key).
CODE_VERSION = "1"

# task name -> (zip under the data root, [(member, label)] in concatenation order, class names)
CORPORA = {
    "sentiment": (
        "nltk/corpora/sentence_polarity.zip",
        [("sentence_polarity/rt-polarity.pos", 1), ("sentence_polarity/rt-polarity.neg", 0)],
        ["negative", "positive"],
    ),
    "subjectivity": (
        "nltk/corpora/subjectivity.zip",
        [("subjectivity/quote.tok.gt9.5000", 1), ("subjectivity/plot.tok.gt9.5000", 0)],
        ["objective", "subjective"],
    ),
}


def read_sentences(path: Path, members: list[tuple[str, int]], quiet: bool) -> tuple[list[str], np.ndarray]:
    """All non-empty lines of ``members`` in order, and their labels."""
    texts: list[str] = []
    labels: list[int] = []
    with open_zip(path) as archive:
        names = set(archive.namelist())
        for member, label in progress(members, desc=f"reading {path.name}", quiet=quiet):
            if member not in names:
                raise ValueError(f"{path}: member {member!r} is missing; the zip holds {sorted(names)}")
            text = decode_text(read_member(archive, member, path), f"{path}: member {member!r}")
            lines = [line.strip() for line in text.split("\n")]
            lines = [line for line in lines if line]
            texts += lines
            labels += [label] * len(lines)
    return texts, np.array(labels, dtype=np.int64)


def split_indices(y: np.ndarray) -> dict[str, np.ndarray]:
    """Seeded stratified 80/10/10 split of 0..len(y)-1 (each split sorted)."""
    idx = np.arange(len(y))
    train, rest = train_test_split(idx, test_size=0.2, stratify=y, random_state=0)
    validation, test = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=0)
    return {"train": np.sort(train), "validation": np.sort(validation), "test": np.sort(test)}


def make_build(task: str):
    """The ``build(data_root, quiet=False)`` function of ``task`` (no preprocessing options)."""
    zip_file, members, _ = CORPORA[task]

    def build(data_root: Path, *, quiet: bool = False) -> datasets.DatasetDict:
        texts, y = read_sentences(Path(data_root) / zip_file, members, quiet)
        features = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("int64")})
        return datasets.DatasetDict({
            split: make_dataset({"text": [texts[i] for i in idx], "label": y[idx]}, features)
            for split, idx in split_indices(y).items()
        })

    build.__name__ = f"build_{task}"
    build.__doc__ = f"Build the {task!r} task (see the module docstring). Columns: text, label."
    return build


DESCRIPTIONS = {
    "sentiment": "sentence polarity of movie-review snippets (Pang & Lee 2005), seeded stratified 80/10/10",
    "subjectivity": "subjective vs objective movie sentences (Pang & Lee 2004), seeded stratified 80/10/10",
}

TASKS = {
    task: register_task(BuiltinTask(
        spec=TaskSpec(
            name=task,
            modalities={"text": "text"},
            modality_options={"text": {"tokenizer": "words", "max_len": 128, "bigrams": False, "positions": False, "wide": True,
                                       "wide_buckets": 2**20}},
            task_type="classification",
            num_classes=2,
            metric="accuracy",
            class_names=class_names,
            description=DESCRIPTIONS[task],
        ),
        source_files=[zip_file],
        build=make_build(task),
        options={},
        how_to_get=(
            f"put NLTK's {Path(zip_file).name} (nltk_data package corpora/{Path(zip_file).stem}) in "
            f"<data root>/{Path(zip_file).parent}/"
        ),
    ))
    for task, (zip_file, _, class_names) in CORPORA.items()
}
