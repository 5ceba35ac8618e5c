"""The data layer: find the data root, build a task once, cache it, hand out canonical samples.

``load_task`` turns a task name (a registered :class:`~tasks.base.BuiltinTask`) or the path of a
bring-your-own spec file into a :class:`LoadedTask`: the spec plus a ``datasets.DatasetDict`` with
splits ``train`` / ``validation`` / ``test``.

Built-in tasks are parsed once from their source files and written with ``save_to_disk`` under
``<cache_dir>/<task>-<key>``; later runs memory-map that folder in seconds. The key hashes the task
name, the task module's ``CODE_VERSION``, the options (defaults merged with the user's) and the
relative path, size and content digest (xxh3) of every source file, so editing a file (even one that
keeps its size and mtime), changing an option or bumping ``CODE_VERSION`` builds a new cache. The
cache is written to a temporary folder beside the final one and renamed into place, so a crash never
leaves a half-written cache behind; its ``highmmt_manifest.json`` holds each file's digest, checked on
every load, and a cache whose bytes changed (a same-size corruption) is rebuilt with a warning.

A missing source file is downloaded into the data root only when the task names an official public
copy of it (``BuiltinTask.downloads``: URL and SHA-256) and every other missing file has one too;
most shipped files are documented derivatives or repackagings of the publishers' files (see each
data folder's README) and must be placed by hand. ``download=False`` or ``$HIGHMMT_OFFLINE=1``
turns downloads off. Otherwise, or when a download fails, the error is a ``FileNotFoundError``
saying which file to place where (and why the download failed).

``rows_to_samples`` is what a data loader calls: one Arrow gather for a batch of row indices, then
per-modality lists of samples in their kind's canonical format (see ``tasks/base.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import os
import shutil
import sys
import time
import uuid
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from datasets.table import InMemoryTable

from highmmt.registry import TASKS
from tasks.base import BuiltinTask, TaskSpec
from tasks.byo import load_byo_spec
from tasks.splits import check_splits

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
# Bump when the cache folder layout or the key recipe changes (2: source content digests, manifest).
CACHE_FORMAT = 2
# A temporary build folder older than this is a leftover of a killed process.
STALE_TMP_SECONDS = 6 * 3600


@dataclass
class LoadedTask:
    """A task ready to train on.

    Args:
        spec: the task spec.
        splits: ``train`` / ``validation`` / ``test``.
        source: ``"built"`` (parsed now and cached), ``"cache"`` (read from the cache) or
            ``"spec"`` (a bring-your-own data set, read in place).
        path: the cache folder, or the bring-your-own data folder.
        options: the preprocessing options used (defaults merged with the user's).
    """

    spec: TaskSpec
    splits: datasets.DatasetDict
    source: str
    path: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)


def resolve_data_root(data_root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: the argument, else ``$HIGHMMT_DATA``, else ``./data``."""
    if data_root is not None and str(data_root) != "":
        return Path(data_root).expanduser()
    env = os.environ.get("HIGHMMT_DATA")
    if env:
        return Path(env).expanduser()
    return Path("data")


def run_data_paths(recorded: Mapping[str, Any], data_root: str | os.PathLike[str] | None = None,
                   cache_dir: str | os.PathLike[str] | None = None) -> tuple[str | None, str | None]:
    """(data root, cache folder) for reading a training run's tasks again: the argument, else None where
    ``$HIGHMMT_DATA`` / ``$HIGHMMT_CACHE`` is set (:func:`load_task` reads it), else the folder the run recorded in
    its ``config.json`` (``recorded``: ``data_root``, ``cache_dir``) where that folder still exists, else None (the
    defaults)."""

    def pick(given: str | os.PathLike[str] | None, env: str, key: str) -> str | None:
        if given is not None and str(given) != "":
            return str(given)
        saved = recorded.get(key)
        return str(saved) if not os.environ.get(env) and saved and Path(saved).is_dir() else None

    return pick(data_root, "HIGHMMT_DATA", "data_root"), pick(cache_dir, "HIGHMMT_CACHE", "cache_dir")


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: the argument, else ``$HIGHMMT_CACHE``, else ``~/.cache/highmmt``."""
    if cache_dir is not None and str(cache_dir) != "":
        return Path(cache_dir).expanduser()
    env = os.environ.get("HIGHMMT_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "highmmt"


def is_spec_path(task: str | os.PathLike[str]) -> bool:
    """Whether ``task`` names a bring-your-own spec file rather than a registered task."""
    if isinstance(task, os.PathLike):
        return True
    return str(task).lower().endswith(SPEC_SUFFIXES) or os.sep in str(task)


def load_task(
    task: str | os.PathLike[str],
    *,
    data_root: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    options: Mapping[str, Any] | None = None,
    quiet: bool = False,
    download: bool = True,
) -> LoadedTask:
    """Load a built-in task (through the cache) or a bring-your-own spec file.

    Args:
        task: a registered task name (``"utd_mhad"``) or the path of a ``.yaml``/``.yml``/``.json`` spec.
        data_root: where built-in tasks' files live (see :func:`resolve_data_root`).
        cache_dir: where parsed built-in tasks are cached (see :func:`resolve_cache_dir`).
        options: preprocessing options of a built-in task, merged over its defaults.
        quiet: no progress bars.
        download: fetch missing source files that the task can download (see the module docstring);
            ``$HIGHMMT_OFFLINE=1`` turns this off whatever the argument says.
    """
    if is_spec_path(task):
        if options:
            raise ValueError(f"task spec {str(task)!r}: options {sorted(options)} are only for built-in tasks")
        with progress_bars(not quiet):
            spec, splits, path = load_byo_spec(task, return_path=True)
        return LoadedTask(spec=spec, splits=splits, source="spec", path=path)
    builtin: BuiltinTask = TASKS.get(str(task))
    return _load_builtin(builtin, data_root=resolve_data_root(data_root), cache_dir=resolve_cache_dir(cache_dir),
                         options=options or {}, quiet=quiet, download=download and not is_offline())


def is_offline() -> bool:
    """Whether ``$HIGHMMT_OFFLINE`` is set to a true value (``1``, ``true``, ``yes``, ``on``)."""
    return os.environ.get("HIGHMMT_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


# ----------------------------------------------------------------------------------------------
# built-in tasks: options, missing files, cache key, atomic cache writes


def merge_options(builtin: BuiltinTask, options: Mapping[str, Any]) -> dict[str, Any]:
    """The task's default options with the user's on top; an unknown key is an error."""
    unknown = sorted(set(options) - set(builtin.options))
    if unknown:
        known = ", ".join(sorted(builtin.options)) or "(none)"
        raise ValueError(f"task {builtin.spec.name!r}: unknown option(s) {unknown}; known: {known}")
    return {**builtin.options, **options}


def check_source_files(builtin: BuiltinTask, data_root: Path, *, download_note: str = "") -> None:
    """Raise ``FileNotFoundError`` naming every missing file, where it should be and how to get it.

    A missing file the task can download is listed with its URL; ``download_note`` (why nothing
    was downloaded) ends the message.
    """
    missing = [rel for rel in builtin.source_files if not (data_root / rel).exists()]
    if not missing:
        return
    listed = "\n".join(
        f"  {data_root / rel}" + (f"  (official copy: {builtin.downloads[rel][0]})" if rel in builtin.downloads else "")
        for rel in missing
    )
    raise FileNotFoundError(
        f"task {builtin.spec.name!r}: {len(missing)} source file(s) missing under the data root "
        f"{str(data_root)!r} (searched: --data-root, else $HIGHMMT_DATA, else ./data):\n{listed}\n"
        f"{builtin.how_to_get}\n{download_note}".rstrip()
    )


def download_missing_files(builtin: BuiltinTask, data_root: Path, *, enabled: bool, quiet: bool) -> str:
    """Download the task's missing source files when it can download all of them.

    Returns ``""`` when nothing is missing or everything was downloaded, else a sentence saying
    why the missing files are still missing (for :func:`check_source_files`).
    """
    missing = [rel for rel in builtin.source_files if not (data_root / rel).exists()]
    if not missing or not builtin.downloads:
        return ""
    if not enabled:
        return ("Automatic download is off (download=False or $HIGHMMT_OFFLINE=1): fetch each file from the URL "
                "listed beside it to the path shown, or allow downloads.")
    manual = [rel for rel in missing if rel not in builtin.downloads]
    if manual:
        return (f"Not downloading anything: {len(manual)} of the missing files ({', '.join(manual)}) have no official "
                f"single-file copy and must be placed by hand; the others are downloaded once those are in place.")
    from tasks.download import download

    for rel in missing:
        url, sha256 = builtin.downloads[rel]
        try:
            download(url, data_root / rel, sha256, quiet=quiet)
        except (OSError, ValueError) as e:  # no network, HTTP error, bad checksum, unwritable data root
            return f"Automatic download failed: {e}"
    return ""


def _source_stats(builtin: BuiltinTask, data_root: Path) -> list[tuple[str, int, str]]:
    """(relative path, size, content digest) of every source file; folders are walked recursively.

    The digest is of the bytes, not the modification time: an edit that keeps size and mtime
    (``cp -p``, ``rsync -t``) still changes the key, and a ``touch`` does not rebuild anything.
    """
    stats = []
    for rel in builtin.source_files:
        top = data_root / rel
        paths = sorted(p for p in top.rglob("*") if p.is_file()) if top.is_dir() else [top]
        for p in paths:
            stats.append((p.relative_to(data_root).as_posix(), p.stat().st_size, file_digest(p)))
    return stats


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    """xxh3-128 of a file's bytes (hex): ~10 GB/s, enough to tell any change, not a cryptographic hash."""
    import xxhash

    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


MANIFEST = "highmmt_manifest.json"


def write_manifest(folder: Path) -> None:
    """Record the digest of every file of a saved cache folder (checked on each load)."""
    files = {p.relative_to(folder).as_posix(): file_digest(p) for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps(files, indent=1, sort_keys=True))


def verify_manifest(folder: Path) -> None:
    """Raise ``ValueError`` naming the first cache file whose bytes changed since it was written."""
    path = folder / MANIFEST
    if not path.is_file():
        raise ValueError(f"{path} is missing (a cache written by an older version, or damaged)")
    for rel, digest in json.loads(path.read_text()).items():
        f = folder / rel
        if not f.is_file():
            raise ValueError(f"{f} is missing")
        if file_digest(f) != digest:
            raise ValueError(f"{f} changed since the cache was written (its content digest differs)")


def code_version(builtin: BuiltinTask) -> str:
    """The ``CODE_VERSION`` constant of the module that defines the task's ``build``."""
    module = sys.modules.get(getattr(builtin.build, "__module__", ""), None)
    return str(getattr(module, "CODE_VERSION", "0"))


def cache_key(builtin: BuiltinTask, data_root: Path, options: Mapping[str, Any]) -> str:
    """A 16-hex-digit key over the task name, code version, options and source file stats."""
    payload = {
        "format": CACHE_FORMAT,
        "task": builtin.spec.name,
        "code_version": code_version(builtin),
        "options": options,
        "files": _source_stats(builtin, data_root),
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _load_builtin(
    builtin: BuiltinTask, *, data_root: Path, cache_dir: Path, options: Mapping[str, Any], quiet: bool,
    download: bool = True,
) -> LoadedTask:
    spec = builtin.spec
    merged = merge_options(builtin, options)
    note = download_missing_files(builtin, data_root, enabled=download, quiet=quiet)
    check_source_files(builtin, data_root, download_note=note)
    key = cache_key(builtin, data_root, merged)
    final = cache_dir / f"{spec.name}-{key}"
    with progress_bars(not quiet):
        if final.exists():
            try:
                verify_manifest(final)
                splits = datasets.load_from_disk(str(final))
                check_splits(spec, splits, where=f"cache {str(final)!r}")
                return LoadedTask(spec=spec, splits=splits, source="cache", path=final, options=merged)
            except Exception as e:  # noqa: BLE001 - any unreadable cache is rebuilt
                warnings.warn(f"task {spec.name!r}: cache {str(final)!r} is unreadable ({e}); rebuilding it", stacklevel=2)
                shutil.rmtree(final, ignore_errors=True)
        _build_into(builtin, data_root=data_root, final=final, options=merged, quiet=quiet)
        splits = datasets.load_from_disk(str(final))
    return LoadedTask(spec=spec, splits=splits, source="built", path=final, options=merged)


def _build_into(builtin: BuiltinTask, *, data_root: Path, final: Path, options: Mapping[str, Any], quiet: bool) -> None:
    """Build the task and move its saved splits to ``final`` in one rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(final.parent, builtin.spec.name)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    kwargs = dict(options)
    if "quiet" in inspect.signature(builtin.build).parameters:
        kwargs["quiet"] = quiet
    try:
        splits = builtin.build(data_root, **kwargs)
        check_splits(builtin.spec, splits, where=f"task {builtin.spec.name!r} build()")
        splits.save_to_disk(str(tmp))
        write_manifest(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.exists():  # a real failure, not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_tmp(parent: Path, name: str) -> None:
    now = time.time()
    for p in parent.glob(f".{name}-*.tmp-*"):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Enable or disable ``datasets``' progress bars for the duration, then restore them."""
    before = datasets.is_progress_bar_enabled()
    if enabled:
        datasets.enable_progress_bars()
    else:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if before:
            datasets.enable_progress_bars()
        else:
            datasets.disable_progress_bars()


# ----------------------------------------------------------------------------------------------
# helpers for task builders


def source_groups(dataset: datasets.Dataset, columns: Sequence[str]) -> np.ndarray:
    """Group id per row [n]: rows holding an identical value in any of ``columns`` share a group.

    Identity is transitive: in AV-MNIST every row of one FSDD clip lands in one group, whatever its
    image. Values are compared by a 128-bit BLAKE2 digest of their bytes (array columns) or of their
    Python form (text, structs); nulls join nothing. Ids are numbered by first appearance, so they
    are deterministic. Use it to split by source sample, so that no input on one side of a split is
    identical to an input on the other.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(dataset)
    table = dataset.with_format("arrow")[:] if getattr(dataset, "_indices", None) is not None else dataset.data.table
    rows, values, num_values = [], [], 0
    for name in columns:  # a bipartite graph: row -- distinct value of a column
        if name not in table.column_names:
            raise KeyError(f"source_groups: no column {name!r} (columns: {table.column_names})")
        value_id: dict[bytes, int] = {}
        digests = [d for chunk in table.column(name).chunks for d in _row_digests(chunk)]
        for i, digest in enumerate(digests):
            if digest is not None:
                rows.append(i)
                values.append(num_values + value_id.setdefault(digest, len(value_id)))
        num_values += len(value_id)
    size = n + num_values
    graph = coo_matrix((np.ones(len(rows), np.int8), (np.asarray(rows, np.int64), n + np.asarray(values, np.int64))),
                       shape=(size, size))
    _, component = connected_components(graph, directed=False)
    _, first, ids = np.unique(component[:n], return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first)] = np.arange(len(first))  # renumber groups by their first row
    return rank[ids]


# Kinds whose values must all be finite (tabular and irregular series read NaN as "not observed").
FINITE_KINDS = ("image", "video", "audio", "timeseries", "pose", "set")


def find_bad_rows(dataset: datasets.Dataset, spec: TaskSpec) -> dict[str, np.ndarray]:
    """Rows that training would fail on, found up front and vectorised over Arrow: modality -> sorted
    row positions [k] whose value is missing (null) or, for :data:`FINITE_KINDS`, holds NaN or inf.
    Only modalities with bad rows appear."""
    table = dataset.with_format("arrow")[:] if getattr(dataset, "_indices", None) is not None else dataset.data.table
    bad: dict[str, np.ndarray] = {}
    for m, kind in spec.modalities.items():
        if m not in table.column_names:
            continue
        rows, offset = [], 0
        for chunk in table.column(m).chunks:
            flags = ~np.asarray(chunk.is_valid())
            if kind in FINITE_KINDS:
                flags |= _nonfinite_rows(chunk)
            rows.append(np.flatnonzero(flags) + offset)
            offset += len(chunk)
        found = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        if len(found):
            bad[m] = found
    return bad


def _nonfinite_rows(arr: pa.Array) -> np.ndarray:
    """bool [n]: rows of a (nested) list-of-floats array holding NaN or inf (False for other types)."""
    start, end, child = _leaf_spans(arr)
    if not pa.types.is_floating(child.type):
        return np.zeros(len(arr), dtype=bool)
    leaf = child.to_numpy(zero_copy_only=False)
    bad_leaf = ~np.isfinite(leaf) if len(leaf) else np.zeros(0, bool)
    if child.null_count:
        bad_leaf |= ~np.asarray(child.is_valid())
    counts = np.concatenate([[0], np.cumsum(bad_leaf, dtype=np.int64)])
    return (counts[end] - counts[start]) > 0


def _storage(arr: pa.Array) -> pa.Array:
    """datasets' Array2D..Array5D extension arrays are nested fixed-size lists underneath."""
    return arr.storage if isinstance(arr, pa.ExtensionArray) else arr


def _leaf_spans(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """(start [n], end [n], leaf): row i of a (nested) list array owns ``leaf[start[i]:end[i]]``;
    for a flat array the leaf is the array itself, one value a row."""
    child = _storage(arr)
    n = len(child)
    start, end = np.arange(n, dtype=np.int64), np.arange(1, n + 1, dtype=np.int64)
    while pa.types.is_list(child.type) or pa.types.is_large_list(child.type) or pa.types.is_fixed_size_list(child.type):
        if pa.types.is_fixed_size_list(child.type):
            offsets = (child.offset + np.arange(len(child) + 1, dtype=np.int64)) * child.type.list_size
        else:
            offsets = np.asarray(child.offsets, dtype=np.int64)
        start, end, child = offsets[start], offsets[end], child.values
    return start, end, child


def _row_digests(arr: pa.Array) -> list[bytes | None]:
    """One digest per row of ``arr`` (None for a null), over the bytes of its leaf values for
    (nested) lists of primitives, else over the row's Python ``repr``."""
    arr, (start, end, child) = _storage(arr), _leaf_spans(arr)
    valid = np.asarray(arr.is_valid())
    if pa.types.is_primitive(child.type) and child.null_count == 0:
        leaf = child.to_numpy(zero_copy_only=False)
        return [hashlib.blake2b(leaf[a:b].tobytes(), digest_size=16).digest() if ok else None
                for a, b, ok in zip(start, end, valid)]
    return [hashlib.blake2b(repr(v).encode(), digest_size=16).digest() if v is not None else None for v in arr.to_pylist()]


def array_feature(inner_shape: Sequence[int], dtype: str) -> datasets.List:
    """Feature for arrays [t, *inner_shape] with a variable first axis.

    Stored as a list of nested fixed-size lists: one offset per sample rather than one per
    innermost row (``datasets.Array3D`` and friends store variable lists at every level, which
    for [t, 48, 64, 1] uint8 video is 5x larger and much slower to read).
    """
    feature: Any = datasets.Value(dtype)
    for size in reversed(tuple(inner_shape)):
        feature = datasets.List(feature, length=int(size))
    return datasets.List(feature)


def samples_to_dataset(examples: Sequence[Mapping[str, Any]], features: datasets.Features) -> datasets.Dataset:
    """An in-memory ``datasets.Dataset`` from example dicts, building the Arrow arrays directly.

    Columns of :func:`array_feature` type are packed with one ``np.concatenate`` per column
    (``Dataset.from_list`` walks nested lists in Python: ~10x slower on video). Other columns go
    through ``pyarrow.array``.
    """
    schema = features.arrow_schema
    arrays = [_column_to_arrow([ex[name] for ex in examples], feature, schema.field(name).type, name)
              for name, feature in features.items()]
    table = pa.Table.from_arrays(arrays, schema=schema)
    return datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=features))


def _array_feature_layout(feature: Any) -> tuple[tuple[int, ...], str] | None:
    """(inner shape, dtype) when ``feature`` is a variable list of nested fixed-size lists of a Value."""
    if not isinstance(feature, datasets.List) or feature.length != -1:
        return None
    inner, shape = feature.feature, []
    while isinstance(inner, datasets.List) and inner.length > 0:
        shape.append(inner.length)
        inner = inner.feature
    if not isinstance(inner, datasets.Value):
        return None
    return tuple(shape), inner.dtype


def _column_to_arrow(values: list[Any], feature: Any, pa_type: pa.DataType, name: str) -> pa.Array:
    layout = _array_feature_layout(feature)
    if layout is not None:
        inner, dtype = layout
        arrays = [np.asarray(v) for v in values]
        for i, a in enumerate(arrays):
            if a.shape[1:] != inner:
                raise ValueError(f"column {name!r}, example {i}: expected shape [t, {', '.join(map(str, inner))}], got {a.shape}")
        flat = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0)
        arr: pa.Array = pa.array(flat.astype(np.dtype(dtype), copy=False))
        for size in reversed(inner):
            arr = pa.FixedSizeListArray.from_arrays(arr, size)
        offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), arr).cast(pa_type)
    if isinstance(feature, dict):
        children = [_column_to_arrow([v[k] for v in values], f, pa_type.field(k).type, f"{name}.{k}")
                    for k, f in feature.items()]
        return pa.StructArray.from_arrays(children, fields=list(pa_type))
    return pa.array(values, type=pa_type)


