"""Learning from unlabeled data (transference/semisup.py): labeled subset, self-training, co-training,
co-regularization; their mechanics on tiny synthetic data, resume, and that the pool's labels are never read."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from _helpers import killed_after_epoch
from safetensors.torch import load_file

import evaluate
import train
from highmmt import HighMMT
from highmmt.config import apply_overrides
from tasks.base import TaskSpec
from tasks.cache import load_task
from transference import semisup
from transference.config import RunConfig, SemiConfig
from transference.hooks import TrainContext, build_hooks

PAIR = TaskSpec(name="pair", modalities={"img": "image", "snd": "audio", "imu": "timeseries"}, task_type="classification",
                num_classes=3, metric="accuracy")


# ---- pure functions ---------------------------------------------------------------------------------
def test_labeled_split_is_stratified_seeded_and_keeps_every_class():
    y = np.repeat(np.arange(4), [50, 30, 15, 5])
    lab, unl = semisup.labeled_split(y, 0.2, seed=3)
    assert len(lab) + len(unl) == len(y) and not set(lab) & set(unl)
    assert np.array_equal(lab, np.sort(lab)) and len(lab) == 20
    np.testing.assert_array_equal(np.bincount(y[lab], minlength=4), [10, 6, 3, 1])
    np.testing.assert_array_equal(semisup.labeled_split(y, 0.2, seed=3)[0], lab)
    assert not np.array_equal(semisup.labeled_split(y, 0.2, seed=4)[0], lab)
    # 1% of 100 rows is one row: every class still gets one.
    lab, _ = semisup.labeled_split(y, 0.01, seed=0)
    assert set(y[lab]) == {0, 1, 2, 3} and len(lab) == 4
    lab, unl = semisup.labeled_split(y, 1.0, seed=0)
    assert len(lab) == 100 and len(unl) == 0
    with pytest.raises(ValueError, match="must lie in"):
        semisup.labeled_split(y, 0.5, seed=0, num_classes=3, what="task x")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        semisup.labeled_split(y, 0.0, seed=0)


def test_source_groups_join_rows_sharing_any_input_transitively():
    from tasks.cache import source_groups

    clip = [np.full(3 + i % 3, i % 3, np.float16) for i in range(9)]  # rows 0,3,6 / 1,4,7 / 2,5,8 share a clip
    image = [np.full((2, 2), i, np.float32) for i in range(9)]
    image[8] = image[0]  # row 8 shares row 0's image: groups {0,3,6} and {2,5,8} become one
    text = ["a", "b", "c", "d", "e", "f", "g", "h", None]
    ds = datasets.Dataset.from_dict({"clip": clip, "image": image, "text": text}, features=datasets.Features({
        "clip": datasets.List(datasets.Value("float16")), "image": datasets.Array2D((2, 2), "float32"),
        "text": datasets.Value("string")}))
    np.testing.assert_array_equal(source_groups(ds, ["clip"]), [0, 1, 2, 0, 1, 2, 0, 1, 2])
    np.testing.assert_array_equal(source_groups(ds, ["clip", "image"]), [0, 1, 0, 0, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(source_groups(ds, ["text"]), np.arange(9))  # a null joins nothing
    np.testing.assert_array_equal(source_groups(ds.select([8, 0, 1]), ["image"]), [0, 0, 1])  # index mappings
    with pytest.raises(KeyError, match="nope"):
        source_groups(ds, ["nope"])


def test_labeled_split_by_source_group_never_puts_a_source_on_both_sides():
    rng = np.random.default_rng(0)
    clips = rng.integers(0, 60, size=2000)  # 60 sources, each heard by ~33 rows, as AV-MNIST's clips
    y = clips % 4
    for fraction in (0.01, 0.05, 0.1, 0.5):
        lab, unl = semisup.labeled_split(y, fraction, seed=1, groups=clips)
        assert len(lab) + len(unl) == len(y) and not set(clips[lab]) & set(clips[unl])
        assert set(y[lab]) == {0, 1, 2, 3}
        # whole groups reach the class's quota with at most one group's rows to spare
        assert fraction * len(y) <= len(lab) <= fraction * len(y) + 4 * np.bincount(clips).max()
    np.testing.assert_array_equal(semisup.labeled_split(y, 0.1, seed=1, groups=clips)[0],
                                  semisup.labeled_split(y, 0.1, seed=1, groups=clips)[0])
    # singleton groups: the row-level split, draw for draw
    np.testing.assert_array_equal(semisup.labeled_split(y, 0.1, seed=1, groups=np.arange(len(y)))[0],
                                  semisup.labeled_split(y, 0.1, seed=1)[0])
    with pytest.raises(ValueError, match="source groups"):
        semisup.labeled_split(y, 0.1, seed=1, groups=clips[:5])


def test_select_confident_takes_only_rows_above_threshold_most_confident_first():
    probs = np.array([[0.95, 0.05], [0.6, 0.4], [0.2, 0.8], [0.99, 0.01], [0.1, 0.9], [0.97, 0.03]])
    picked = semisup.select_confident(probs, threshold=0.85, k=10, class_balance=False)
    np.testing.assert_array_equal(picked, [3, 5, 0, 4])  # 0.6 and 0.8 are below the threshold
    np.testing.assert_array_equal(semisup.select_confident(probs, threshold=0.85, k=2, class_balance=False), [3, 5])
    # Class balance: at most ceil(k / c) rows per predicted class, so class 1 gets its one confident row.
    np.testing.assert_array_equal(semisup.select_confident(probs, threshold=0.85, k=2, class_balance=True), [3, 4])
    assert len(semisup.select_confident(probs, threshold=0.999, k=5)) == 0
    assert len(semisup.select_confident(probs, threshold=0.0, k=0)) == 0
    with pytest.raises(ValueError, match=r"\[n, c\]"):
        semisup.select_confident(probs[:, 0], threshold=0.5, k=1)


def test_agreement_loss_is_zero_when_views_agree_and_grows_with_disagreement():
    torch.manual_seed(0)
    a = torch.randn(8, 5)
    assert semisup.agreement_loss(a, a.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert semisup.agreement_loss(a, a + 3.0).item() == pytest.approx(0.0, abs=1e-6)  # same distribution
    b = torch.randn(8, 5)
    d = semisup.agreement_loss(a, b)
    assert d.item() > 0.01
    assert semisup.agreement_loss(b, a).item() == pytest.approx(d.item(), rel=1e-5)  # symmetric
    assert semisup.agreement_loss(a, 2 * b).item() > d.item()
    a.requires_grad_(True)
    semisup.agreement_loss(a, b).backward()
    assert a.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="one shape"):
        semisup.agreement_loss(a, b[:, :3])


def test_consistency_loss_teaches_the_student_only():
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    assert semisup.consistency_loss(teacher.detach(), teacher).item() == pytest.approx(0.0, abs=1e-6)
    semisup.consistency_loss(student, teacher).backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


def test_perturb_moves_real_float_entries_only():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    ids = torch.randint(0, 9, (2, 5))
    inputs = {"ts": {"x": x, "mask": mask}, "txt": {"x": ids}}
    out = semisup.perturb(inputs, 0.5)
    assert not torch.equal(out["ts"]["x"][mask], x[mask])
    assert torch.equal(out["ts"]["x"][~mask], x[~mask])
    assert torch.equal(out["txt"]["x"], ids) and torch.equal(inputs["ts"]["x"], x)  # input untouched
    assert torch.equal(semisup.perturb(inputs, 0.0)["ts"]["x"], x)


def test_views_parse_names_kinds_and_reject_bad_specs():
    assert semisup.parse_views("img+snd|imu", PAIR) == [["img", "snd"], ["imu"]]
    assert semisup.parse_views("timeseries | image", PAIR) == [["imu"], ["img"]]  # kinds name their modality
    assert semisup.parse_views("", PAIR) == [["img"], ["snd", "imu"]]
    assert semisup.task_views(SemiConfig(method="co_training", views={"pair": "snd|img"}), PAIR) == [
        ("pair@snd", ["snd"]), ("pair@img", ["img"])]
    for text, match in [("img|snd|imu", "two modality groups"), ("img|", "two modality groups"),
                        ("img|img+snd", "disjoint"), ("img|depth", "neither a modality")]:
        with pytest.raises(ValueError, match=match):
            semisup.parse_views(text, PAIR)
    single = TaskSpec(name="one", modalities={"a": "text"}, task_type="classification", num_classes=2, metric="accuracy")
    with pytest.raises(ValueError, match="reads one modality"):
        semisup.parse_views("", single)


def test_view_statistics_measure_how_independent_the_errors_are():
    y = np.zeros(8, dtype=int)
    right, wrong = np.array([5.0, 0.0]), np.array([0.0, 5.0])
    a = np.stack([right, right, right, right, wrong, wrong, right, right])
    same = semisup.view_statistics(a, a, y)
    assert same["disagreement"] == 0 and same["error_kappa"] == pytest.approx(1.0) and same["error_correlation"] == pytest.approx(1.0)
    b = np.stack([wrong, wrong, right, right, right, right, right, right])  # errors on other rows
    other = semisup.view_statistics(a, b, y)
    assert other["accuracy_a"] == other["accuracy_b"] == 0.75 and other["both_wrong"] == 0
    assert other["both_wrong_if_independent"] == pytest.approx(1 / 16) and other["disagreement"] == 0.5
    assert other["error_kappa"] < 0  # never wrong together: less than chance
    assert np.isnan(semisup.view_statistics(np.stack([right] * 8), a, y)["error_kappa"])  # a view with no error


def test_semi_config_overrides_are_typed_and_checked():
    run = apply_overrides(RunConfig(), ["train.semi.method=co_training", "train.semi.views=img|snd", "train.semi.threshold=0.8"])
    assert run.train.semi.method == "co_training" and run.train.semi.views == "img|snd" and run.train.semi.threshold == 0.8
    run = apply_overrides(RunConfig(), ['train.semi.views={"pair": "img|snd"}'])
    assert run.train.semi.views == {"pair": "img|snd"}
    with pytest.raises(ValueError, match="train.semi.method must be one of"):
        apply_overrides(RunConfig(), ["train.semi.method=tri_training"])
    with pytest.raises(ValueError, match="labeled_fraction"):
        apply_overrides(RunConfig(), ["train.semi.labeled_fraction=0"])
    assert "semisup" not in [h.name for h in build_hooks(RunConfig())]  # off by default
    assert "semisup" in [h.name for h in build_hooks(apply_overrides(RunConfig(), ["train.semi.labeled_fraction=0.5"]))]


# ---- the hook on a synthetic task -------------------------------------------------------------------
def _hook(tmp_path: Path, *overrides: str) -> tuple[TrainContext, semisup.SemiSupervisedHook]:
    run, _ = train.load_preset("tiny")
    run = apply_overrides(run, ["train.epochs=6", *overrides])
    lt = load_task("synthetic_pair", cache_dir=tmp_path / "cache", quiet=True)
    specs = [lt.spec]
    torch.manual_seed(0)
    model = HighMMT(semisup.add_view_heads(train.model_config(run.model, specs), run.train.semi, specs))
    ctx = TrainContext(model=model, loaded={lt.spec.name: lt}, run=run, device=torch.device("cpu"), seed=0, out=tmp_path)
    hook = semisup.SemiSupervisedHook(run)
    hook.setup(ctx, None)
    return ctx, hook


def test_labeled_subset_replaces_the_training_split_and_hides_the_pool_labels(tmp_path):
    ctx, hook = _hook(tmp_path, "train.semi.labeled_fraction=0.25")
    st = hook.tasks["synthetic_pair"]
    train_split = ctx.loaded["synthetic_pair"].splits["train"]
    assert len(train_split) == len(st.labeled) == 24 and len(st.unlabeled) == 72
    assert set(np.asarray(train_split["label"])) == {0, 1, 2}
    assert (st.labels[st.unlabeled] == semisup.UNLABELED).all()
    assert st.base.column_names == ["syn_a", "syn_b"]  # the pool carries no label column of its own
    assert hook.eval_model(ctx) is ctx.model


def test_self_training_rounds_grow_the_training_split_and_stop_when_unsure(tmp_path):
    ctx, hook = _hook(tmp_path, "train.semi.method=self_training", "train.semi.labeled_fraction=0.25",
                      "train.semi.threshold=0.0", "train.semi.round_fraction=0.25", "train.semi.class_balance=false")
    sizes = [len(ctx.loaded["synthetic_pair"].splits["train"])]
    for epoch in range(3):
        rows = hook.end_epoch(ctx, epoch)
        sizes.append(len(ctx.loaded["synthetic_pair"].splits["train"]))
    assert sizes == [24, 42, 60, 78]  # 18 = 25% of the 72-row pool per round
    assert {r["metric"]: r["value"] for r in rows}["pseudo_labeled"] == 54
    summary = json.loads((tmp_path / semisup.STATE_FILE).read_text())["tasks"]["synthetic_pair"]
    assert summary["rounds"] == 3 and sorted(set(summary["pseudo"]["round"])) == [1, 2, 3]
    # The unlabeled stream and the consistency loss run on the pool.
    batch = {"inputs": {}, "target": torch.zeros(1)}
    loss = hook.extra_loss(ctx, "synthetic_pair", batch, torch.zeros(1, 3))
    assert loss is not None and loss.item() >= 0 and loss.requires_grad
    # A threshold nothing reaches stops the rounds for good.
    hook.semi = SemiConfig(**{**hook.semi.__dict__, "threshold": 1.0})
    hook.end_epoch(ctx, 3)
    st = hook.tasks["synthetic_pair"]
    assert "confidence 1.0" in st.stopped and len(ctx.loaded["synthetic_pair"].splits["train"]) == 78
    hook.semi = SemiConfig(**{**hook.semi.__dict__, "threshold": 0.0})
    hook.end_epoch(ctx, 4)
    assert len(ctx.loaded["synthetic_pair"].splits["train"]) == 78


def test_co_training_views_label_rows_for_each_other_and_predict_together(tmp_path):
    ctx, hook = _hook(tmp_path, "train.semi.method=co_training", "train.semi.labeled_fraction=0.25",
                      "train.semi.threshold=0.0", "train.semi.round_fraction=0.1", "train.semi.views=syn_a|syn_b")
    assert set(ctx.model.config.tasks) == {"synthetic_pair", "synthetic_pair@syn_a", "synthetic_pair@syn_b"}
    st = hook.tasks["synthetic_pair"]
    hook.end_epoch(ctx, 0)
    by0, by1 = st.unlabeled[st.by[st.unlabeled] == 0], st.unlabeled[st.by[st.unlabeled] == 1]
    assert len(by0) > 0 and len(by1) > 0 and len(by0) + len(by1) <= 2 * 8 and not set(by0) & set(by1)
    np.testing.assert_array_equal(hook.rows_for("synthetic_pair", "view0"), np.union1d(st.labeled, by1))
    np.testing.assert_array_equal(hook.rows_for("synthetic_pair", "view1"), np.union1d(st.labeled, by0))
    assert len(st.datasets["view0"]) == len(st.labeled) + len(by1)
    # The view sets' labels: true labels on labeled rows, the other view's pseudo-labels on the rest.
    np.testing.assert_array_equal(np.sort(np.asarray(st.datasets["view0"]["label"])), np.sort(st.labels[np.union1d(st.labeled, by1)]))
    assert len(ctx.loaded["synthetic_pair"].splits["train"]) == len(st.labeled)  # the task's own head: true labels only
    loss = hook.extra_loss(ctx, "synthetic_pair", {"inputs": {}, "target": torch.zeros(1)}, torch.zeros(1, 3))
    assert loss.requires_grad and loss.item() > 0
    # Validation predicts with the mean of the views' probabilities.
    ens = hook.eval_model(ctx)
    assert isinstance(ens, semisup.ViewEnsemble)
    from tasks.loader import collate_rows

    lt = ctx.loaded["synthetic_pair"]
    inputs = collate_rows(lt.splits["validation"], [0, 1, 2], lt.spec)["inputs"]
    ctx.model.eval()
    pa = torch.softmax(ctx.model({"syn_a": inputs["syn_a"]}, "synthetic_pair@syn_a"), -1)
    pb = torch.softmax(ctx.model({"syn_b": inputs["syn_b"]}, "synthetic_pair@syn_b"), -1)
    torch.testing.assert_close(ens(inputs, "synthetic_pair").exp(), (pa + pb) / 2)
    torch.testing.assert_close(ens({"syn_b": inputs["syn_b"]}, "synthetic_pair").exp(), pb)  # a missing view is left out


def test_co_regularization_adds_the_agreement_loss(tmp_path):
    ctx, hook = _hook(tmp_path, "train.semi.method=co_regularization", "train.semi.labeled_fraction=0.25")
    from tasks.loader import collate_rows

    lt = ctx.loaded["synthetic_pair"]
    batch = collate_rows(lt.splits["train"], np.arange(8), lt.spec)
    torch.manual_seed(1)
    with_agreement = hook.extra_loss(ctx, "synthetic_pair", batch, torch.zeros(8, 3)).item()
    hook.semi = SemiConfig(**{**hook.semi.__dict__, "agreement_weight": 0.0})
    torch.manual_seed(1)
    without = hook.extra_loss(ctx, "synthetic_pair", batch, torch.zeros(8, 3)).item()
    assert with_agreement > without > 0


# ---- what the two views share: train.semi.view_encoders ------------------------------------------------
QUAD = TaskSpec(name="quad", modalities={m: "timeseries" for m in "abcd"}, task_type="classification", num_classes=3,
                metric="accuracy", modality_options={m: {"channels": 2} for m in "abcd"})
OTHER = TaskSpec(name="other", modalities={"a": "timeseries", "e": "timeseries"}, task_type="classification", num_classes=2,
                 metric="accuracy", modality_options={m: {"channels": 2} for m in "ae"})


def _view_model(view_encoders: str, *overrides: str, views: str = "a+b|c+d", specs=(QUAD,)) -> tuple[HighMMT, list]:
    run, _ = train.load_preset("tiny")
    cfg = apply_overrides(train.model_config(run.model, list(specs)), list(overrides))
    semi = SemiConfig(method="co_training", views=views, view_encoders=view_encoders, tasks=["quad"])
    torch.manual_seed(0)
    return HighMMT(semisup.add_view_heads(cfg, semi, list(specs))), semisup.task_views(semi, QUAD)


def _touched_by_each_view(model: HighMMT, views: list) -> list[set[str]]:
    """Names of the parameters that get a gradient from each view's own loss (cross-entropy of its head)."""
    torch.manual_seed(1)
    x = {m: {"x": torch.randn(4, 5, 2), "mask": torch.ones(4, 5, dtype=torch.bool)} for m in "abcd"}
    y = torch.tensor([0, 1, 2, 0])
    touched = []
    for name, mods in views:
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model({m: x[m] for m in mods}, name), y).backward()
        touched.append({n for n, p in model.named_parameters() if p.grad is not None})
    assert semisup.shared_view_parameters(model, x, views).keys() == touched[0] & touched[1]  # the helper measures the same
    return touched


