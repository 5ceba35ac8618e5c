"""Omniglot (background small 1 + 2): a handwritten character as an image and as pen strokes.

Sources (under the data root): ``omniglot/images_background_small{1,2}.zip`` (105x105 1-bit PNGs,
``<Alphabet>/characterNN/<charid>_<drawer>.png``) and ``omniglot/strokes_background_small{1,2}.zip``
(the same paths with ``.txt``: ``START``, then ``x,y,t`` lines with ``t`` in ms, ``BREAK`` after
each stroke). ``__MACOSX/`` and ``.DS_Store`` junk entries are skipped.

* **De-duplication**: Greek and Latin appear in both small1 and small2 with identical bytes; a
  drawing is keyed by (alphabet, character, file name) and its first occurrence (small1) is kept,
  so the 5,840 files give 4,840 drawings. A duplicate whose bytes differ triggers a warning.
* **Split by drawer**: drawers 01-12 train (2,904), 13-16 validation (968), 17-20 test (968).
* **Labels**: ``label`` is the character (242 classes, sorted by (alphabet, character folder);
  ``label="character"``, the default) or the alphabet (8 classes, ``label="alphabet"``). The
  ``alphabet`` column (index into :data:`ALPHABETS`) and the ``drawer`` column (1-20) are always
  stored. The registered spec is the 242-way one and does not change with the option; for the
  alphabet task use :data:`ALPHABET_SPEC` (8 classes, ``target="alphabet"``), which reads the same
  cached dataset.

Columns:

* ``glyph``: uint8 [s, s, 1], ink = 255, box-downsampled from 105x105 to ``image_size``
  (default 28; 105 keeps the original pixels, 0/255).
* ``strokes``: float32 [t, 4] = (x, y, seconds since the first point, pen), t <= ``max_points``.
  x and y are image coordinates scaled by the image size to about [-1, 1]
  (``2 * x / 105 - 1``, ``2 * row / 105 - 1`` with row = -y of the file, so y grows downwards as
  in the glyph); pen = 1 at the first point of every stroke (a pen-down), else 0. Drawings with more
  points are subsampled at evenly spaced indices; a kept point gets pen = 1 if a stroke started
  since the previous kept point, so no stroke boundary is lost.

Getting numpy back: ``ds.with_format("numpy")[i]`` gives ``strokes`` float32 [t, 4] and ``glyph``
[s, s, 1] with values 0-255 (``datasets`` upcasts integer columns to int64 in the numpy/torch
formats; ``np.asarray(x, np.uint8)`` restores uint8).
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from tasks._io import decode_text, is_junk_member, make_dataset, open_zip, progress, read_member
from tasks.base import BuiltinTask, TaskSpec, register_task

# Bump when the built dataset changes for the same files and options (part of the cache key).
CODE_VERSION = "1"

SOURCE_FILES = [f"omniglot/{kind}_background_small{i}.zip" for i in (1, 2) for kind in ("images", "strokes")]
ALPHABETS = (
    "Balinese", "Early_Aramaic", "Greek", "Japanese_(katakana)", "Korean", "Latin", "Sanskrit", "Tagalog",
)
NATIVE_SIZE = 105
SPLIT_DRAWERS = {"train": range(1, 13), "validation": range(13, 17), "test": range(17, 21)}
_IMAGE_PATH = re.compile(r"images_background_small(\d)/([^/]+)/(character\d+)/(\d+_(\d+))\.png")


def glyph_from_png(data: bytes, image_size: int, where: str) -> np.ndarray:
    """Decode a PNG to uint8 [s, s, 1] with ink = 255, box-downsampled to ``image_size``."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            gray = img.convert("L")
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{where}: not a readable PNG ({e})") from e
    if gray.size != (NATIVE_SIZE, NATIVE_SIZE):
        raise ValueError(f"{where}: expected a {NATIVE_SIZE}x{NATIVE_SIZE} image, got {gray.size[0]}x{gray.size[1]}")
    if image_size != NATIVE_SIZE:
        gray = gray.resize((image_size, image_size), Image.BOX)
    return (255 - np.asarray(gray, dtype=np.uint8))[..., None]