# ----------------------------------------------------------------------------------------------
# rows -> canonical samples

class _Gatherer:
    """Row gathers from one dataset split, built once per dataset (see :func:`rows_to_samples`).

    The split's table with every extension column (``Array2D``..``Array5D``) replaced by its storage
    array: zero-copy, and gathering from it skips datasets' per-row re-reading of the extension
    types (half of AV-MNIST's batch time). One chunk: one pyarrow ``take``; several: datasets'
    chunk-aware ``fast_gather`` (pyarrow's take would first concatenate every chunk).
    """

    def __init__(self, dataset: datasets.Dataset) -> None:
        raw = dataset.data.table
        columns = []
        for name in raw.column_names:
            col = raw.column(name)
            if isinstance(col.type, pa.ExtensionType):
                col = pa.chunked_array([c.storage for c in col.chunks], type=col.type.storage_type)
            columns.append(col)
        self.table = InMemoryTable(pa.Table.from_arrays(columns, names=raw.column_names))  # wraps, no copy
        self.single_chunk = bool(raw.num_columns) and raw.column(0).num_chunks == 1
        indices = getattr(dataset, "_indices", None)  # a select()/shuffle() mapping, or None
        self.mapping = None if indices is None else indices.column(0).to_numpy()
        self.num_rows = len(dataset)
        self.features = dataset.features  # .features deep-copies: once per dataset, not per batch

    def gather(self, idx: Sequence[int]) -> pa.Table:
        if not idx:
            return self.table.table.slice(0, 0)
        rows = np.asarray(idx, dtype=np.int64)
        if rows.min() < -self.num_rows or rows.max() >= self.num_rows:
            raise IndexError(f"row indices must be in [0, {self.num_rows}), got {rows.min()}..{rows.max()}")
        rows %= self.num_rows
        if self.mapping is not None:
            rows = self.mapping[rows].astype(np.int64)
        if self.single_chunk:
            return self.table.table.take(pa.array(rows))
        return self.table.fast_gather(rows)