@pytest.mark.parametrize("kind", ["pairwise", "bottleneck", "none"])
def test_separate_views_share_no_parameter_and_shared_views_do(kind):
    fusion = [f"fusion.kind={kind}"]
    a, b = _touched_by_each_view(*_view_model("separate", *fusion, *(["sharing.fusion=none"] if kind == "bottleneck" else [])))
    assert a and b and not a & b  # no parameter tensor learns from both views' losses
    assert "modality_embedding.a" in a and any(n.startswith("heads.quad@a+b.") for n in a) and "modality_embedding.c" in b
    a, b = _touched_by_each_view(*_view_model("shared", *fusion))
    overlap = {n.split(".")[0] + "." + n.split(".")[1] for n in a & b}
    # Today's sharing (model.sharing all/all): one encoder for both views, and one fusion block when both
    # views hold two modalities (pairwise) or always (bottleneck: one block for every task).
    assert overlap == {"pairwise": {"encoders.shared", "fusion.blocks"}, "bottleneck": {"encoders.shared", "fusion.layers", "fusion.tokens"},
                       "none": {"encoders.shared"}}[kind]
    assert not any(n.startswith(("embedders.", "modality_embedding.", "heads.")) for n in a & b)  # per modality / task anyway
    with pytest.raises(ValueError, match="model.sharing.fusion=none"):
        _view_model("separate", "fusion.kind=bottleneck")


