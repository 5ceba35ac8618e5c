"""Small readers shared by the built-in task loaders.

Every reader takes the source file's path (or a ``where`` string naming the file and member) so
that a corrupt or truncated file raises ``ValueError`` naming it. Archives are read in place;
nothing is extracted (the data root may be read-only).
"""

from __future__ import annotations

import gzip
import io
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import datasets
from datasets.fingerprint import generate_random_fingerprint
import numpy as np
import pyarrow as pa
from tqdm import tqdm

T = TypeVar("T")

_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def progress(items: Iterable[T], *, desc: str, total: int | None = None, quiet: bool = False) -> Iterator[T]:
    """A tqdm progress bar over ``items`` (silent when ``quiet``)."""
    return iter(tqdm(items, desc=desc, total=total, disable=quiet, leave=False))


def read_idx_gz(path: Path) -> np.ndarray:
    """Read a gzip'd IDX file (MNIST format) into an array of its declared shape.

    Raises:
        ValueError: naming ``path`` if the file is not gzip, is truncated, or its header and
            payload disagree.
    """
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: not a readable gzip file ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header truncated ({len(raw)} bytes, expected at least {header})")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: IDX payload has {len(raw)} bytes, expected {expected} for shape {shape} "
            "(truncated or corrupt file)"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def open_zip(path: Path) -> zipfile.ZipFile:
    """Open a zip archive for reading; a damaged archive raises ``ValueError`` naming it."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable zip file ({e})") from e


def read_member(archive: zipfile.ZipFile, member: str, path: Path) -> bytes:
    """Read one member of an open zip; CRC or deflate errors raise ``ValueError`` naming both."""
    try:
        return archive.read(member)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: member {member!r} is corrupt ({e})") from e


def is_junk_member(member: str) -> bool:
    """Directories and macOS junk (``__MACOSX/``, ``.DS_Store``, ``._*`` resource forks)."""
    base = member.rstrip("/").rsplit("/", 1)[-1]
    return (
        member.endswith("/")
        or member.startswith("__MACOSX/")
        or "/__MACOSX/" in member
        or base == ".DS_Store"
        or base.startswith("._")
    )


def decode_wav(data: bytes, where: str) -> tuple[np.ndarray, int]:
    """Decode a mono 16-bit WAV to an int16 array [s] and its sample rate.

    Raises:
        ValueError: naming ``where`` if the bytes are not a readable mono WAV.
    """
    import soundfile

    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            channels, rate, frames = f.channels, f.samplerate, f.frames
            wave = f.read(dtype="int16", always_2d=True)
    except (RuntimeError, soundfile.SoundFileError, EOFError, ValueError) as e:
        raise ValueError(f"{where}: not a readable WAV file ({e})") from e
    if channels != 1:
        raise ValueError(f"{where}: expected a mono WAV, got {channels} channels")
    if frames == 0 or wave.shape[0] != frames:
        raise ValueError(f"{where}: WAV holds {wave.shape[0]} of {frames} declared frames (truncated?)")
    return wave[:, 0], int(rate)


def decode_text(data: bytes, where: str) -> str:
    """Decode UTF-8, falling back to latin-1 with a warning naming ``where``."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        warnings.warn(f"{where}: not valid UTF-8 ({e}); decoded as latin-1 instead", stacklevel=2)
        return data.decode("latin-1")


def list_column(arrays: Sequence[np.ndarray], dtype: str) -> pa.Array:
    """A variable-length 1-d column (feature ``datasets.List(Value(dtype))``) built in Arrow directly.

    ``datasets.Dataset.from_dict`` converts such columns element by element (about a minute for
    70,000 waveforms); concatenating into one buffer takes a fraction of a second.
    """
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise ValueError(f"list column too large for one Arrow chunk ({offsets[-1]} values)")
    values = np.concatenate(arrays).astype(dtype) if len(arrays) else np.zeros(0, dtype)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values))


_ARRAY_FEATURES = (datasets.Array2D, datasets.Array3D, datasets.Array4D, datasets.Array5D)


def array_column(array: np.ndarray, feature: Any) -> pa.Array:
    """A fixed-shape column (feature ``datasets.Array2D``...``Array5D``) built in Arrow directly
    from one numpy array [rows, *feature.shape].

    ``datasets.Dataset.from_dict`` goes through Python lists: 1.2 GB of peak memory for AV-MNIST's
    86 MB of training images; this copies the values once.
    """
    shape = tuple(feature.shape)
    if array.shape[1:] != shape:
        raise ValueError(f"array column: expected rows of shape {shape}, got {array.shape[1:]}")
    rows = array.shape[0]
    if rows * int(np.prod(shape)) >= 2**31:
        raise ValueError(f"array column too large for one Arrow chunk ({rows} rows of {shape})")
    storage: pa.Array = pa.array(np.ascontiguousarray(array, dtype=feature.dtype).reshape(-1))
    for level in reversed(range(len(shape))):  # innermost lists first: rows * prod(shape[:level]) of shape[level] each
        count = rows * int(np.prod(shape[:level]))
        storage = pa.ListArray.from_arrays(pa.array(np.arange(count + 1, dtype=np.int32) * shape[level]), storage)
    return pa.ExtensionArray.from_storage(feature(), storage)


def make_dataset(columns: Mapping[str, Any], features: datasets.Features) -> datasets.Dataset:
    """Build an in-memory ``datasets.Dataset`` with exactly ``features``.

    Columns whose feature is ``List(Value(...))`` and whose data are numpy arrays go through
    :func:`list_column`, ``Array2D``-``Array5D`` columns given as one numpy array through
    :func:`array_column`; everything else goes through ``Dataset.from_dict``.
    """
    if set(columns) != set(features):
        raise ValueError(f"columns {sorted(columns)} do not match features {sorted(features)}")
    fast = {
        name: list_column(data, features[name].feature.dtype)
        for name, data in columns.items()
        if isinstance(features[name], datasets.List)
        and isinstance(features[name].feature, datasets.Value)
        and len(data) > 0
        and isinstance(data[0], np.ndarray)
    }
    fast.update({
        name: array_column(data, features[name])
        for name, data in columns.items()
        if isinstance(features[name], _ARRAY_FEATURES) and isinstance(data, np.ndarray) and len(data) > 0
    })
    slow = {name: data for name, data in columns.items() if name not in fast}
    table = datasets.Dataset.from_dict(slow, features=datasets.Features({n: features[n] for n in slow})).data.table
    for name, array in fast.items():
        table = table.append_column(name, array)
    table = table.select(list(features))
    # An explicit fingerprint: without one, datasets hashes the whole table (a serialized copy of it,
    # 2.4 GB of peak memory for AV-MNIST's training split). The cache folder's key names the content.
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features), fingerprint=generate_random_fingerprint())
