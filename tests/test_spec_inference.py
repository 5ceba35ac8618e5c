"""Bring-your-own specs: what the data says is inferred, recorded and checked; the text default learns."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest
import soundfile
import torch
import yaml
from datasets.table import InMemoryTable

import train
from highmmt import HighMMT
from modalities.image import ImageEmbedder
from tasks.byo import load_byo_spec, spec_text_defaults
from tasks.cache import load_task, rows_to_samples
from tasks.loader import predict, score

RATE = 4000
AUDIO_CELL = pa.struct({"bytes": pa.binary(), "path": pa.string()})


def _wav(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    wave = np.repeat((0.3 * np.sin(2 * np.pi * freq * t))[:, None], channels, axis=1)
    buf = io.BytesIO()
    soundfile.write(buf, wave, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _png(h: int, w: int, mode: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (w, h)).save(buf, format="PNG")
    return buf.getvalue()


def _dataset(columns: dict[str, list], features: dict[str, object]) -> datasets.Dataset:
    """A Dataset built in Arrow (``datasets.Audio`` would need torchcodec to encode through from_dict)."""
    feats = datasets.Features(features)
    table = pa.table({k: pa.array(v, type=getattr(feats[k], "pa_type", None)) for k, v in columns.items()})
    return datasets.Dataset(InMemoryTable(table.cast(feats.arrow_schema)), info=datasets.DatasetInfo(features=feats))


def _kinds_split(n: int, seed: int, rates: tuple[int, ...] = (RATE,)) -> datasets.Dataset:
    """One row per sample of every kind whose options the data tells, no option given anywhere."""
    rng = np.random.default_rng(seed)
    num = lambda shape: rng.standard_normal(shape).astype(np.float32).tolist()  # noqa: E731
    columns = {
        "photo": [rng.integers(0, 255, (6, 5, 3)).tolist() for _ in range(n)],  # [h][w][c], c = 3
        "gray": [rng.integers(0, 255, (4, 4)).tolist() for _ in range(n)],  # [h][w]: one channel
        "row": [{"numeric": num(4), "categorical": [i % 3, int(rng.integers(0, 7))]} for i in range(n)],
        "flat": [num(5) for _ in range(n)],  # a tabular list column: 5 numeric features
        "imu": [num((int(rng.integers(3, 9)), 6)) for _ in range(n)],  # variable t, 6 channels
        "skeleton": [num((int(rng.integers(2, 5)), 7, 2)) for _ in range(n)],
        "points": [num((int(rng.integers(1, 4)), 2)) for _ in range(n)],
        "vitals": [{"values": num((3, 4)), "times": [0.0, 1.0, 2.5]} for _ in range(n)],
        "clip": [{"bytes": _wav(0.1, rates[i % len(rates)]), "path": None} for i in range(n)],
        "label": [i % 3 for i in range(n)],
    }
    features = {
        "photo": datasets.List(datasets.List(datasets.List(datasets.Value("uint8")))),
        "gray": datasets.List(datasets.List(datasets.Value("uint8"))),
        "row": {"numeric": datasets.List(datasets.Value("float32")), "categorical": datasets.List(datasets.Value("int64"))},
        "flat": datasets.List(datasets.Value("float32")),
        "imu": datasets.List(datasets.List(datasets.Value("float32"))),
        "skeleton": datasets.List(datasets.List(datasets.List(datasets.Value("float32")))),
        "points": datasets.List(datasets.List(datasets.Value("float32"))),
        "vitals": {"values": datasets.List(datasets.List(datasets.Value("float32"))),
                   "times": datasets.List(datasets.Value("float32"))},
        "clip": datasets.Audio(),
        "label": datasets.ClassLabel(names=["a", "b", "c"]),
    }
    return _dataset(columns, features)


KINDS = {"photo": "image", "gray": "image", "row": "tabular", "flat": "tabular", "imu": "timeseries", "skeleton": "pose",
         "points": "set", "vitals": "irregular_timeseries", "clip": "audio"}
INFERRED = {
    "photo": {"channels": 3, "image_size": [6, 5]},
    "gray": {"channels": 1, "image_size": [4, 4]},
    "row": {"num_numeric": 4, "categorical_cardinalities": [3, 7]},
    "flat": {"num_numeric": 5},
    "imu": {"channels": 6},
    "skeleton": {"joints": 7, "coords": 2},
    "points": {"channels": 2},
    "vitals": {"channels": 4},
    "clip": {"sample_rate": RATE},
}


def _write(folder: Path, spec: dict, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def kinds_task(tmp_path_factory) -> Path:
    """A save_to_disk task with every kind above; the test split holds a categorical code train never has."""
    folder = tmp_path_factory.mktemp("kinds")
    test = _kinds_split(9, 1)
    rows = test.data.table.column("row").to_pylist()
    rows[0]["categorical"] = [0, 9]
    test = test.remove_columns("row").add_column("row", pa.array(rows), feature=test.features["row"])
    datasets.DatasetDict({"train": _kinds_split(30, 0), "test": test}).save_to_disk(str(folder / "hf"))
    return folder


def test_every_option_the_data_tells_is_inferred_and_recorded(kinds_task):
    spec, splits = load_byo_spec(_write(kinds_task, {"name": "kinds", "path": "hf", "modalities": KINDS, "target": "label"}))
    # categorical cardinalities cover every split (code 9 is only in test): the embedding table has its row
    assert dict(spec.modality_options) == {**INFERRED, "row": {"num_numeric": 4, "categorical_cardinalities": [3, 10]}}
    assert spec.num_classes == 3 and list(spec.class_names) == ["a", "b", "c"]
    assert splits["train"].features["clip"] == datasets.List(datasets.Value("float32"))  # decoded once, at load
    samples, _ = rows_to_samples(splits["test"], [0, 1], spec)
    assert samples["clip"][0].shape == (int(0.1 * RATE),) and samples["clip"][0].dtype == np.float32
    assert np.abs(samples["clip"][0]).max() == pytest.approx(0.3, abs=1e-3)


def test_a_run_records_the_inferred_options_and_its_checkpoint_rebuilds_them(kinds_task, tmp_path):
    spec_path = _write(kinds_task, {"name": "kinds", "path": "hf", "modalities": KINDS, "target": "label"}, "run.yaml")
    out = train.main(["--preset", "tiny", "--tasks", str(spec_path), "--output-dir", str(tmp_path / "run"), "--quiet",
                      "--cpu", "--set", "train.epochs=1", "--set", "train.steps_per_epoch=2", "--set", "train.precision=fp32",
                      "--set", "train.threads=1"])
    config = json.loads((out / "config.json").read_text())
    recorded = config["tasks"]["kinds"]["modality_options"]
    assert recorded["photo"] == INFERRED["photo"] and recorded["row"]["num_numeric"] == 4
    assert {m: c["options"] for m, c in config["model"]["modalities"].items()}["imu"] == {"channels": 6}
    model = HighMMT.from_pretrained(out)
    assert model.embedders["photo"].channels == 3 and model.embedders["clip"].sample_rate == RATE
    assert model.embedders["skeleton"].joints == 7 and model.embedders["row"].cardinalities == (3, 10)
    lt = load_task(spec_path, quiet=True)  # what evaluate.py does: the spec again, the same options
    assert lt.spec.modality_options == recorded
    outputs, y = predict(model.eval(), lt.splits["test"], lt.spec, batch_size=8, device=torch.device("cpu"))
    assert 0.0 <= score(lt.spec, outputs, y)["accuracy"] <= 1.0


@pytest.mark.parametrize(
    ("column", "option", "value", "arrived"),
    [
        ("photo", "channels", 1, "channels = 3"),
        ("photo", "image_size", [28, 28], "image_size = [6, 5]"),
        ("row", "num_numeric", 3, "num_numeric = 4"),
        ("row", "categorical_cardinalities", [3, 5], "categorical_cardinalities = [3, 10]"),
        ("imu", "channels", 3, "channels = 6"),
        ("skeleton", "joints", 20, "joints = 7"),
        ("clip", "sample_rate", 8000, f"sample_rate = {RATE}"),
    ],
)
def test_a_stated_option_the_data_contradicts_is_an_error(kinds_task, column, option, value, arrived):
    spec = {"name": "kinds", "path": "hf", "modalities": KINDS, "target": "label", "modality_options": {column: {option: value}}}
    path = _write(kinds_task, spec, f"bad_{column}_{option}.yaml")
    with pytest.raises(ValueError) as err:
        load_byo_spec(path)
    msg = str(err.value)
    assert str(path) in msg and f"modality_options.{column}.{option}" in msg, msg
    assert f"the spec says {option}: {value!r}" in msg and f"column {column!r} of split 'train' has {arrived}" in msg, msg


def test_stated_options_that_agree_are_kept(kinds_task):
    stated = {"photo": {"channels": 3, "image_size": [6, 5], "patch_size": 2}, "gray": {"image_size": 4},
              "row": {"categorical_cardinalities": [3, 12]}, "clip": {"sample_rate": RATE, "n_mels": 16}}
    spec, _ = load_byo_spec(_write(kinds_task, {"name": "kinds", "path": "hf", "modalities": KINDS, "target": "label",
                                                "modality_options": stated}, "agree.yaml"))
    assert spec.modality_options["photo"] == {"channels": 3, "image_size": [6, 5], "patch_size": 2}
    assert spec.modality_options["gray"]["image_size"] == 4  # the spec's own spelling of [4, 4]
    assert spec.modality_options["row"]["categorical_cardinalities"] == [3, 12]  # larger than the data needs: fine
    assert spec.modality_options["clip"] == {"sample_rate": RATE, "n_mels": 16}


def test_num_classes_against_a_classlabel_and_from_a_list_target(kinds_task, tmp_path):
    path = _write(kinds_task, {"name": "kinds", "path": "hf", "modalities": {"imu": "timeseries"}, "target": "label",
                               "num_classes": 4}, "classes.yaml")
    with pytest.raises(ValueError, match=r"key 'num_classes': the spec says 4, but target column 'label' is a ClassLabel with 3"):
        load_byo_spec(path)
    rng = np.random.default_rng(0)
    part = lambda n: datasets.Dataset.from_dict({"x": rng.standard_normal((n, 4, 2)).tolist(),  # noqa: E731
                                                 "tags": rng.integers(0, 2, (n, 5)).tolist()})
    datasets.DatasetDict({"train": part(20), "test": part(6)}).save_to_disk(str(tmp_path / "multi"))
    spec, _ = load_byo_spec(_write(tmp_path, {"name": "multi", "path": "multi", "modalities": {"x": "timeseries"},
                                              "target": "tags", "task_type": "multilabel"}))
    assert spec.num_classes == 5 and spec.metric == "auroc"


def test_rows_that_disagree_name_the_column(tmp_path):
    part = datasets.Dataset.from_dict({"imu": [[[0.0, 1.0]] * 3, [[0.0, 1.0, 2.0]] * 4], "label": [0, 1]})
    datasets.DatasetDict({"train": part, "test": part}).save_to_disk(str(tmp_path / "hf"))
    path = _write(tmp_path, {"name": "t", "path": "hf", "modalities": {"imu": "timeseries"}, "target": "label", "num_classes": 2})
    with pytest.raises(ValueError, match=r"key 'modalities.imu': split 'train': the rows of column 'imu' have "
                                         r"channel counts \[2, 3\]; every row needs the same number") as err:
        load_byo_spec(path)
    assert str(path) in str(err.value)


def test_image_columns_and_variable_sizes(tmp_path):
    """``datasets.Image``: channels from the files' bands; mixed sizes record no image_size (images keep theirs)."""
    part = _dataset({"pic": [{"bytes": _png(8, 6, "RGB"), "path": None}] * 3 + [{"bytes": _png(5, 6, "RGB"), "path": None}],
                     "label": [0, 1, 0, 1]}, {"pic": datasets.Image(), "label": datasets.Value("int64")})
    datasets.DatasetDict({"train": part, "test": part}).save_to_disk(str(tmp_path / "hf"))
    spec, splits = load_byo_spec(_write(tmp_path, {"name": "t", "path": "hf", "modalities": {"pic": "image"},
                                                   "target": "label", "num_classes": 2}))
    assert spec.modality_options["pic"] == {"channels": 3}
    samples, _ = rows_to_samples(splits["test"], [0], spec)
    assert samples["pic"][0].shape == (8, 6, 3)
    with pytest.raises(ValueError, match=r"modality_options.pic.channels': the spec says channels: 4, .* has channels = 3"):
        load_byo_spec(_write(tmp_path, {"name": "t", "path": "hf", "modalities": {"pic": "image"}, "target": "label",
                                        "num_classes": 2, "modality_options": {"pic": {"channels": 4}}}, "four.yaml"))