def test_separate_views_split_only_the_groups_that_hold_both_views():
    model, _ = _view_model("separate", views="a|b+c+d", specs=(QUAD, OTHER))
    # 'e' is read by no view and keeps the shared encoder; 'a' gets its view's, b, c, d theirs.
    assert model.encoder_group == {"a": "shared@quad@a", "b": "shared@quad@b+c+d", "c": "shared@quad@b+c+d",
                                   "d": "shared@quad@b+c+d", "e": "shared"}
    pairs = model.fusion.pair_group
    assert pairs["b|c"] == pairs["c|d"] == "shared@quad@b+c+d" and pairs["a|b"] == pairs["a|e"] == "shared"  # across views: the task head's
    model, _ = _view_model("separate", "sharing.encoder=none")  # one encoder per modality already: unchanged
    assert model.config.sharing.encoder == "none" and set(model.encoders) == set("abcd")
    model, _ = _view_model("separate", 'sharing.encoder={"x": ["a", "c"], "y": ["b", "d"]}')
    assert model.encoder_group == {"a": "x@quad@a+b", "b": "y@quad@a+b", "c": "x@quad@c+d", "d": "y@quad@c+d"}
    model, _ = _view_model("shared")
    assert model.config.sharing.encoder == "all" and set(model.encoders) == {"shared"}