def parse_strokes(text: str, where: str) -> list[np.ndarray]:
    """Parse a stroke file into a list of float64 [p, 3] arrays (x, y, t in ms), one per stroke."""
    body = text.strip()
    if not body.startswith("START"):
        raise ValueError(f"{where}: stroke file must begin with START")
    strokes: list[np.ndarray] = []
    # a final stroke without BREAK is kept (the publisher's files always end with one)
    for number, block in enumerate(body[len("START"):].split("BREAK"), start=1):
        lines = block.split()
        if not lines:
            continue
        if any(line.count(",") != 2 for line in lines):
            bad = next(line for line in lines if line.count(",") != 2)
            raise ValueError(f"{where}: stroke {number}: line {bad!r} is not 'x,y,t' or BREAK")
        try:
            points = np.array(",".join(lines).split(","), dtype=np.float64).reshape(-1, 3)
        except ValueError as e:
            raise ValueError(f"{where}: stroke {number} holds a value that is not a number ({e})") from e
        strokes.append(points)
    if not strokes:
        raise ValueError(f"{where}: no stroke points")
    return strokes


def stroke_sequence(strokes: list[np.ndarray], max_points: int) -> np.ndarray:
    """float32 [t, 4] (x, y, seconds, pen) with t <= max_points (see the module docstring)."""
    points = np.concatenate(strokes)
    pen = np.zeros(len(points), dtype=np.float32)
    pen[np.cumsum([0] + [len(s) for s in strokes[:-1]])] = 1.0
    seq = np.empty((len(points), 4), dtype=np.float64)
    seq[:, 0] = 2.0 * points[:, 0] / NATIVE_SIZE - 1.0
    seq[:, 1] = 2.0 * -points[:, 1] / NATIVE_SIZE - 1.0
    seq[:, 2] = (points[:, 2] - points[0, 2]) / 1000.0
    seq[:, 3] = pen
    if len(seq) > max_points:
        keep = np.round(np.linspace(0, len(seq) - 1, max_points)).astype(np.int64)
        # a kept point carries every pen-down since the previous kept point
        starts = np.cumsum(pen)
        pen_kept = np.diff(starts[keep], prepend=0.0) > 0
        seq = seq[keep]
        seq[:, 3] = pen_kept
    return seq.astype(np.float32)


Drawing = tuple[bytes, bytes, str, str]  # png bytes, stroke bytes, where the png is, where the strokes are


def read_drawings(data_root: Path, quiet: bool) -> dict[tuple[str, str, str], Drawing]:
    """(alphabet, character, file stem) -> drawing, de-duplicated (the first occurrence wins)."""
    drawings: dict[tuple[str, str, str], Drawing] = {}
    for part in (1, 2):
        image_path = data_root / f"omniglot/images_background_small{part}.zip"
        stroke_path = data_root / f"omniglot/strokes_background_small{part}.zip"
        with open_zip(image_path) as images, open_zip(stroke_path) as strokes:
            stroke_members = {m for m in strokes.namelist() if not is_junk_member(m)}
            image_members = sorted(m for m in images.namelist() if not is_junk_member(m))
            expected_strokes = set()
            for member in progress(image_members, desc=f"omniglot: reading small{part}", quiet=quiet):
                match = _IMAGE_PATH.fullmatch(member)
                if match is None or match[1] != str(part):
                    raise ValueError(
                        f"{image_path}: unexpected member {member!r}; expected "
                        f"images_background_small{part}/<Alphabet>/characterNN/<id>_<drawer>.png"
                    )
                alphabet, character, stem = match[2], match[3], match[4]
                stroke_member = f"strokes_background_small{part}/{alphabet}/{character}/{stem}.txt"
                if stroke_member not in stroke_members:
                    raise ValueError(
                        f"{stroke_path}: missing {stroke_member!r}, the strokes of {image_path}: {member!r}"
                    )
                expected_strokes.add(stroke_member)
                png = read_member(images, member, image_path)
                txt = read_member(strokes, stroke_member, stroke_path)
                key = (alphabet, character, stem)
                if key in drawings:
                    if drawings[key][:2] != (png, txt):
                        warnings.warn(
                            f"omniglot: {alphabet}/{character}/{stem} differs between small1 and small2; "
                            "keeping the small1 copy",
                            stacklevel=2,
                        )
                    continue
                where_png, where_txt = f"{image_path}: member {member!r}", f"{stroke_path}: member {stroke_member!r}"
                drawings[key] = (png, txt, where_png, where_txt)
            extra = sorted(m for m in stroke_members - expected_strokes if m.endswith(".txt"))
            if extra:
                raise ValueError(f"{stroke_path}: {len(extra)} stroke file(s) without an image, e.g. {extra[0]!r}")
    return drawings