_GATHERERS: weakref.WeakKeyDictionary[datasets.Dataset, _Gatherer] = weakref.WeakKeyDictionary()
_FLOAT_KINDS = ("audio", "timeseries", "pose", "set")
# kind -> sample rank (after canonical_sample adds a missing channel axis)
_RANKS = {"image": 3, "video": 4, "audio": 1, "timeseries": 2, "pose": 3, "set": 2}


def rows_to_samples(
    dataset: datasets.Dataset, indices: Sequence[int] | np.ndarray, spec: TaskSpec
) -> tuple[dict[str, list[Any]], np.ndarray]:
    """Fetch rows in one Arrow gather and convert them to canonical per-modality samples.

    Args:
        dataset: one split of a loaded task.
        indices: row positions, length b.
        spec: the task spec (modality kinds and target column).

    Returns:
        ``({modality: [sample] * b}, labels)``: samples in their kind's canonical format
        (``tasks/base.py``), writable numpy arrays (or ``str`` for text, dicts of arrays for
        ``tabular`` / ``irregular_timeseries``); labels int64 [b] (classification), float32 [b, c]
        (multilabel) or float32 [b] / [b, c] (regression).
    """
    idx = [int(i) for i in indices]
    gatherer = _GATHERERS.get(dataset)
    if gatherer is None:
        gatherer = _GATHERERS[dataset] = _Gatherer(dataset)
    table = gatherer.gather(idx)
    samples: dict[str, list[Any]] = {}
    for mod, kind in spec.modalities.items():
        image = isinstance(gatherer.features.get(mod), datasets.Image)
        raw = column_to_values(table.column(mod), name=f"modality {mod!r}", image=image)
        samples[mod] = [canonical_sample(kind, x, name=f"modality {mod!r}", row=r) for r, x in zip(idx, raw)]
    labels = _labels(table.column(spec.target), spec)
    return samples, labels