def test_methods_without_unlabeled_data_or_views_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="--labeled-fraction"):
        _hook(tmp_path, "train.semi.method=self_training")
    with pytest.raises(ValueError, match="reads one modality"):
        train.main(["--preset", "tiny", "--tasks", "synthetic_single", "--output-dir", str(tmp_path / "r"), "--cache-dir",
                    str(tmp_path / "cache"), "--quiet", "--labeled-fraction", "0.5", "--set", "train.semi.method=co_training"])
    with pytest.raises(ValueError, match="names task 'nope'"):
        _hook(tmp_path, "train.semi.labeled_fraction=0.5", "train.semi.tasks=[\"nope\"]")


# ---- end to end: train.py / evaluate.py, resume ------------------------------------------------------
def _run(tmp_path: Path, name: str, method: str, *extra: str, tasks: str = "synthetic_pair") -> Path:
    out = tmp_path / name
    train.main(["--preset", "tiny", "--tasks", tasks, "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"),
                "--quiet", "--labeled-fraction", "0.25", "--set", f"train.semi.method={method}", "--set", "train.epochs=3",
                "--set", "train.steps_per_epoch=4", "--set", "train.semi.threshold=0.4", "--set", "train.semi.round_fraction=0.15",
                *extra])
    return out


def _last_weights(out: Path) -> dict[str, torch.Tensor]:
    st = torch.load(out / "trainer_state" / "state.pt", weights_only=True)
    return load_file(str(out / "trainer_state" / st["weights"]))


