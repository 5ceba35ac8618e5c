"""Linear models on the suite's text tokens: what the wide read-out could reach (docs/experiments.md, session 11).

For ``sentiment`` and ``subjectivity`` (their own splits), the set of each text's tokens as the suite's
text embedder makes them (``modalities.text.words``; optionally with word bigrams; unhashed, or hashed
into ``B`` ids as ``modalities.text.encode_words`` does; since session 19 optionally with each token's
character 3-5-grams, :func:`char_ngrams`), read by

- ``nb``: multinomial naive Bayes on the binarised bag (log-count ratios with smoothing 1, no class prior:
  both tasks are balanced), the decision the read-out's naive Bayes prior starts from
  (``train.wide_prior=naive_bayes``);
- ``lr``: logistic regression (scikit-learn, C = 1) on the binarised bag, what a read-out trained from zero
  tends to;
- ``nbsvm``: NB-SVM (Wang & Manning 2012: a linear SVM on the binarised bag scaled by the naive Bayes log-count
  ratios, no interpolation), C chosen on validation from :data:`NBSVM_C` (session 16: the literature's strongest
  from-scratch linear reference on sentence polarity, 0.794 under 10-fold cross-validation).

    python -m experiments.text_linear --data-root ../shared/data --output results/text_linear.json

Prints a markdown table of validation / test accuracy and writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

from modalities.text import hash_token, words
from tasks.text_corpora import make_build

FEATURES = {  # name -> (hash buckets, 0 = none; bigrams; character n-grams of each word, n in CHAR_NGRAMS)
    "words": (0, False, False),
    "words+bigrams": (0, True, False),
    "hashed 2^15 words (the deep path's ids)": (2**15, False, False),
    "hashed 2^20 words+bigrams (wide_buckets)": (2**20, True, False),
    "words+bigrams+char n-grams": (0, True, True),
}
CHAR_NGRAMS = (3, 4, 5)  # of "<word>", the word marked at both ends (fastText's subwords; session 19)


NBSVM_C = (0.01, 0.03, 0.1, 0.3, 1.0)


def nbsvm(x: dict[str, sparse.csr_matrix], y: dict[str, np.ndarray], r: np.ndarray) -> tuple[Any, dict[str, sparse.csr_matrix], float]:
    """A linear SVM on the bags scaled by ``r``, C chosen on validation: (model, scaled bags, C)."""
    scaled = {s: x[s].multiply(r).tocsr() for s in x}
    fits = {C: LinearSVC(C=C, max_iter=20000).fit(scaled["train"], y["train"]) for C in NBSVM_C}
    best = max(NBSVM_C, key=lambda C: (np.mean(fits[C].predict(scaled["validation"]) == y["validation"]), -C))
    return fits[best], scaled, best


def char_ngrams(word: str) -> list[str]:
    """The character n-grams (n in :data:`CHAR_NGRAMS`) of ``"<word>"``, each prefixed ``#`` so that no n-gram
    is also a word: ``"bad"`` -> ``#<ba``, ``#bad``, ``#ad>``, ``#<bad``, ``#bad>``, ``#<bad>``."""
    marked = f"<{word}>"
    return [f"#{marked[i:i + n]}" for n in CHAR_NGRAMS for i in range(len(marked) - n + 1)]


def tokens(text: str, bigrams: bool, chars: bool = False) -> list[str]:
    toks = words(text)
    out = toks + ([f"{a} {b}" for a, b in zip(toks, toks[1:])] if bigrams else [])
    return out + ([g for t in toks for g in char_ngrams(t)] if chars else [])


def binary_bags(texts: dict[str, list[str]], buckets: int, bigrams: bool, chars: bool = False) -> dict[str, sparse.csr_matrix]:
    """split -> [rows, ids] 0/1 matrix; unhashed ids are the training split's vocabulary (others dropped)."""
    if not buckets:
        vocab = {t: i for i, t in enumerate(sorted({t for s in texts["train"] for t in tokens(s, bigrams, chars)}))}
        index, size = (lambda t: vocab.get(t)), len(vocab)
    else:
        index, size = (lambda t: hash_token(t, buckets)), buckets
    out = {}
    for split, rows in texts.items():
        r, c = [], []
        for i, s in enumerate(rows):
            ids = {j for j in map(index, tokens(s, bigrams, chars)) if j is not None}
            r += [i] * len(ids)
            c += sorted(ids)
        out[split] = sparse.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(rows), size))
    return out


def naive_bayes(x: sparse.csr_matrix, y: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Log-count ratios r [ids] of a binary task: predict 1 where x @ r > 0."""
    p = alpha + np.asarray(x[y == 1].sum(0)).ravel()
    q = alpha + np.asarray(x[y == 0].sum(0)).ravel()
    return np.log(p / p.sum()) - np.log(q / q.sum())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--output", default="results/text_linear.json")
    args = ap.parse_args(argv)
    rows = []
    for task in ("sentiment", "subjectivity"):
        data = make_build(task)(Path(args.data_root), quiet=True)
        texts = {s: list(data[s]["text"]) for s in ("train", "validation", "test")}
        y = {s: np.asarray(data[s]["label"]) for s in texts}
        for name, (buckets, bigrams, chars) in FEATURES.items():
            started = time.time()
            x = binary_bags(texts, buckets, bigrams, chars)
            r = naive_bayes(x["train"], y["train"])
            lr = LogisticRegression(C=1.0, max_iter=3000).fit(x["train"], y["train"])
            svm, scaled, C = nbsvm(x, y, r)
            for model, predict in (("nb", lambda s: (x[s] @ r > 0).astype(int)), ("lr", lambda s: lr.predict(x[s])),
                                   (f"nbsvm (C={C})", lambda s: svm.predict(scaled[s]))):
                rows.append({"task": task, "features": name, "model": model,
                             **{s: float(np.mean(predict(s) == y[s])) for s in ("validation", "test")},
                             "seconds": round(time.time() - started, 1)})
    print("| task | features | model | validation | test |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['task']} | {row['features']} | {row['model']} | {row['validation']:.3f} | {row['test']:.3f} |")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(rows, indent=1))
    return {"rows": rows}


if __name__ == "__main__":
    main()