def _labels(col: pa.ChunkedArray, spec: TaskSpec) -> np.ndarray:
    values = column_to_values(col, name=f"target {spec.target!r}")
    if spec.task_type == "classification":
        return np.asarray(values, dtype=np.int64).reshape(-1)
    arr = np.stack([np.asarray(v, dtype=np.float32) for v in values]) if len(values) else np.zeros((0,), np.float32)
    return arr


def column_to_values(col: pa.ChunkedArray | pa.Array, *, name: str, image: bool = False) -> list[Any]:
    """One Python/numpy value per row: nested lists -> numpy arrays, structs -> dicts, strings -> str."""
    if isinstance(col, pa.ChunkedArray):
        # A gather yields about one chunk per row; converting one array is far cheaper than 64.
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return _array_to_values(col, name=name, image=image)


def _array_to_values(arr: pa.Array, *, name: str, image: bool = False) -> list[Any]:
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    if arr.null_count:
        rows = np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[:5].tolist()
        raise ValueError(f"{name}: {arr.null_count} missing (null) value(s), e.g. at batch positions {rows}")
    t = arr.type
    if image:
        return [_decode_image(v, name=name) for v in arr.to_pylist()]
    if pa.types.is_struct(t):
        children = arr.flatten()
        per_field = {t.field(i).name: _array_to_values(c, name=f"{name}.{t.field(i).name}") for i, c in enumerate(children)}
        return [{k: v[r] for k, v in per_field.items()} for r in range(len(arr))]
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _lists_to_arrays(arr, name=name)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return arr.to_pylist()
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return list(np.array(arr.to_numpy(zero_copy_only=False)))
    raise TypeError(f"{name}: cannot turn Arrow type {t} into samples")