@pytest.mark.parametrize("method", ["self_training", "co_training"])
def test_pseudo_labels_persist_across_resume(tmp_path, monkeypatch, method):
    full = _run(tmp_path, "full", method)
    summary = json.loads((full / semisup.STATE_FILE).read_text())["tasks"]["synthetic_pair"]
    assert summary["rounds"] == 2 and len(summary["pseudo"]["row"]) > 0
    assert min(summary["pseudo"]["confidence"]) >= 0.4  # only predictions above the threshold
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    counts = [r["value"] for r in rows if r["metric"] == "pseudo_labeled"]
    assert counts[0] > 0 and counts == sorted(counts)

    with killed_after_epoch(monkeypatch, 2):
        _run(tmp_path, "killed", method)
    _run(tmp_path, "killed", method, "--resume")
    assert json.loads((tmp_path / "killed" / semisup.STATE_FILE).read_text())["tasks"]["synthetic_pair"] == summary
    a, b = _last_weights(full), _last_weights(tmp_path / "killed")
    if method == "co_training":  # the default view_encoders=separate: each view's encoder is saved and resumed
        assert {"shared@synthetic_pair@syn_a", "shared@synthetic_pair@syn_b"} <= {k.split(".")[1] for k in a if k.startswith("encoders.")}
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("method,view_encoders", [("co_training", "separate"), ("co_training", "shared"),
                                                   ("co_regularization", "separate")])
