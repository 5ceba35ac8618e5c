"""Built-in task loaders: avmnist, omniglot, sentiment, subjectivity, robot_failures_lp1..5.

Each loader runs on tiny files written here in the real formats (gzip IDX, a zip of 8 kHz WAVs,
Omniglot zips with PNGs and stroke files plus macOS junk, NLTK-style zips, lp*.data). The slow
tests build every task from the real data root and check the published counts.
"""

from __future__ import annotations

import gzip
import io
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image, ImageDraw
from sklearn.model_selection import train_test_split

from highmmt.registry import TASKS
from tasks import avmnist, omniglot, robot_failures, text_corpora

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("HIGHMMT_DATA") or REPO.parent / "shared" / "data")


def write_zip(path: Path, members: dict[str, bytes | None]) -> Path:
    """A zip with ``members`` in the given order (None = a directory entry)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, b"" if data is None else data)
    return path


def table_equal(a, b) -> bool:
    return set(a) == set(b) and all(a[s].data.table.equals(b[s].data.table) for s in a)


# ------------------------------------------------------------------------------------------------
# AV-MNIST

def write_idx_gz(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def wav_bytes(samples: np.ndarray, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, samples.astype(np.int16), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def clip_samples(digit: int, speaker: str, index: int) -> np.ndarray:
    """A distinct, recognisable int16 waveform per clip (length and values encode the clip)."""
    rng = np.random.default_rng([digit, len(speaker), index, ord(speaker[0])])
    return rng.integers(-30000, 30000, size=40 + 7 * digit + index).astype(np.int16)


@pytest.fixture
def avmnist_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    train_labels = np.arange(24) % 10
    test_labels = (np.arange(10) * 3) % 10
    for name, labels in (("train", train_labels), ("t10k", test_labels)):
        images = rng.integers(0, 256, size=(len(labels), 28, 28)).astype(np.uint8)
        write_idx_gz(tmp_path / f"mnist/{name}-images-idx3-ubyte.gz", images)
        write_idx_gz(tmp_path / f"mnist/{name}-labels-idx1-ubyte.gz", labels)
    members: dict[str, bytes | None] = {"recordings/": None}
    for speaker in ("george", "jackson", "lucas", "nicolas", "theo", "yweweler"):
        for digit in range(10):
            for index in range(3):
                members[f"recordings/{digit}_{speaker}_{index}.wav"] = wav_bytes(clip_samples(digit, speaker, index))
    write_zip(tmp_path / "fsdd/fsdd_recordings.zip", members)
    return tmp_path


def test_avmnist_registered_spec():
    task = TASKS.get("avmnist")
    assert task is avmnist.TASK
    assert dict(task.spec.modalities) == {"mnist_image": "image", "fsdd_audio": "audio"}
    assert task.spec.modality_options["fsdd_audio"]["sample_rate"] == 8000
    assert task.spec.num_classes == 10 and task.spec.metric == "accuracy"
    assert len(task.source_files) == 5


def test_avmnist_splits_shapes_pairing(avmnist_root: Path):
    dd = avmnist.build(avmnist_root, num_validation=4, quiet=True)
    assert {s: len(dd[s]) for s in dd} == {"train": 20, "validation": 4, "test": 10}
    row = dd["train"].with_format("numpy")[3]
    assert row["mnist_image"].shape == (28, 28, 1)
    assert row["fsdd_audio"].dtype == np.float32 and row["fsdd_audio"].ndim == 1
    assert int(row["label"]) == 3
    for split, speakers in (("train", avmnist.TRAIN_SPEAKERS), ("validation", avmnist.VALIDATION_SPEAKERS),
                            ("test", avmnist.TEST_SPEAKERS)):
        ds = dd[split].with_format("numpy")
        for i in range(len(ds)):
            r = ds[i]
            digit, speaker, index = str(r["clip"]).split("_")
            assert int(digit) == int(r["label"]), "clip of another digit"
            assert speaker in speakers, f"{split} heard speaker {speaker}"
            expected = clip_samples(int(digit), speaker, int(index)).astype(np.float32) / 32768.0
            np.testing.assert_allclose(r["fsdd_audio"], expected, atol=1e-3, rtol=1e-3)
            assert np.abs(r["fsdd_audio"]).max() <= 1.0


def test_avmnist_splits_have_disjoint_speakers_and_clips(avmnist_root: Path):
    """No validation or test clip (nor its speaker) is heard in training, nor a test one in validation."""
    assert not set(avmnist.TRAIN_SPEAKERS) & set(avmnist.VALIDATION_SPEAKERS)
    assert not (set(avmnist.TRAIN_SPEAKERS) | set(avmnist.VALIDATION_SPEAKERS)) & set(avmnist.TEST_SPEAKERS)
    dd = avmnist.build(avmnist_root, num_validation=6, quiet=True)
    clips = {split: set(dd[split]["clip"]) for split in dd}
    speakers = {split: {c.split("_")[1] for c in names} for split, names in clips.items()}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not clips[a] & clips[b], f"{a} and {b} share clips {sorted(clips[a] & clips[b])[:3]}"
        assert not speakers[a] & speakers[b], f"{a} and {b} share speakers {speakers[a] & speakers[b]}"
    assert speakers["validation"] == {"yweweler"} and speakers["test"] <= {"george", "lucas"}


def test_avmnist_raw_pixels_and_degradation(avmnist_root: Path):
    raw = avmnist.build(avmnist_root, degrade=False, num_validation=4, quiet=True)
    images = np.asarray(raw["test"].with_format("numpy")[:]["mnist_image"])
    from tasks._io import read_idx_gz

    original = read_idx_gz(avmnist_root / "mnist/t10k-images-idx3-ubyte.gz")
    assert images.dtype == np.float32
    np.testing.assert_allclose(images[..., 0], original / 255.0, atol=5e-4)
    degraded = avmnist.build(avmnist_root, degrade=True, num_validation=4, quiet=True)
    stored = np.asarray(degraded["test"].with_format("numpy")[:]["mnist_image"])
    assert stored.shape == images.shape and stored.dtype == np.float32
    train = read_idx_gz(avmnist_root / "mnist/train-images-idx3-ubyte.gz")
    (_, expected), _, _ = avmnist.pca_degrade(train, [original], 0.25)
    np.testing.assert_allclose(stored[..., 0], expected, atol=2e-3)  # float16 storage
    assert np.abs(stored - images).max() > 0.1


def test_pca_degrade_picks_smallest_k_reaching_energy():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((784, 3)))[0]  # orthonormal patterns
    coeffs = rng.standard_normal((400, 3)) * np.array([0.3, 0.2, 0.1])  # variances 9 : 4 : 1
    coeffs -= coeffs.mean(0)
    images = np.round((0.5 + coeffs @ basis.T) * 255).reshape(400, 28, 28).astype(np.uint8)
    variances = coeffs.var(axis=0)
    (out,), k, kept = avmnist.pca_degrade(images, [], energy=0.5)
    assert k == 1 and abs(kept - variances[0] / variances.sum()) < 0.03
    (out,), k, kept = avmnist.pca_degrade(images, [], energy=0.8)
    assert k == 2 and abs(kept - variances[:2].sum() / variances.sum()) < 0.03
    (out,), k, _ = avmnist.pca_degrade(images, [], energy=0.99)
    assert k == 3
    # three components reconstruct the images up to the pixels' rounding
    assert out.dtype == np.float32 and np.abs(out * 255 - images).max() < 2.0
    (out,), _, _ = avmnist.pca_degrade(images, [], energy=0.5)
    assert np.abs(out * 255 - images).max() > 10, "one component cannot reconstruct three"


def test_avmnist_deterministic_and_seeded(avmnist_root: Path):
    a = avmnist.build(avmnist_root, num_validation=4, quiet=True)
    b = avmnist.build(avmnist_root, num_validation=4, quiet=True)
    assert table_equal(a, b)
    c = avmnist.build(avmnist_root, num_validation=4, seed=1, quiet=True)
    assert a["train"]["clip"] != c["train"]["clip"]


def test_avmnist_truncated_idx_names_file(avmnist_root: Path):
    path = avmnist_root / "mnist/train-images-idx3-ubyte.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        avmnist.build(avmnist_root, num_validation=4, quiet=True)
    # a valid gzip whose IDX payload is short
    raw = gzip.decompress(data)
    with gzip.open(path, "wb") as f:
        f.write(raw[:-100])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz.*truncated"):
        avmnist.build(avmnist_root, num_validation=4, quiet=True)


def test_avmnist_bad_wav_names_member(avmnist_root: Path):
    path = avmnist_root / "fsdd/fsdd_recordings.zip"
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["recordings/4_theo_1.wav"] = b"RIFF\x00\x00 this is not audio"
    write_zip(path, members)
    with pytest.raises(ValueError, match="4_theo_1.wav"):
        avmnist.build(avmnist_root, num_validation=4, quiet=True)


def test_avmnist_rejects_bad_options(avmnist_root: Path):
    with pytest.raises(ValueError, match="energy"):
        avmnist.build(avmnist_root, energy=0.0, quiet=True)
    with pytest.raises(ValueError, match="num_validation"):
        avmnist.build(avmnist_root, quiet=True)  # 5,000 validation images from 24


# ------------------------------------------------------------------------------------------------
# Omniglot

def glyph_png(box: tuple[int, int, int, int]) -> bytes:
    img = Image.new("1", (105, 105), 1)  # white background, ink = black as in the publisher's files
    ImageDraw.Draw(img).rectangle(box, fill=0)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def stroke_txt(strokes: list[list[tuple[float, float, float]]]) -> bytes:
    lines = ["START"]
    for stroke in strokes:
        lines += [f"{x},{y},{t}" for x, y, t in stroke] + ["BREAK"]
    return ("\n".join(lines) + "\n").encode()


DRAWERS = (1, 2, 13, 17)  # two train, one validation, one test
# part -> alphabet -> characters
OMNI_LAYOUT = {1: {"Greek": (1, 2), "Korean": (1,)}, 2: {"Greek": (1, 2), "Latin": (1,)}}


def drawing(alphabet: str, character: int, drawer: int):
    """A drawing whose pixels and points encode where it came from."""
    x0 = 10 + 5 * character + drawer
    strokes = [[(x0, -20.0, 0.0), (x0 + 10, -20.0, 100.0)], [(52.5, -52.5, 400.0), (60.0, -70.0, 500.0)]]
    return glyph_png((x0, 10, x0 + 20, 30)), stroke_txt(strokes)


def write_omniglot(root: Path, layout=OMNI_LAYOUT, tamper=None) -> Path:
    for part, alphabets in layout.items():
        images: dict[str, bytes | None] = {f"images_background_small{part}/": None}
        strokes: dict[str, bytes | None] = {
            f"strokes_background_small{part}/": None,
            f"strokes_background_small{part}/.DS_Store": b"\x00junk",
            "__MACOSX/": None,
            f"__MACOSX/strokes_background_small{part}/._.DS_Store": b"\x00junk",
        }
        for alphabet, characters in alphabets.items():
            for c in characters:
                folder = f"{alphabet}/character{c:02d}"
                for d in DRAWERS:
                    png, txt = drawing(alphabet, c, d)
                    if tamper is not None:
                        png, txt = tamper(part, alphabet, c, d, png, txt)
                    stem = f"{c:04d}_{d:02d}"  # <character id>_<drawer>
                    images[f"images_background_small{part}/{folder}/{stem}.png"] = png
                    strokes[f"strokes_background_small{part}/{folder}/{stem}.txt"] = txt
        write_zip(root / f"omniglot/images_background_small{part}.zip", images)
        write_zip(root / f"omniglot/strokes_background_small{part}.zip", strokes)
    return root


def test_omniglot_registered_spec():
    task = TASKS.get("omniglot")
    assert dict(task.spec.modalities) == {"glyph": "image", "strokes": "timeseries"}
    assert task.spec.num_classes == 242
    assert omniglot.ALPHABET_SPEC.target == "alphabet" and omniglot.ALPHABET_SPEC.num_classes == 8
    assert sorted(task.source_files) == sorted(omniglot.SOURCE_FILES) and len(task.source_files) == 4


def test_omniglot_splits_dedup_labels(tmp_path: Path):
    dd = omniglot.build(write_omniglot(tmp_path), quiet=True)
    # unique characters: Greek 1, 2 (in both zips), Korean 1, Latin 1 -> 4 characters x 4 drawers
    assert {s: len(dd[s]) for s in dd} == {"train": 8, "validation": 4, "test": 4}
    assert sorted(set(dd["train"]["drawer"])) == [1, 2]
    assert set(dd["validation"]["drawer"]) == {13} and set(dd["test"]["drawer"]) == {17}
    for split in dd:
        assert sorted(set(dd[split]["label"])) == [0, 1, 2, 3]  # every character in every split
    alphabets = sorted(set(dd["test"]["alphabet"]))
    assert alphabets == sorted(omniglot.ALPHABETS.index(a) for a in ("Greek", "Korean", "Latin"))
    by_alphabet = omniglot.build(tmp_path, label="alphabet", quiet=True)
    assert by_alphabet["test"]["label"] == by_alphabet["test"]["alphabet"]


def test_omniglot_glyph_and_strokes(tmp_path: Path):
    dd = omniglot.build(write_omniglot(tmp_path), quiet=True)
    ds = dd["test"].with_format("numpy")
    row = ds[0]
    assert row["glyph"].shape == (28, 28, 1)
    assert row["strokes"].dtype == np.float32 and row["strokes"].shape == (4, 4)
    x, y, t, pen = row["strokes"].T
    np.testing.assert_allclose(pen, [1, 0, 1, 0])
    np.testing.assert_allclose(t, [0.0, 0.1, 0.4, 0.5], atol=1e-6)
    np.testing.assert_allclose([x[2], y[2]], [0.0, 0.0], atol=1e-6)  # (52.5, -52.5) is the centre
    assert y[3] > y[2], "y must grow downwards like image rows"
    # ink = high; the rectangle sits in rows 10-30 of 105 -> rows ~2.7-8 of 28
    glyph = np.asarray(row["glyph"][..., 0])
    assert glyph.max() == 255 and glyph[:2].max() == 0 and glyph[4:7].max() > 200
    full = omniglot.build(tmp_path, image_size=105, quiet=True)["test"].with_format("numpy")[0]["glyph"]
    assert full.shape == (105, 105, 1) and set(np.unique(full)) == {0, 255}


def test_omniglot_stroke_subsampling_keeps_pen_downs():
    strokes = [np.column_stack([np.arange(n), -np.arange(n), 10.0 * np.arange(n)]).astype(float) for n in (100, 3, 50)]
    seq = omniglot.stroke_sequence(strokes, max_points=16)
    assert seq.shape == (16, 4) and seq.dtype == np.float32
    assert seq[:, 3].sum() == 3, "each stroke's pen-down survives subsampling"
    assert seq[0, 3] == 1 and seq[0, 2] == 0.0
    np.testing.assert_allclose(seq[-1, :2], 2.0 * np.array([49.0, 49.0]) / 105 - 1, atol=1e-6)
    short = omniglot.stroke_sequence(strokes[1:2], max_points=16)
    assert short.shape == (3, 4)


def test_omniglot_deterministic_and_warns_on_differing_duplicate(tmp_path: Path):
    root = write_omniglot(tmp_path)
    assert table_equal(omniglot.build(root, quiet=True), omniglot.build(root, quiet=True))

    def tamper(part, alphabet, c, d, png, txt):
        return (glyph_png((0, 0, 5, 5)), txt) if (part, alphabet, c, d) == (2, "Greek", 1, 17) else (png, txt)

    other = write_omniglot(tmp_path / "tampered", tamper=tamper)
    with pytest.warns(UserWarning, match="differs between small1 and small2"):
        dd = omniglot.build(other, quiet=True)
    assert len(dd["test"]) == 4


def test_omniglot_corrupt_files_name_member(tmp_path: Path):
    def bad_png(part, alphabet, c, d, png, txt):
        return (png[:40], txt) if (part, alphabet, c, d) == (1, "Korean", 1, 13) else (png, txt)

    root = write_omniglot(tmp_path / "png", tamper=bad_png)
    with pytest.raises(ValueError, match="Korean/character01/0001_13.png"):
        omniglot.build(root, quiet=True)

    def bad_strokes(part, alphabet, c, d, png, txt):
        return (png, b"START\n1.0,2.0\nBREAK\n") if (part, alphabet, c, d) == (2, "Latin", 1, 2) else (png, txt)

    root = write_omniglot(tmp_path / "txt", tamper=bad_strokes)
    with pytest.raises(ValueError, match="Latin/character01/0001_02.txt"):
        omniglot.build(root, quiet=True)
    zip_path = root / "omniglot/images_background_small2.zip"
    zip_path.write_bytes(zip_path.read_bytes()[:100])
    with pytest.raises(ValueError, match="images_background_small2.zip"):
        omniglot.build(root, quiet=True)


# ------------------------------------------------------------------------------------------------
# sentiment / subjectivity

def write_corpus(root: Path, task: str, n: int = 20) -> dict[str, list[str]]:
    zip_file, members, _ = text_corpora.CORPORA[task]
    folder = members[0][0].split("/")[0]
    lines = {m: [f"{label} {m.rsplit('/', 1)[1]} sentence {i} ." for i in range(n)] for m, label in members}
    content: dict[str, bytes | None] = {f"{folder}/": None, f"{folder}/README.txt": b"readme"}
    content.update({m: ("\n".join(v) + "\n").encode() for m, v in lines.items()})
    write_zip(root / zip_file, content)
    return lines


@pytest.mark.parametrize("task", ["sentiment", "subjectivity"])
def test_text_corpus_split_and_labels(tmp_path: Path, task: str):
    lines = write_corpus(tmp_path, task)
    spec = TASKS.get(task).spec
    assert dict(spec.modalities) == {"text": "text"} and spec.num_classes == 2
    dd = TASKS.get(task).build(tmp_path, quiet=True)
    assert {s: len(dd[s]) for s in dd} == {"train": 32, "validation": 4, "test": 4}
    # the README recipe, applied by hand: positive/subjective first, labelled 1
    members = text_corpora.CORPORA[task][1]
    texts = lines[members[0][0]] + lines[members[1][0]]
    y = np.array([1] * 20 + [0] * 20)
    tr, rest = train_test_split(np.arange(40), test_size=0.2, stratify=y, random_state=0)
    va, te = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=0)
    for split, idx in (("train", tr), ("validation", va), ("test", te)):
        assert dd[split]["text"] == [texts[i] for i in sorted(idx)]
        assert dd[split]["label"] == [int(y[i]) for i in sorted(idx)]
        assert all(t.startswith(str(label)) for t, label in zip(dd[split]["text"], dd[split]["label"]))
    assert table_equal(dd, TASKS.get(task).build(tmp_path, quiet=True))


def test_text_latin1_fallback_and_corrupt_zip(tmp_path: Path):
    zip_file, members, _ = text_corpora.CORPORA["sentiment"]
    write_zip(tmp_path / zip_file, {
        members[0][0]: "\n".join(f"caf\xe9 {i}" for i in range(10)).encode("latin-1"),
        members[1][0]: "\n".join(f"bad {i}" for i in range(10)).encode(),
    })
    with pytest.warns(UserWarning, match="rt-polarity.pos.*latin-1"):
        dd = TASKS.get("sentiment").build(tmp_path, quiet=True)
    assert any(t.startswith("café") for s in dd for t in dd[s]["text"])
    path = tmp_path / zip_file
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="sentence_polarity.zip"):
        TASKS.get("sentiment").build(tmp_path, quiet=True)


# ------------------------------------------------------------------------------------------------
# robot failures

def write_lp(
    root: Path, lp: int, per_class: int | list[int] = 10, truncate: bool = False
) -> tuple[np.ndarray, list[str]]:
    names = robot_failures.CLASS_NAMES[lp]
    counts = [per_class] * len(names) if isinstance(per_class, int) else per_class
    rng = np.random.default_rng(lp)
    order = [name for name, n in zip(names, counts) for _ in range(n)]
    rng.shuffle(order)
    x = rng.integers(-3000, 3000, size=(len(order), 15, 6))
    text = []
    for i, (name, block) in enumerate(zip(order, x)):
        rows = block[:10] if truncate and i == len(order) - 1 else block
        text += [name] + ["\t" + "\t".join(str(v) for v in row) for row in rows] + ["", ""]
    (root / "robot_failures").mkdir(parents=True, exist_ok=True)
    (root / f"robot_failures/lp{lp}.data").write_text("\n".join(text))
    return x, order


def test_robot_tasks_registered():
    assert robot_failures.ROBOT_TASKS == [f"robot_failures_lp{i}" for i in range(1, 6)]
    for lp, name in enumerate(robot_failures.ROBOT_TASKS, start=1):
        spec = TASKS.get(name).spec
        assert dict(spec.modalities) == {"force_torque": "timeseries"}
        assert list(spec.class_names) == sorted(spec.class_names) and spec.num_classes == len(spec.class_names)
    assert TASKS.get("robot_failures_lp3").spec.num_classes == 4


def test_robot_failures_split_transform_folds(tmp_path: Path):
    x, order = write_lp(tmp_path, 1)
    build = TASKS.get("robot_failures_lp1").build
    dd = build(tmp_path, quiet=True)
    assert {s: len(dd[s]) for s in dd} == {"train": 25, "validation": 7, "test": 8}  # 40 -> 8 test, 32 -> 7 val
    names = robot_failures.CLASS_NAMES[1]
    y = np.array([names.index(n) for n in order])
    raw = build(tmp_path, transform="none", quiet=True)
    seen = []
    for split in dd:
        ds, rs = dd[split].with_format("numpy"), raw[split].with_format("numpy")
        values = np.asarray(ds[:]["force_torque"])
        assert values.shape[1:] == (15, 6) and values.dtype == np.float32
        raw_values = np.asarray(rs[:]["force_torque"])
        np.testing.assert_allclose(values, np.sign(raw_values) * np.log1p(np.abs(raw_values)), rtol=1e-6)
        # map rows back to file positions through their (unique) raw readings
        for v, label in zip(raw_values, ds[:]["label"]):
            pos = int(np.flatnonzero((x == v).all(axis=(1, 2)))[0])
            assert y[pos] == label
            seen.append(pos)
        assert np.bincount(ds[:]["label"], minlength=4).min() >= 1, f"{split} misses a class"
    assert sorted(seen) == list(range(40)), "splits must partition the file"
    folds = np.concatenate([dd[s]["fold"] for s in dd])
    assert sorted(set(folds.tolist())) == [0, 1, 2, 3, 4] and np.bincount(folds).tolist() == [8] * 5
    assert table_equal(dd, build(tmp_path, quiet=True))


def test_robot_failures_lp3_three_folds_and_fallback(tmp_path: Path):
    write_lp(tmp_path, 3, per_class=[1, 6, 6, 6])  # one instance of 'lost': cannot stratify
    with pytest.warns(UserWarning, match="cannot stratify"):
        dd = TASKS.get("robot_failures_lp3").build(tmp_path, quiet=True)
    assert sum(len(dd[s]) for s in dd) == 19
    assert set(np.concatenate([dd[s]["fold"] for s in dd]).tolist()) == {0, 1, 2}


def test_robot_failures_bad_files_name_file(tmp_path: Path):
    write_lp(tmp_path, 2, truncate=True)
    with pytest.raises(ValueError, match="lp2.data.*truncated"):
        TASKS.get("robot_failures_lp2").build(tmp_path, quiet=True)
    path = tmp_path / "robot_failures/lp4.data"
    path.write_text("normal\n" + "\t1\t2\t3\t4\t5\t6\n" * 15 + "\nexploded\n")
    with pytest.raises(ValueError, match="lp4.data: line 18.*'exploded'"):
        TASKS.get("robot_failures_lp4").build(tmp_path, quiet=True)
    with pytest.raises(ValueError, match="transform"):
        TASKS.get("robot_failures_lp4").build(tmp_path, transform="zscore", quiet=True)


# ------------------------------------------------------------------------------------------------
# the real data (slow)

def skip_without_real_data(task: str) -> None:
    if not REAL_DATA.is_dir() or TASKS.get(task).missing_files(REAL_DATA):
        pytest.skip(f"real data for {task!r} not found under {REAL_DATA} (set HIGHMMT_DATA)")


def real_build(task: str, expected_sizes: dict[str, int]):
    builtin = TASKS.get(task)
    skip_without_real_data(task)
    start = time.perf_counter()
    dd = builtin.build(REAL_DATA, **builtin.options, quiet=True)
    print(f"{task}: built in {time.perf_counter() - start:.1f} s")
    assert {s: len(dd[s]) for s in dd} == expected_sizes
    for split in dd:
        assert max(dd[split]["label"]) < builtin.spec.num_classes
    return dd


def test_real_avmnist(monkeypatch):
    fitted = {}

    def pca_spy(*args, **kwargs):  # the build's own PCA, checked below without fitting it twice
        out = real_pca(*args, **kwargs)
        fitted.update(k=out[1], kept=out[2], images=len(args[0]))
        return out

    real_pca = avmnist.pca_degrade
    monkeypatch.setattr(avmnist, "pca_degrade", pca_spy)
    dd = real_build("avmnist", {"train": 55_000, "validation": 5_000, "test": 10_000})
    test_clips = dd["test"]["clip"]
    assert {c.split("_")[1] for c in test_clips} == {"george", "lucas"}
    assert {c.split("_")[1] for c in dd["train"]["clip"]} == set(avmnist.TRAIN_SPEAKERS)
    assert {c.split("_")[1] for c in dd["validation"]["clip"]} == {"yweweler"}
    clips = {split: set(dd[split]["clip"]) for split in dd}
    assert not clips["train"] & clips["validation"] and not clips["train"] & clips["test"] and not clips["validation"] & clips["test"]
    assert np.bincount(dd["test"]["label"]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    row = dd["validation"].with_format("numpy")[0]
    assert row["mnist_image"].shape == (28, 28, 1) and row["fsdd_audio"].dtype == np.float32
    # the data README's recipe: PCA on the 60,000 training images; 4 components keep 28.4% of the variance
    assert fitted["images"] == 60_000 and fitted["k"] == 4 and abs(fitted["kept"] - 0.284) < 0.001


def test_real_fsdd_has_3000_clips_of_6_speakers():
    if not (REAL_DATA / avmnist.FSDD_ZIP).exists():
        pytest.skip(f"{REAL_DATA / avmnist.FSDD_ZIP} not found (set HIGHMMT_DATA)")
    clips = avmnist.read_fsdd(REAL_DATA / avmnist.FSDD_ZIP,
                             avmnist.TRAIN_SPEAKERS + avmnist.VALIDATION_SPEAKERS + avmnist.TEST_SPEAKERS, quiet=True)
    assert len(clips) == 3000 and len({k[0] for k in clips}) == 6


def test_real_omniglot():
    dd = real_build("omniglot", {"train": 2904, "validation": 968, "test": 968})
    assert len(set(dd["train"]["label"])) == 242
    assert np.bincount(dd["test"]["alphabet"]).tolist() == [96, 88, 96, 188, 160, 104, 168, 68]


@pytest.mark.parametrize("task,sizes,test_counts", [
    ("sentiment", {"train": 8529, "validation": 1066, "test": 1067}, [534, 533]),
    ("subjectivity", {"train": 8000, "validation": 1000, "test": 1000}, [500, 500]),
])
def test_real_text(task, sizes, test_counts):
    dd = real_build(task, sizes)
    assert np.bincount(dd["test"]["label"]).tolist() == test_counts


def test_real_robot_failures():
    totals = {}
    for lp, name in enumerate(robot_failures.ROBOT_TASKS, start=1):
        n = {1: 88, 2: 47, 3: 47, 4: 117, 5: 164}[lp]
        skip_without_real_data(name)
        dd = TASKS.get(name).build(REAL_DATA, quiet=True)
        totals[name] = sum(len(dd[s]) for s in dd)
        assert totals[name] == n
        assert len(set(np.concatenate([dd[s]["fold"] for s in dd]).tolist())) == robot_failures.NUM_FOLDS[lp]
    assert sum(totals.values()) == 463
