"""Zero-shot classification of unseen classes (transference/zeroshot.py) on ``synthetic_zeroshot``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import FIXED, fast_isolated_training, killed_after_epoch  # noqa: F401  (a fixture, used through pytestmark)
from safetensors.torch import load_file

import evaluate
import train
from transference import zeroshot
from transference.zeroshot import NO_LABEL, ZeroShotHook, load_classifier, zeroshot_scores

pytestmark = pytest.mark.usefixtures("fast_isolated_training")

TASK = "synthetic_zeroshot"  # 6 classes
UNSEEN = [3, 4, 5]
ZS = ["train.zeroshot.method=contrastive", "train.zeroshot.primary=zs_a", "train.zeroshot.secondary=zs_b",
      f"train.zeroshot.unseen_classes={json.dumps(UNSEEN)}"]


def fit_zs(tmp_path: Path, name: str, *sets: str, seed: int = 0, epochs: int = 3, steps: int = 15, tasks: str = TASK,
           flags: tuple[str, ...] = ()) -> Path:
    out = tmp_path / name
    argv = [*FIXED, "--tasks", tasks, "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"), "--seed", str(seed),
            "--set", f"train.epochs={epochs}", "--set", f"train.steps_per_epoch={steps}", *flags]
    train.main(argv + [a for s in (*ZS, *sets) for a in ("--set", s)])
    return out


def test_zeroshot_scores_split_seen_and_unseen_and_take_their_harmonic_mean():
    target = np.array([0, 0, 1, 1, 2, 2, 3, 3])  # classes 2, 3 unseen
    pred_all = np.array([0, 0, 1, 0, 2, 1, 0, 0])  # seen: 1.0 and 0.5; unseen: 0.5 and 0.0
    pred_unseen = np.array([2, 2, 2, 2, 2, 3, 3, 2])  # among {2, 3}: 0.5 and 0.5
    s = zeroshot_scores(pred_all, pred_unseen, target, [2, 3], 4)
    assert s["zeroshot_seen_accuracy"] == pytest.approx(0.75) and s["zeroshot_unseen_accuracy"] == pytest.approx(0.25)
    assert s["zeroshot_harmonic"] == pytest.approx(2 * 0.75 * 0.25 / 1.0)
    assert s["zeroshot_zsl_accuracy"] == pytest.approx(0.5)
    assert s["zeroshot_chance"] == 0.25 and s["zeroshot_zsl_chance"] == 0.5


def test_training_never_reads_an_unseen_class_label(tmp_path, monkeypatch):
    """Every target the supervised loss gets, and every validation label, is of a seen class; the
    alignment batches carry no label at all; the supervised forward reads the primary alone."""
    supervised, aligned, validated, forwarded = [], [], [], []
    real_loss, real_align, real_validate = train.task_loss, ZeroShotHook.alignment_batch, train.validate
    real_inputs = ZeroShotHook.training_inputs

    def spy_loss(outputs, target, *args, **kwargs):
        supervised.append(target.detach().cpu())
        return real_loss(outputs, target, *args, **kwargs)

    def spy_align(self, device):
        batch = real_align(self, device)
        aligned.append(batch["target"].cpu())
        return batch

    def spy_validate(eval_model, loaded, *args, **kwargs):
        validated.append(np.asarray(loaded[TASK].splits["validation"][loaded[TASK].spec.target]))
        return real_validate(eval_model, loaded, *args, **kwargs)

    def spy_inputs(self, task, inputs):
        kept = real_inputs(self, task, inputs)
        forwarded.append(sorted(kept))
        return kept

    monkeypatch.setattr(train, "task_loss", spy_loss)
    monkeypatch.setattr(ZeroShotHook, "alignment_batch", spy_align)
    monkeypatch.setattr(train, "validate", spy_validate)
    monkeypatch.setattr(ZeroShotHook, "training_inputs", spy_inputs)
    fit_zs(tmp_path, "spied", epochs=2, steps=8)
    seen_targets = torch.cat(supervised)
    assert len(supervised) >= 10 and not torch.isin(seen_targets, torch.tensor(UNSEEN)).any()
    assert set(seen_targets.tolist()) == {0, 1, 2}  # the seen classes are all trained
    assert len(aligned) == len(supervised) and all((t == NO_LABEL).all() for t in aligned)
    assert len(validated) == 2 and not np.isin(np.concatenate(validated), UNSEEN).any()
    assert forwarded and all(m == ["zs_a"] for m in forwarded)


def test_unseen_classes_are_recognized_through_the_aligned_prototypes_and_not_without_alignment(tmp_path):
    """3 of 6 classes never labeled for zs_a. Measured (tiny preset, 3 epochs x 15 steps, seeds 0, 1, 2):
    aligned unseen accuracy 0.929 / 0.917 / 0.857, seen 0.793 / 0.765 / 0.941, harmonic 0.856 / 0.834 /
    0.897; without alignment (weight 0) unseen 0.333 / 0.381 / 0.179, harmonic 0.312 / 0.059 / 0.0;
    chance 1/6 = 0.167."""
    cache = tmp_path / "cache"
    aligned, control = [], []
    for seed in (0, 1, 2):
        for weight, into in ((1.0, aligned), (0.0, control)):
            out = fit_zs(tmp_path, f"s{seed}w{weight}", f"train.zeroshot.weight={weight}", seed=seed)
            into.append(evaluate.main(["--checkpoint", str(out), "--cache-dir", str(cache), "--no-robustness", "--no-baselines",
                                       "--quiet"])[TASK])
    chance = aligned[0]["zeroshot_chance"]
    assert chance == pytest.approx(1 / 6) and aligned[0]["zeroshot_zsl_chance"] == pytest.approx(1 / 3)
    for a, c in zip(aligned, control):
        assert a["zeroshot_unseen_accuracy"] >= chance + 0.5, (a, c)
        assert a["zeroshot_unseen_accuracy"] >= c["zeroshot_unseen_accuracy"] + 0.3, (a, c)
        assert a["zeroshot_seen_accuracy"] >= 0.6 and a["zeroshot_harmonic"] >= 0.6 and a["zeroshot_zsl_accuracy"] >= 0.8, a
    assert np.mean([c["zeroshot_unseen_accuracy"] for c in control]) <= chance + 0.2
    assert np.mean([c["zeroshot_harmonic"] for c in control]) <= 0.35


def test_hook_state_saves_loads_and_resumes(tmp_path, monkeypatch):
    full = fit_zs(tmp_path, "full")
    st = torch.load(full / "trainer_state" / "state.pt", weights_only=True)
    hook_state = st["hooks"]["zeroshot"]
    assert hook_state["config"]["unseen_classes"] == UNSEEN and hook_state["alignment_rows"] == 240
    assert hook_state["train_rows_seen"] + hook_state["train_rows_dropped"] == 240
    assert {k for k in st["extra"]} == {"zeroshot.project.primary.weight", "zeroshot.project.primary.bias",
                                        "zeroshot.project.secondary.weight", "zeroshot.project.secondary.bias",
                                        "zeroshot.prototypes.value"}
    assert set(load_file(str(full / "hooks.safetensors"))) == set(st["extra"])
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["metric"] == "zeroshot_contrastive" for r in rows) == 3
    classifier = load_classifier(full)
    assert classifier.task == TASK and classifier.prototypes.shape == (6, 32) and classifier.prototypes.abs().sum() > 0
    metrics = evaluate.main(["--checkpoint", str(full), "--cache-dir", str(tmp_path / "cache"), "--no-baselines", "--quiet",
                             "--noise-levels", "0.5"])[TASK]  # the robustness sweep runs too (zs_a dropped: no evidence)
    for k in ("zeroshot_seen_accuracy", "zeroshot_unseen_accuracy", "zeroshot_harmonic", "zeroshot_zsl_accuracy"):
        assert 0.0 <= metrics[k] <= 1.0, k

    with killed_after_epoch(monkeypatch, 1):
        fit_zs(tmp_path, "killed")
    with pytest.raises(ValueError, match="resume with the same zero-shot settings"):
        fit_zs(tmp_path, "killed", "train.zeroshot.temperature=0.2", flags=("--resume",))
    fit_zs(tmp_path, "killed", flags=("--resume",))
    resumed = torch.load(tmp_path / "killed" / "trainer_state" / "state.pt", weights_only=True)
    assert resumed["hooks"]["zeroshot"]["stream"] == hook_state["stream"]
    assert resumed["extra"].keys() == st["extra"].keys()
    for k in st["extra"]:
        torch.testing.assert_close(resumed["extra"][k], st["extra"][k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize(
    "sets, error, match",
    [
        (["train.zeroshot.secondary=nope"], ValueError, "secondary='nope' is not a modality"),
        (["train.zeroshot.unseen_classes=[3,6]"], ValueError, r"unseen_classes \[6\] are out of range: task 'synthetic_zeroshot' has classes 0..5"),
        (["train.zeroshot.unseen_classes=[0,1,2,3,4,5]"], ValueError, "holds all 6 classes"),
        (["train.zeroshot.unseen_classes=[]"], ValueError, "unseen_classes is empty"),
        (["train.zeroshot.unseen_classes=[2,2]"], ValueError, "must be distinct class indices"),
        (["train.zeroshot.secondary=zs_a"], ValueError, "must differ, both are 'zs_a'"),
        (["train.zeroshot.method=clip"], ValueError, "method must be one of"),
        (["train.zeroshot.align_rows=some"], ValueError, "align_rows must be one of"),
        (["train.zeroshot.temperature=0"], ValueError, "temperature > 0"),
        (["train.zeroshot.task=synthetic_single"], ValueError, "task 'synthetic_single' does not read the primary modality 'zs_a'"),
        (["train.zeroshot.task=other"], ValueError, "task='other' is not being trained"),
        (["train.zeroshot.unseen_classes=[\"x\"]"], TypeError, "expected an integer"),
    ],
)
def test_bad_zeroshot_config_is_a_clear_error(tmp_path, sets, error, match):
    with pytest.raises(error, match=match):
        fit_zs(tmp_path, "bad", *sets, epochs=1, steps=1, tasks=f"{TASK},synthetic_single")


def test_a_task_not_reading_both_modalities_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no trained task reads both 'syn_a' and 'zs_b'"):
        fit_zs(tmp_path, "bad", "train.zeroshot.primary=syn_a", epochs=1, steps=1, tasks=f"{TASK},synthetic_single")


def test_study_runs_end_to_end_on_the_synthetic_task(tmp_path):
    from experiments import zeroshot as study

    doc = tmp_path / "zeroshot.md"
    doc.write_text("# Zero-shot\n\nintro\n\n" + study.RESULTS_BEGIN + "\nold\n" + study.RESULTS_END + "\n\ntail\n")
    results = study.main(["--task", TASK, "--primary", "zs_a", "--secondary", "zs_b", "--unseen", "3,4,5", "--preset", "tiny",
                          "--epochs", "1", "--steps", "4", "--seeds", "0,1", "--protocols", "all", "--output-dir", str(tmp_path / "out"),
                          "--cache-dir", str(tmp_path / "cache"), "--doc", str(doc)])
    runs = {r["run"] for r in results["rows"]}
    assert runs == {"alignment on all rows (transductive)", "no alignment (weight 0)"}
    assert len(results["rows"]) == 4 and all(0.0 <= r["zeroshot_unseen_accuracy"] <= 1.0 for r in results["rows"])
    text = doc.read_text()
    assert text.startswith("# Zero-shot\n\nintro") and text.rstrip().endswith("tail") and "old" not in text
    assert "± " in text and "harmonic" in text


def test_inductive_alignment_reads_the_seen_rows_only_and_indexed_splits_lose_their_labels(tmp_path):
    out = fit_zs(tmp_path, "inductive", "train.zeroshot.align_rows=seen", "train.train_fraction=0.5", epochs=1, steps=2)
    st = torch.load(out / "trainer_state" / "state.pt", weights_only=True)["hooks"]["zeroshot"]
    assert st["alignment_rows"] == st["train_rows_seen"] and st["train_rows_seen"] + st["train_rows_dropped"] == 120

    import datasets

    ds = datasets.Dataset.from_dict({"a": [1.0, 2.0, 3.0], "label": [0, 4, 5]}).select([2, 0])  # an index mapping
    free = zeroshot.without_labels(ds.select_columns(["a"]), "label")
    assert free["a"] == [3.0, 1.0] and free["label"] == [NO_LABEL, NO_LABEL]