def test_evaluate_reports_the_views_ensemble_and_their_independence(tmp_path, method, view_encoders):
    out = _run(tmp_path, "co", method, "--set", "train.semi.views=syn_a|syn_b", "--set", f"train.semi.view_encoders={view_encoders}")
    m = evaluate.main(["--checkpoint", str(out), "--no-robustness", "--quiet", "--cache-dir", str(tmp_path / "cache")])["synthetic_pair"]
    for key in ("accuracy@syn_a", "accuracy@syn_b", "accuracy@fused", "views_disagreement", "views_error_kappa",
                "views_error_correlation", "views_both_wrong", "views_both_wrong_if_independent", "views_shared_parameters"):
        assert key in m, key
    # The saved model rebuilds with the views' own encoders (separate) or the one shared encoder.
    loaded = HighMMT.from_pretrained(out)
    groups = {"separate": {"syn_a": "shared@synthetic_pair@syn_a", "syn_b": "shared@synthetic_pair@syn_b"},
              "shared": {"syn_a": "shared", "syn_b": "shared"}}[view_encoders]
    assert loaded.encoder_group == groups
    if view_encoders == "separate":
        assert m["views_shared_parameters"] == 0
    else:  # the tiny preset's encoder: every parameter of it is read by both views
        assert m["views_shared_parameters"] == sum(p.numel() for p in loaded.encoders["shared"].parameters()) > 0
    assert m["accuracy"] == pytest.approx(m["views_accuracy_ensemble"])  # the reported figure is the ensemble's
    # predict.py predicts through the same views' ensemble as evaluate.py scores
    import predict

    test = load_task("synthetic_pair", cache_dir=tmp_path / "cache", quiet=True).splits["test"]
    test.save_to_disk(str(tmp_path / "rows"))
    written = predict.main(["--checkpoint", str(out), "--input", str(tmp_path / "rows"), "--output", str(tmp_path / "p.csv"), "--quiet"])
    predicted = np.array(datasets.Dataset.from_csv(str(written))["prediction"])
    assert np.mean(predicted == np.array(test["label"])) == pytest.approx(m["accuracy"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"synthetic_pair@syn_a", "synthetic_pair@syn_b"} <= {r["task"] for r in rows if r["split"] == "validation"}
    cfg = json.loads((out / "config.json").read_text())
    assert isinstance(semisup.prediction_model(HighMMT.from_pretrained(out), cfg), semisup.ViewEnsemble)
    cfg["train"]["semi"]["predict_with"] = "fused"
    assert isinstance(semisup.prediction_model(HighMMT.from_pretrained(out), cfg), HighMMT)


# ---- the pool's true labels are never read; a bring-your-own unlabeled split ---------------------
def _byo(tmp_path: Path, name: str, corrupt: np.ndarray | None) -> Path:
    """A two-modality task: 60 labeled training rows (labels of rows ``corrupt`` scrambled) + 30 unlabeled rows."""
    rng = np.random.default_rng(0)

    def rows(n: int, with_label: bool, flip: np.ndarray | None = None) -> datasets.Dataset:
        y = rng.integers(0, 3, n)
        d = {"acc": [(rng.standard_normal((6, 3)) + y_i).astype(np.float32) for y_i in y],
             "gyro": [(rng.standard_normal((5, 2)) - y_i).astype(np.float32) for y_i in y]}
        if with_label:
            if flip is not None:  # another generator, so the inputs stay the same
                y = y.copy()
                y[flip] = (y[flip] + 1 + np.random.default_rng(1).integers(0, 2, len(flip))) % 3
            d["label"] = y.tolist()
        return datasets.Dataset.from_dict(d)

    folder = tmp_path / name
    datasets.DatasetDict({"train": rows(60, True, corrupt), "validation": rows(15, True), "test": rows(15, True),
                          "pool": rows(30, False)}).save_to_disk(str(folder / "hf"))
    spec = folder / "spec.yaml"
    spec.write_text("name: byo\npath: hf\nmodalities: {acc: timeseries, gyro: timeseries}\n"
                    "modality_options: {acc: {channels: 3}, gyro: {channels: 2}}\ntarget: label\nnum_classes: 3\n"
                    "splits: {train: train, validation: validation, test: test, unlabeled: pool}\n")
    return spec


@pytest.mark.parametrize("method", ["self_training", "co_training"])
def test_the_pool_true_labels_are_never_read(tmp_path, monkeypatch, method):
    labeled = np.arange(0, 60, 4)  # a fixed labeled subset: the split itself is the labeling oracle
    monkeypatch.setattr(semisup, "labeled_split", lambda y, *a, **k: (labeled, np.setdiff1d(np.arange(len(y)), labeled)))
    pool_rows = np.setdiff1d(np.arange(60), labeled)
    runs = {}
    for name, corrupt in [("true", None), ("scrambled", pool_rows)]:
        out = _run(tmp_path, f"run_{name}", method, tasks=str(_byo(tmp_path, name, corrupt)))
        runs[name] = (json.loads((out / semisup.STATE_FILE).read_text())["tasks"]["byo"], _last_weights(out))
    (sa, wa), (sb, wb) = runs["true"], runs["scrambled"]
    assert sa == sb and len(sa["pseudo"]["row"]) > 0
    assert sa["n_train"] == 60 and sa["unlabeled"] == 45 + 30  # the unlabeled split joined the pool
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)