def test_image_size_option_resizes_in_collate():
    batch = ImageEmbedder.collate([np.full((6, 5, 3), 200, np.uint8), np.full((12, 10, 3), 100, np.uint8)],
                                  channels=3, image_size=[6, 5])
    assert batch["x"].shape == (2, 6, 5, 3) and batch["x"].dtype == torch.uint8 and bool(batch["mask"].all())
    assert int(batch["x"][0].min()) == 200 and int(batch["x"][1].max()) == 100  # a flat image stays flat
    assert ImageEmbedder.collate([np.zeros((3, 3, 1), np.float32)], image_size=4)["x"].shape == (1, 4, 4, 1)
    with pytest.raises(ValueError, match=r"option 'image_size' must be \[h, w\] or one integer"):
        ImageEmbedder(name="i", dim=8, image_size=[1, 2, 3])


def test_audio_rates_mixed_resampled_or_refused(tmp_path):
    mixed = _kinds_split(4, 0, rates=(RATE, 2 * RATE)).select_columns(["clip", "label"])
    datasets.DatasetDict({"train": mixed, "test": mixed}).save_to_disk(str(tmp_path / "hf"))
    base = {"name": "t", "path": "hf", "modalities": {"clip": "audio"}, "target": "label"}
    with pytest.raises(ValueError, match=r"'modalities.clip': split 'train': the audio files have sample rates \[4000, 8000\]"):
        load_byo_spec(_write(tmp_path, base))
    spec, splits = load_byo_spec(_write(tmp_path, {**base, "modality_options": {"clip": {"sample_rate": RATE}}}, "picked.yaml"))
    samples, _ = rows_to_samples(splits["test"], [0, 1], spec)
    assert [len(s) for s in samples["clip"]] == [int(0.1 * RATE)] * 2  # the 8 kHz file resampled to 4 kHz
    stereo = _dataset({"clip": [{"bytes": _wav(0.05, 16000, channels=2), "path": None}] * 2, "label": [0, 1]},
                      {"clip": datasets.Audio(sampling_rate=RATE), "label": datasets.Value("int64")})
    datasets.DatasetDict({"train": stereo, "test": stereo}).save_to_disk(str(tmp_path / "stereo"))
    spec, splits = load_byo_spec(_write(tmp_path, {**base, "path": "stereo", "num_classes": 2}, "stereo.yaml"))
    assert spec.modality_options["clip"] == {"sample_rate": RATE}  # the feature's rate: files resampled to it, mono
    assert rows_to_samples(splits["train"], [0], spec)[0]["clip"][0].shape == (int(0.05 * RATE),)