def _lists_to_arrays(arr: pa.Array, *, name: str) -> list[np.ndarray]:
    """Nested (fixed-size) list array -> one numpy array per row, vectorised over the batch.

    Walks down the nesting; at each level the lengths of the elements of one row must agree
    (rectangular samples). The leaf values are copied once, so the returned arrays are writable
    views into one buffer.
    """
    n = len(arr)
    lo, hi = np.arange(n), np.arange(1, n + 1)  # each row's span of elements at the current level
    dims: list[np.ndarray] = []
    cur: pa.Array = arr
    while True:
        if isinstance(cur, pa.ExtensionArray):
            cur = cur.storage
        t = cur.type
        if pa.types.is_fixed_size_list(t):  # no per-element work: every element has list_size items
            w = t.list_size
            dims.append(np.full(n, w, dtype=np.int64))
            lo, hi = lo * w, hi * w
            cur = cur.flatten()
            continue
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            offs = cur.offsets.to_numpy().astype(np.int64)
            offs = offs - offs[0]
        else:
            break
        lengths = np.diff(offs)
        count = hi - lo
        if not dims:
            d = lengths
        else:
            first = lengths[np.minimum(lo, len(lengths) - 1)] if len(lengths) else np.zeros(n, np.int64)
            d = np.where(count > 0, first, 0)
            if not np.array_equal(np.repeat(d, count), lengths):
                bad = int(np.flatnonzero(np.repeat(d, count) != lengths)[0])
                row = int(np.searchsorted(np.cumsum(count), bad, side="right"))
                raise ValueError(f"{name}: row at batch position {row} is ragged at nesting level {len(dims)} "
                                 f"(its sub-lists have different lengths); samples must be rectangular arrays")
        dims.append(d)
        lo, hi = offs[lo], offs[hi]
        cur = cur.flatten()
    if pa.types.is_boolean(cur.type) or pa.types.is_integer(cur.type) or pa.types.is_floating(cur.type):
        leaf = np.array(cur.to_numpy(zero_copy_only=False))
    else:
        raise TypeError(f"{name}: nested lists of {cur.type} are not numeric arrays")
    shape = np.stack(dims, axis=1) if dims else np.zeros((n, 0), np.int64)
    return [leaf[a:b].reshape(tuple(s)) for a, b, s in zip(lo.tolist(), hi.tolist(), shape.tolist())]