# ---- the study script -------------------------------------------------------------------------------
def test_study_aggregates_paired_gains_and_writes_tables():
    from experiments import semisup as study

    args = study.argparse.Namespace(preset="tiny", scale=2.0, val_limit=100, overrides=["train.lr=0.01"], data_root=None, cache_dir="/c")
    argv = study.run_argv("avmnist", 0.05, "views_only", 1, args)
    joined = " ".join(argv)
    assert "train.semi.method=co_regularization" in joined and "train.semi.agreement_weight=0.0" in joined
    assert "train.steps_per_epoch=50" in joined and "--labeled-fraction 0.05" in joined and argv[-2:] == ["--cache-dir", "/c"]

    def run(method, seed, acc, **extra):
        return {"task": "t", "fraction": 0.1, "method": method, "seed": seed, "labeled": 10, "metrics": {"accuracy": acc, **extra},
                "pseudo_labeled": 5, "pseudo_accuracy": 0.8, "wall_s": 1.0, "cpu_s": 1.0}

    runs = [run("none", 0, 0.5), run("none", 1, 0.7), run("self_training", 0, 0.6), run("self_training", 1, 0.65),
            run("co_training", 0, 0.55, **{"accuracy@a": 0.4, "accuracy@b": 0.3, "accuracy@fused": 0.5, "views_error_kappa": 0.2}),
            run("co_training", 1, 0.75, **{"accuracy@a": 0.5, "accuracy@b": 0.4, "accuracy@fused": 0.6, "views_error_kappa": 0.4})]
    aggs = {a["method"]: a for a in study.aggregate(runs)}
    assert aggs["self_training"]["gain_mean"] == pytest.approx(0.025) and aggs["self_training"]["gain_wins"] == 1
    assert aggs["co_training"]["gain_mean"] == pytest.approx(0.05) and aggs["co_training"]["gain_wins"] == 2
    assert aggs["co_training"]["views_error_kappa"] == pytest.approx(0.3) and "views_error_kappa" not in aggs["self_training"]
    results = {"aggregates": list(aggs.values()), "runs": runs, "seeds": [0, 1], "preset": "tiny", "scale": 1.0, "jobs": 1,
               "wall_s": 60.0, "cpu_s": 120.0, "eval_note": "t: all rows",
               "machine": {"cpu_model": "cpu", "logical_cpus": 2, "torch_version": "x", "torch_threads": 1, "date": "d", "load_average": []}}
    md = study.markdown(results)
    assert "| t | 0.1 (10) | co-training | 0.650 ± 0.141 | +0.050 (2/2) | 5 (0.800) |" in md
    assert "a 0.450, b 0.350" in md and "2.0 CPU-minutes" in md
    with pytest.raises(ValueError, match="unknown task"):
        study.main(["--tasks", "omniglot"])
    with pytest.raises(ValueError, match="--view-encoders"):
        study.main(["--tasks", "avmnist", "--view-encoders", "both"])