# ----------------------------------------------------------------------------------------------
# the text default learns


POSITIVE = ["great", "love", "excellent", "perfect", "sturdy", "recommend", "happy", "works"]
NEGATIVE = ["broken", "awful", "refund", "flimsy", "returned", "disappointed", "useless", "waste"]
FILLER = ("the this it i my a product item box arrived after days with for and was is of to on color size battery "
          "cable screen price order seller package use kitchen phone").split()


def _reviews(n: int, seed: int, *, shuffle_labels: bool = False) -> datasets.Dataset:
    """Short synthetic reviews: the label says which word list two of the words come from."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    texts = []
    for y in labels:
        words = list(rng.choice(FILLER, int(rng.integers(6, 14)))) + list(rng.choice(POSITIVE if y else NEGATIVE, 2))
        rng.shuffle(words)
        texts.append(" ".join(words).capitalize() + ".")
    if shuffle_labels:
        labels = rng.permutation(labels)
    stats = rng.standard_normal((n, 3)).astype(np.float32)  # numeric features that carry nothing
    return datasets.Dataset.from_dict({"review": texts, "stats": stats.tolist(), "label": labels.tolist()})


def _text_accuracy(folder: Path, *, shuffle_labels: bool) -> float:
    """Train the tiny preset for 5 epochs (75 steps of 16, ~2 s) on a spec-file review task with no
    modality_options; its test accuracy (seed 0: 1.0 with the default bag of words and its wide read-out
    from a naive Bayes prior, 0.52 on shuffled labels; 0.965 with the read-out from zero; at 10 epochs
    without the read-out 0.99, and 0.885 with positional words + bigrams)."""
    splits = {"train": _reviews(800, 0, shuffle_labels=shuffle_labels), "test": _reviews(200, 1)}
    datasets.DatasetDict(splits).save_to_disk(str(folder / "hf"))
    spec_path = _write(folder, {"name": "reviews", "path": "hf", "modalities": {"review": "text", "stats": "tabular"},
                                "target": "label", "num_classes": 2})
    out = train.main(["--preset", "tiny", "--tasks", str(spec_path), "--output-dir", str(folder / "run"), "--quiet", "--cpu",
                      "--set", "train.precision=fp32", "--set", "train.threads=1", "--set", "train.epochs=5"])
    lt = load_task(spec_path, quiet=True)
    assert lt.spec.modality_options == {"review": spec_text_defaults(2), "stats": {"num_numeric": 3}}
    model = HighMMT.from_pretrained(out).eval()
    assert json.loads((out / "config.json").read_text())["train"]["wide_prior"] == "naive_bayes"
    assert model.heads["reviews"].wide["review"].prior.abs().sum() > 0  # fitted before training, saved with the weights
    return score(lt.spec, *predict(model, lt.splits["test"], lt.spec, batch_size=100, device=torch.device("cpu")))["accuracy"]


def test_default_text_path_learns_a_word_task_above_chance(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "shuffled").mkdir()
    assert _text_accuracy(tmp_path / "real", shuffle_labels=False) >= 0.8
    assert _text_accuracy(tmp_path / "shuffled", shuffle_labels=True) <= 0.65  # nothing to learn: no leak, no trick


def test_evaluate_collates_with_the_run_options_not_the_spec_of_today(tmp_path):
    """A run trained with another tokenizer than the spec's default (here bytes, by override) is
    evaluated with the options in its config.json: byte ids would not fit a word table and vice versa."""
    import evaluate

    splits = {"train": _reviews(64, 0), "test": _reviews(32, 1)}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "hf"))
    spec_path = _write(tmp_path, {"name": "reviews", "path": "hf", "modalities": {"review": "text", "stats": "tabular"},
                                  "target": "label", "num_classes": 2})
    out = train.main(["--preset", "tiny", "--tasks", str(spec_path), "--output-dir", str(tmp_path / "run"), "--quiet", "--cpu",
                      "--set", "train.precision=fp32", "--set", "train.threads=1", "--set", "train.epochs=1",
                      "--set", "train.steps_per_epoch=2", "--set", 'train.modality_options={"review": {"tokenizer": "bytes"}}'])
    evaluate.main(["--checkpoint", str(out), "--quiet", "--no-robustness", "--no-baselines"])
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["reviews"]["accuracy"] <= 1.0