def _decode_image(value: Any, *, name: str) -> np.ndarray:
    from PIL import Image

    if isinstance(value, dict) and value.get("bytes") is not None:
        return np.array(Image.open(io.BytesIO(value["bytes"])))
    if isinstance(value, dict) and value.get("path"):
        return np.array(Image.open(value["path"]))
    raise ValueError(f"{name}: image cell has neither bytes nor a path")


def canonical_sample(kind: str, x: Any, *, name: str, row: int) -> Any:
    """One converted value -> the canonical sample of ``kind`` (dtype casts, a missing channel axis)."""
    where = f"{name} (kind {kind!r}), row {row}"
    if kind == "text":
        if not isinstance(x, str):
            raise TypeError(f"{where}: expected a string, got {type(x).__name__}")
        return x
    if kind == "tabular":
        return _canonical_tabular(x, where)
    if kind == "irregular_timeseries":
        return _canonical_irregular(x, where)
    if isinstance(x, dict):
        raise TypeError(f"{where}: expected an array, got a struct with fields {sorted(x)}")
    x = np.asarray(x)
    if kind in ("image", "video") and x.ndim == _RANKS[kind] - 1:
        x = x[..., None]  # grayscale: add the channel axis
    elif kind in ("timeseries", "set") and x.ndim == 1:
        x = x[:, None]
    if x.ndim != _RANKS[kind]:
        raise ValueError(f"{where}: expected a rank-{_RANKS[kind]} array, got shape {tuple(x.shape)}")
    if kind in _FLOAT_KINDS or x.dtype != np.uint8:
        x = x.astype(np.float32, copy=False)
    return x


