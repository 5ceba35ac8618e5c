"""Text embedder with two download-free tokenizers: UTF-8 bytes (default) or hashed words.

One sample: ``str``. Batch (from ``collate``): ``x`` [b, n] int64 ids, ``mask`` [b, n] bool (True = real token)
(+ ``wide`` [b, m], below).
``collate`` must be given the embedder's options (the task loader passes them) so it tokenises the same
way as the embedder: ``tokenizer`` picks the ids, ``max_len`` truncates early.

``tokenizer: "bytes"`` (default, what older configs mean): ``encode`` maps a text to its UTF-8 bytes, ids
0..255; ``PAD_ID`` = 256 pads; ``decode(encode(s)) == s`` for any string. Table ``Embedding(VOCAB_SIZE, d)``.

``tokenizer: "words"``: ``words`` splits the lower-cased text into regex tokens ``\\w+|[^\\w\\s]`` (words and
single punctuation marks); ``encode_words`` interleaves them with the bigrams of adjacent tokens,
``w0, w0 w1, w1, w1 w2, w2, ...`` (k tokens give 2k - 1 ids, so truncation keeps a prefix of the text), and
hashes each string with ``hash_token``: CRC-32 of its UTF-8 bytes mod (``buckets`` - 1), plus 1. The hash is
stable across processes and machines (never Python's salted ``hash``); id 0 (``WORD_PAD_ID``) pads.
Table ``Embedding(buckets, d, padding_idx=0)``; ``buckets`` defaults to 2**15.

Tokens (both tokenizers): table row + fixed sinusoidal position of the token's index; texts longer than
``max_len`` tokens keep their first ``max_len``. An empty string gives one (padding) token, kept real so
attention has something to read.

``bag=True`` appends one more token: the mean of the text's token rows (before positions) plus a learned
marker, i.e. the pooled bag of words a fastText classifier reads (Joulin et al. 2017), handed to the
encoder beside the tokens it attends over.

``wide=True`` also hands each task's head the text's set of token ids as a
sparse bag (``wide_bag``: each distinct id once, weight 1/sqrt(number of distinct ids)), which the head
reads with a linear layer of its own beside the encoder: the wide part of Wide & Deep (Cheng et al.
2016), i.e. a logistic regression on the bag of hashed words trained jointly with the model. With the
``"bytes"`` tokenizer the bag is the text's set of distinct bytes (wide id = byte + 1), which says little.
``wide_buckets`` > 0 gives the bag ids of its own: ``collate`` adds ``wide`` [b, m] int64, the words and
word bigrams of the text's first ``max_len`` words hashed into ``wide_buckets`` ids (0 pads), whatever the
tokenizer; a linear read-out loses less to hash collisions in a larger space than the deep path's table
could afford (``wide_buckets_for`` sizes it for a number of classes). The read-out's starting point, a
naive Bayes fit of the training rows, is a training option (``train.wide_prior``; highmmt/heads.py).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from highmmt.embedder import Batch, Embedder, sinusoidal_positions
from highmmt.registry import EMBEDDERS
from modalities._common import append_token, batch_mask, finish, nonempty, pad_stack, positive_int, who

PAD_ID = 256
VOCAB_SIZE = 257
TOKENIZERS = ("bytes", "words")
DEFAULT_BUCKETS = 2**15
WORD_PAD_ID = 0
WORD_PATTERN = re.compile(r"\w+|[^\w\s]")


def encode(text: str) -> list[int]:
    """str -> byte ids (0..255)."""
    return list(text.encode("utf-8"))


def decode(ids: Iterable[int]) -> str:
    """Byte ids -> str; special ids are dropped, broken UTF-8 (e.g. cut by truncation) becomes U+FFFD."""
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens: ``"Not bad!"`` -> ``["not", "bad", "!"]``."""
    return WORD_PATTERN.findall(text.lower())


def hash_token(token: str, buckets: int) -> int:
    """A token (or ``"a b"`` bigram) -> id in 1..buckets-1, the same in every process."""
    return zlib.crc32(token.encode("utf-8")) % (buckets - 1) + 1


def encode_words(text: str, buckets: int = DEFAULT_BUCKETS, bigrams: bool = True) -> list[int]:
    """str -> hashed ids of its tokens interleaved with their bigrams: w0, w0 w1, w1, w1 w2, w2, ...
    (``bigrams=False``: the tokens alone)."""
    return encode_tokens(words(text), buckets, bigrams)


def encode_tokens(toks: Sequence[str], buckets: int = DEFAULT_BUCKETS, bigrams: bool = True) -> list[int]:
    """``encode_words`` of text already split by ``words``."""
    ids = []
    for i, tok in enumerate(toks):
        if i > 0 and bigrams:
            ids.append(hash_token(f"{toks[i - 1]} {tok}", buckets))  # tokens hold no spaces: no clash
        ids.append(hash_token(tok, buckets))
    return ids