def test_study_compares_separate_and_shared_view_encoders_paired_by_seed():
    from experiments import semisup as study

    args = study.argparse.Namespace(preset="tiny", scale=1.0, val_limit=100, overrides=[], data_root=None, cache_dir=None)
    assert "train.semi.view_encoders=shared" in " ".join(study.run_argv("avmnist", 0.05, "co_training", 0, args, "shared"))
    assert "view_encoders" not in " ".join(study.run_argv("avmnist", 0.05, "none", 0, args))

    def run(method, ve, seed, acc, corr=float("nan"), shared=float("nan")):
        return {"task": "t", "fraction": 0.1, "method": method, "view_encoders": ve, "seed": seed, "labeled": 10,
                "metrics": {"accuracy": acc, "views_error_correlation": corr, "views_both_wrong": 0.2,
                            "views_both_wrong_if_independent": 0.1, "views_disagreement": 0.3, "views_shared_parameters": shared},
                "pseudo_labeled": 0, "pseudo_accuracy": float("nan"), "wall_s": 1.0, "cpu_s": 1.0}

    runs = [run("none", "", 0, 0.5), run("none", "", 1, 0.6),
            run("co_training", "separate", 0, 0.7, 0.1, 0.0), run("co_training", "separate", 1, 0.62, 0.3, 0.0),
            run("co_training", "shared", 0, 0.6, 0.5, 1000.0), run("co_training", "shared", 1, 0.64, 0.7, 1000.0)]
    aggs = study.aggregate(runs)
    assert [(a["method"], a["view_encoders"]) for a in aggs] == [("none", ""), ("co_training", "separate"), ("co_training", "shared")]
    (c,) = study.encoder_comparison(runs)
    assert c["difference"] == pytest.approx(0.04) and c["wins"] == 1 and c["seeds"] == [0, 1]
    assert c["views_error_correlation:separate"] == pytest.approx(0.2) and c["views_error_correlation:shared"] == pytest.approx(0.6)
    results = {"aggregates": aggs, "runs": runs, "seeds": [0, 1], "preset": "tiny", "scale": 1.0, "jobs": 1, "wall_s": 60.0,
               "cpu_s": 60.0, "eval_note": "t: all rows", "encoder_comparison": [c],
               "machine": {"cpu_model": "cpu", "logical_cpus": 2, "torch_version": "x", "torch_threads": 1, "date": "d", "load_average": []}}
    md = study.markdown(results)
    assert "| t | 0.1 (10) | co-training, separate encoders | 0.660 ± 0.057 | +0.110 (2/2) |" in md
    assert "co-training, one shared encoder" in md and "| 1,000 |" in md
    assert "| t | 0.1 | co-training | 0.660 / 0.620 | +0.040 (1/2) | no difference | 0.200 / 0.600 |" in md


@pytest.mark.slow
def test_study_runs_end_to_end_with_both_view_encoder_settings(tmp_path, monkeypatch):
    from experiments import semisup as study

    monkeypatch.setitem(study.TASKS, "synthetic_pair", {
        "fractions": (0.25,), "views": "syn_a|syn_b", "epochs": 2, "steps": 3, "batch_size": 16, "eval_limit": 0,
        "semi": {"warmup_epochs": 1, "threshold": 0.4, "round_fraction": 0.1, "score_limit": 0}})
    results = study.main(["--tasks", "synthetic_pair", "--methods", "none,co_training", "--seeds", "0", "--jobs", "1",
                          "--view-encoders", "separate,shared", "--output-dir", str(tmp_path / "study"),
                          "--cache-dir", str(tmp_path / "cache")])
    shared = {r["view_encoders"]: r["metrics"]["views_shared_parameters"] for r in results["runs"] if r["method"] == "co_training"}
    assert shared["separate"] == 0 and shared["shared"] > 0
    assert len(results["encoder_comparison"]) == 1 and "Separate against shared" in (tmp_path / "study" / "results.md").read_text()