def _canonical_tabular(x: Any, where: str) -> dict[str, np.ndarray]:
    if not isinstance(x, dict):
        x = {"numeric": np.asarray(x)}
    unknown = set(x) - {"numeric", "numeric_observed", "categorical"}
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; expected numeric, numeric_observed, categorical")
    numeric = np.asarray(x.get("numeric", np.zeros(0)), dtype=np.float32).reshape(-1)
    observed = np.isfinite(numeric)
    if x.get("numeric_observed") is not None:
        observed &= np.asarray(x["numeric_observed"], dtype=bool).reshape(-1)
    categorical = np.asarray(x.get("categorical", np.zeros(0)), dtype=np.int64).reshape(-1)
    return {"numeric": np.where(observed, numeric, 0).astype(np.float32), "numeric_observed": observed,
            "categorical": categorical}


def _canonical_irregular(x: Any, where: str) -> dict[str, np.ndarray]:
    if not isinstance(x, dict) or "values" not in x or "times" not in x:
        got = sorted(x) if isinstance(x, dict) else type(x).__name__
        raise TypeError(f"{where}: expected a struct with values, times (and observed), got {got}")
    values = np.asarray(x["values"], dtype=np.float32)
    if values.ndim == 1:
        values = values[:, None]
    times = np.asarray(x["times"], dtype=np.float32).reshape(-1)
    if values.ndim != 2 or len(times) != len(values):
        raise ValueError(f"{where}: values must be [t, c] with t = len(times); got {values.shape} and {times.shape}")
    observed = np.isfinite(values)
    if x.get("observed") is not None:
        observed &= np.asarray(x["observed"], dtype=bool).reshape(values.shape)
    return {"values": np.where(observed, values, 0).astype(np.float32), "observed": observed, "times": times}