def build(
    data_root: Path, *, image_size: int = 28, max_points: int = 128, label: str = "character", quiet: bool = False,
) -> datasets.DatasetDict:
    """Build Omniglot (see the module docstring). Columns: glyph, strokes, label, alphabet, drawer."""
    if label not in ("character", "alphabet"):
        raise ValueError(f"task 'omniglot': option label must be 'character' or 'alphabet', got {label!r}")
    if not isinstance(image_size, int) or not 1 <= image_size <= NATIVE_SIZE:
        raise ValueError(
            f"task 'omniglot': option image_size must be an integer in [1, {NATIVE_SIZE}], got {image_size!r}"
        )
    if not isinstance(max_points, int) or max_points < 2:
        raise ValueError(f"task 'omniglot': option max_points must be an integer >= 2, got {max_points!r}")
    drawings = read_drawings(Path(data_root), quiet)
    characters = sorted({(a, c) for a, c, _ in drawings})
    character_index = {ac: i for i, ac in enumerate(characters)}
    rows: dict[str, dict[str, list]] = {
        split: {"glyph": [], "strokes": [], "label": [], "alphabet": [], "drawer": []} for split in SPLIT_DRAWERS
    }
    for (alphabet, character, stem), (png, txt, where, stroke_where) in progress(
        sorted(drawings.items()), desc="omniglot: decoding", quiet=quiet
    ):
        if alphabet not in ALPHABETS:
            raise ValueError(f"{where}: unknown alphabet {alphabet!r}; expected one of {list(ALPHABETS)}")
        drawer = int(stem.rsplit("_", 1)[1])
        split = next((s for s, drawers in SPLIT_DRAWERS.items() if drawer in drawers), None)
        if split is None:
            raise ValueError(f"{where}: drawer {drawer} is outside 1-20")
        alphabet_id = ALPHABETS.index(alphabet)
        row = rows[split]
        row["glyph"].append(glyph_from_png(png, image_size, where))
        row["strokes"].append(stroke_sequence(parse_strokes(decode_text(txt, stroke_where), stroke_where), max_points))
        row["label"].append(character_index[(alphabet, character)] if label == "character" else alphabet_id)
        row["alphabet"].append(alphabet_id)
        row["drawer"].append(drawer)
    features = datasets.Features({
        "glyph": datasets.Array3D(shape=(image_size, image_size, 1), dtype="uint8"),
        "strokes": datasets.Array2D(shape=(None, 4), dtype="float32"),
        "label": datasets.Value("int64"),
        "alphabet": datasets.Value("int64"),
        "drawer": datasets.Value("int64"),
    })
    return datasets.DatasetDict({
        split: make_dataset({**columns, "glyph": np.stack(columns["glyph"]) if columns["glyph"] else
                             np.zeros((0, image_size, image_size, 1), np.uint8)}, features)
        for split, columns in rows.items()
    })


SPEC = TaskSpec(
    name="omniglot",
    modalities={"glyph": "image", "strokes": "timeseries"},
    task_type="classification",
    num_classes=242,
    metric="accuracy",
    modality_options={"glyph": {"channels": 1}, "strokes": {"channels": 4}},
    description="Omniglot character (242-way) from its image and pen strokes, split by drawer",
)

ALPHABET_SPEC = TaskSpec(
    name="omniglot_alphabet",
    modalities={"glyph": "image", "strokes": "timeseries"},
    task_type="classification",
    num_classes=len(ALPHABETS),
    metric="accuracy",
    modality_options={"glyph": {"channels": 1}, "strokes": {"channels": 4}},
    target="alphabet",
    class_names=list(ALPHABETS),
    description="Omniglot alphabet (8-way) on the same dataset as 'omniglot' (column 'alphabet'); not registered",
)

TASK = register_task(BuiltinTask(
    spec=SPEC,
    source_files=SOURCE_FILES,
    build=build,
    options={"image_size": 28, "max_points": 128, "label": "character"},
    how_to_get=(
        "put the publisher's images_background_small{1,2}.zip and strokes_background_small{1,2}.zip "
        "(github.com/brendenlake/omniglot, folder python/) in <data root>/omniglot/"
    ),
))