def wide_buckets_for(outputs: int, budget: int = 2**21, most: int = 2**20, least: int = 2**15) -> int:
    """Hash ids for a wide read-out of ``outputs`` logits: the largest power of two whose table (ids x
    outputs numbers) fits ``budget``, between ``least`` and ``most`` (2 classes: 2^20; 10: 2^17)."""
    if outputs < 1:
        raise ValueError(f"a wide read-out needs at least one output, got {outputs}")
    return max(least, min(most, 1 << ((budget // outputs).bit_length() - 1)))


def tokenizer_option(value: Any) -> str:
    if value not in TOKENIZERS:
        raise ValueError(f"text embedder: option 'tokenizer' must be one of {list(TOKENIZERS)}, got {value!r}")
    return value


def buckets_option(value: Any) -> int:
    buckets = positive_int("text", "buckets", value)
    if buckets < 2:
        raise ValueError(f"text embedder: option 'buckets' must be at least 2 (id 0 pads), got {value!r}")
    return buckets


@EMBEDDERS.register("text")
class TextEmbedder(Embedder):
    """Byte or hashed-word embedding of strings.

    Args:
        name: the modality's name.
        dim: token width d.
        max_len: tokens kept per text.
        tokenizer: ``"bytes"`` (UTF-8 bytes) or ``"words"`` (hashed words and bigrams).
        buckets: hash buckets (table rows) of the ``"words"`` tokenizer, id 0 included; unused for bytes.
        bigrams: the ``"words"`` tokenizer interleaves bigrams with the words (default) or not.
        positions: add the sinusoidal position of each token (default); without, a text is a bag of
            its tokens, as TF-IDF sees it.
        bag: append one token, the mean of the text's token rows plus a learned marker (a pooled bag of
            words; off by default).
        wide: hand each head the bag of the text's distinct token ids for a linear read-out of its own
            (Wide & Deep; off by default; meant for the ``"words"`` tokenizer).
        wide_buckets: with ``wide``, > 0 gives the wide bag its own hash space: the text's words and word
            bigrams (of its first ``max_len`` words, whatever the tokenizer) hashed into this many ids. The
            deep path's ids need few buckets (each is a ``dim``-wide row); a linear read-out has ``classes``
            numbers per id and loses less to collisions in a larger space. 0 (default): the token ids.
    """

    kind = "text"

    def __init__(
        self,
        *,
        name: str,
        dim: int,
        max_len: int = 256,
        tokenizer: str = "bytes",
        buckets: int = DEFAULT_BUCKETS,
        bigrams: bool = True,
        positions: bool = True,
        bag: bool = False,
        wide: bool = False,
        wide_buckets: int = 0,
    ) -> None:
        super().__init__(name=name, dim=dim)
        for option, value in (("bigrams", bigrams), ("positions", positions), ("bag", bag), ("wide", wide)):
            if not isinstance(value, bool):
                raise ValueError(f"text embedder: option {option!r} must be true or false, got {value!r}")
        self.bigrams, self.positions = bigrams, positions
        self.bag_marker = nn.Parameter(torch.randn(dim) * 0.02) if bag else None
        self.max_len = positive_int(self.kind, "max_len", max_len)
        self.tokenizer = tokenizer_option(tokenizer)
        self.buckets = buckets_option(buckets)
        if self.tokenizer == "bytes":
            self.vocab_size, self.pad_id = VOCAB_SIZE, PAD_ID
            self.token_embed = nn.Embedding(VOCAB_SIZE, dim)
        else:
            self.vocab_size, self.pad_id = self.buckets, WORD_PAD_ID
            self.token_embed = nn.Embedding(self.buckets, dim, padding_idx=WORD_PAD_ID)
        if not isinstance(wide_buckets, int) or isinstance(wide_buckets, bool) or wide_buckets < 0 or wide_buckets == 1:
            raise ValueError(f"text embedder: option 'wide_buckets' must be 0 (the token ids) or an integer >= 2, got {wide_buckets!r}")
        if wide_buckets and not wide:
            raise ValueError("text embedder: option 'wide_buckets' needs 'wide': true")
        self.wide_buckets = wide_buckets
        own = wide_buckets or (self.buckets if self.tokenizer == "words" else VOCAB_SIZE)  # bytes: id + 1
        self.wide_size = own if wide else 0

    @classmethod
    def collate(cls, samples: Sequence[Any], **options: Any) -> Batch:
        """samples: strings -> ``x`` [b, n] int64 ids (the tokenizer's pad id after the end), ``mask`` [b, n].

        ``options`` are the embedder's options: ``tokenizer`` (default ``"bytes"``) and ``buckets`` pick
        the ids, ``max_len`` truncates here.
        """
        nonempty(cls.kind, samples)
        max_len = options.get("max_len")
        max_len = None if max_len is None else positive_int(cls.kind, "max_len", max_len)
        tokenizer = tokenizer_option(options.get("tokenizer", "bytes"))
        buckets = buckets_option(options.get("buckets", DEFAULT_BUCKETS))
        bigrams = options.get("bigrams", True)
        ids = []
        for i, s in enumerate(samples):
            if not isinstance(s, str):
                raise TypeError(f"{cls.kind} sample {i}: expected a str, got {type(s).__name__}")
            row = encode(s) if tokenizer == "bytes" else encode_words(s, buckets, bigrams=bool(bigrams))
            ids.append(np.asarray(row[:max_len], dtype=np.int64))
        pad = PAD_ID if tokenizer == "bytes" else WORD_PAD_ID
        x, mask = pad_stack(cls.kind, ids, dtype=np.int64, pad_value=pad)
        batch = {"x": x, "mask": mask}
        wide_buckets = options.get("wide_buckets") or 0
        if wide_buckets:  # the wide bag's own ids: words and bigrams of the first max_len words
            wide_buckets = buckets_option(wide_buckets)
            wide = [np.asarray(encode_tokens(words(s)[:max_len], wide_buckets), dtype=np.int64) for s in samples]
            batch["wide"] = pad_stack(cls.kind, wide, dtype=np.int64, pad_value=WORD_PAD_ID)[0]
        return batch

    def ids(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """The checked ids [b, n] (pad id where masked) and mask [b, n], cut to ``max_len``."""
        x = batch["x"]
        self.check_rank(x, 2, f"[b, n] ({self.tokenizer} ids)")
        if torch.is_floating_point(x) or torch.is_complex(x) or x.dtype == torch.bool:
            raise TypeError(f"{who(self)}: expected integer {self.tokenizer} ids, got {x.dtype}")
        b, n = x.shape
        mask = batch_mask(self, batch, (b, n))
        x = torch.where(mask, x, torch.full_like(x, self.pad_id))
        if bool(((x < 0) | (x >= self.vocab_size)).any()):
            raise ValueError(
                f"{who(self)}: {self.tokenizer} ids must lie in 0..{self.vocab_size - 1}, "
                f"got min {int(x.min())} max {int(x.max())}"
            )
        return x[:, : self.max_len].long(), mask[:, : self.max_len]

    def embed(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """``x`` [b, n] int ids (+ ``mask`` [b, n]) -> tokens [b, n, d], mask [b, n] (n <= max_len, one more with ``bag``)."""
        x, mask = self.ids(batch)
        tokens = self.token_embed(x)
        rows = tokens
        if self.positions:
            tokens = tokens + sinusoidal_positions(tokens.shape[1], self.dim, device=x.device, dtype=tokens.dtype)
        if self.bag_marker is not None:
            weights = mask.unsqueeze(-1).to(rows.dtype)
            bag = (rows * weights).sum(1) / weights.sum(1).clamp_min(1.0)
            tokens, mask = append_token(tokens, mask, (bag + self.bag_marker).unsqueeze(1))
        return finish(tokens, mask)

    def wide_bag(self, inputs: Tensor | Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The text's distinct word ids [b, n] (0 = repeat or padding) and weights [b, n]: 1/sqrt(k) on
        each of its k distinct ids (a text of no words has none), 0 elsewhere."""
        if not self.wide_size:
            return super().wide_bag(inputs)
        batch = self.as_batch(inputs)
        if self.wide_buckets:
            x = batch.get("wide")
            if x is None:
                raise ValueError(f"{who(self)}: option wide_buckets={self.wide_buckets} needs the batch's 'wide' ids "
                                 f"(collate with the embedder's options), got keys {sorted(batch)}")
            self.check_rank(x, 2, "[b, n] (wide ids)")
            if torch.is_floating_point(x) or bool(((x < 0) | (x >= self.wide_buckets)).any()):
                raise ValueError(f"{who(self)}: wide ids must be integers in 0..{self.wide_buckets - 1}")
            x = x.long()
        else:
            x, mask = self.ids(batch)
            if self.tokenizer == "bytes":  # byte b is wide id b + 1, so that 0 pads as for words
                x = torch.where(mask, x + 1, torch.zeros_like(x))
        x = x.sort(dim=1).values
        first = x != 0
        first[:, 1:] &= x[:, 1:] != x[:, :-1]
        count = first.sum(1, keepdim=True).clamp_min(1)
        return torch.where(first, x, torch.zeros_like(x)), first.float() / count.float().sqrt()
