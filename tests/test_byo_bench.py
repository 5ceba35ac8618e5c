"""The bring-your-own accuracy study's exporter: loader-shaped splits -> parquet + a spec with no options.

Option inference itself is tested in test_spec_inference.py; here: every export writes a spec that
``python -m tasks.check`` accepts, states no ``modality_options``, and whose inferred options are what
the loader's columns hold (loader column types converted: fixed-size lists, Array2D, NaN for missing).
"""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import yaml

from experiments import byo_bench
from tasks import check
from tasks.byo import spec_text_defaults
from tasks.cache import array_feature, samples_to_dataset

N = 24  # rows per split; every class of every export appears in each split


def _loader_split(source: str, seed: int) -> datasets.Dataset:
    """A tiny split with the loader's own column types (tasks/<source>.py)."""
    rng = np.random.default_rng(seed)
    if source in ("sentiment", "subjectivity"):
        words = ["good", "bad", "plot", "film", "!", ",", "dull"]
        return datasets.Dataset.from_dict({"text": [" ".join(rng.choice(words, 5)) for _ in range(N)],
                                           "label": [i % 2 for i in range(N)]})
    if source == "utd_mhad":
        feats = datasets.Features({"inertial": array_feature((6,), "float32"), "label": datasets.ClassLabel(num_classes=27)})
        return samples_to_dataset([{"inertial": rng.standard_normal((64, 6)).astype(np.float32), "label": i % 27}
                                   for i in range(27)], feats)
    if source == "omniglot":
        feats = datasets.Features({"strokes": datasets.Array2D(shape=(None, 4), dtype="float32"),
                                   "alphabet": datasets.Value("int64")})
        return datasets.Dataset.from_dict({"strokes": [rng.standard_normal((int(rng.integers(3, 20)), 4)).astype(np.float32)
                                                       for _ in range(N)], "alphabet": [i % 8 for i in range(N)]}, features=feats)
    if source == "physionet_mortality":
        feats = datasets.Features({"static": {"numeric": datasets.List(datasets.Value("float32")),
                                              "numeric_observed": datasets.List(datasets.Value("bool")),
                                              "categorical": datasets.List(datasets.Value("int64"))},
                                   "label": datasets.ClassLabel(names=["survived", "died"])})
        rows = [{"static": {"numeric": rng.standard_normal(4).astype(np.float32), "numeric_observed": rng.random(4) > 0.2,
                            "categorical": np.array([-1 if i == 5 else i % 4], np.int64)}, "label": i % 2} for i in range(N)]
        return samples_to_dataset(rows, feats)
    raise AssertionError(source)


EXPECTED = {  # what the spec loader infers from the exported data, the spec stating none of it
    "byo_sentiment": {"review": spec_text_defaults(2)},
    "byo_utd_inertial": {"imu": {"channels": 6}},
    "byo_omniglot_strokes": {"strokes": {"channels": 4}},
    "byo_omniglot_strokes_px": {"strokes": {"channels": 4}},
    "byo_physionet_static": {"descriptors": {"num_numeric": 4, "categorical_cardinalities": [4]}},
    "byo_subjectivity_stats": {"sentence": spec_text_defaults(2), "stats": {"num_numeric": 3}},
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_exported_spec_passes_the_check_with_no_modality_options(name, tmp_path, capsys):
    export = byo_bench.exports()[name]
    splits = {s: _loader_split(export.source, i) for i, s in enumerate(byo_bench.SPLITS)}
    spec_file = byo_bench.write_task(tmp_path / name, name, export, splits)

    spec = yaml.safe_load(spec_file.read_text())
    assert "modality_options" not in spec and spec["modalities"] == export.modalities
    assert check.main([str(spec_file), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "every row reads" in capsys.readouterr().out
    inferred = byo_bench.inferred_options(spec_file)
    assert inferred["modality_options"] == EXPECTED[name]
    assert inferred["rows"] == {s: len(d) for s, d in splits.items()}  # the loader's own splits, none carved


def test_missing_descriptors_become_nan_and_the_work_dir_stays_out_of_the_repo(tmp_path):
    export = byo_bench.exports()["byo_physionet_static"]
    ds = _loader_split("physionet_mortality", 0)
    cells = export.columns(ds, "train")["descriptors"].to_pylist()
    observed = ds.with_format("numpy")["static"]
    for cell, row in zip(cells, observed):
        assert np.array_equal(np.isnan(np.asarray(cell["numeric"], float)), ~np.asarray(row["numeric_observed"], bool))
    with pytest.raises(ValueError, match="inside the repository"):
        byo_bench.main(["--work-dir", str(byo_bench.ROOT / "byo_data"), "--export-only"])


def test_pixel_grid_strokes_lose_the_alphabet_lattice_and_keep_the_rest():
    """Two drawings on lattices of different steps (as two alphabets' canvases): the plain export keeps the
    steps apart, the pixel-grid export gives both the glyph's pixel step; t and pen are untouched."""
    from experiments.strokes_lattice import coordinate_step
    from tasks.omniglot import NATIVE_SIZE

    pixel = 2.0 / NATIVE_SIZE
    rows = []
    for step in (0.7 * pixel, 0.85 * pixel):
        xy = -0.5 + step * np.arange(12, dtype=np.float64)
        rows.append(np.stack([xy, xy[::-1], np.linspace(0, 1, 12), (np.arange(12) % 5 == 0)], 1).astype(np.float32))
    feats = datasets.Features({"strokes": datasets.Array2D(shape=(None, 4), dtype="float32"), "alphabet": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict({"strokes": rows, "alphabet": [0, 1]}, features=feats)
    plain = [np.array(r) for r in byo_bench.exports()["byo_omniglot_strokes"].columns(ds, "train")["strokes"].to_pylist()]
    snapped = [np.array(r) for r in byo_bench.exports()["byo_omniglot_strokes_px"].columns(ds, "train")["strokes"].to_pylist()]
    assert abs(coordinate_step(plain[0]) - coordinate_step(plain[1])) > 0.1 * pixel
    for raw, px in zip(plain, snapped):
        assert coordinate_step(px) == pytest.approx(pixel, abs=1e-4)
        assert np.abs(px[:, :2] - raw[:, :2]).max() <= pixel / 2 + 1e-6  # moved by at most half a pixel
        on_grid = (px[:, :2] + 1.0) * NATIVE_SIZE / 2.0
        assert np.allclose(on_grid, np.round(on_grid), atol=1e-3)
        assert np.array_equal(px[:, 2:], raw[:, 2:])
