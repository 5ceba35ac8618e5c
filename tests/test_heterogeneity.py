"""Heterogeneity measure (T, d), clustering into sharing groups, and the study end to end on synthetic tasks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import modalities  # noqa: F401  (registers the embedders)
from highmmt import HighMMT, HighMMTConfig, ModalityConfig, TaskConfig
from highmmt.config import EncoderConfig, FusionConfig, SharingConfig
from highmmt.sharing import task_pairs
from transference.heterogeneity import (
    check_distance,
    cluster,
    complete_low_rank,
    distance_matrix,
    explained_variance,
    heterogeneity_distance,
    random_groups_like,
    restrict_groups,
    sharing_config,
    transfer_difficulty,
    transfer_matrix,
    transfer_weights,
    triangle_fraction,
)

ROOT = Path(__file__).resolve().parents[1]

# ---- T and d from losses ---------------------------------------------------------------------------
def test_transfer_difficulty_is_transfer_minus_scratch():
    assert transfer_difficulty(1.25, 1.0) == pytest.approx(0.25)
    assert transfer_difficulty(0.8, 1.0) == pytest.approx(-0.2)


def test_distance_clips_negative_transfer_and_is_symmetric():
    assert heterogeneity_distance(0.3, -0.5) == pytest.approx(0.3)
    assert heterogeneity_distance(-0.1, -0.2) == 0.0
    assert heterogeneity_distance(0.3, 0.2) == pytest.approx(0.5)
    names = ["a", "b", "c"]
    scratch = {"a": 1.0, "b": 2.0, "c": 0.5}
    transfer = {("a", "b"): 2.5, ("b", "a"): 0.9, ("a", "c"): 0.7, ("c", "a"): 1.3, ("b", "c"): 0.4, ("c", "b"): 2.1}
    t = transfer_matrix(names, scratch, transfer)
    assert t[0, 1] == pytest.approx(0.5) and t[1, 0] == pytest.approx(-0.1) and np.all(np.diag(t) == 0)
    d = distance_matrix(t)
    np.testing.assert_allclose(d, d.T)
    assert d[0, 1] == pytest.approx(0.5)  # -0.1 clipped to 0
    assert d[0, 2] == pytest.approx(0.2 + 0.3)
    assert d[1, 2] == pytest.approx(0.1)  # T(b->c) = -0.1 clipped, T(c->b) = 0.1
    assert np.all(np.diag(d) == 0)


def test_missing_transfer_is_nan_and_distance_refuses_it():
    t = transfer_matrix(["a", "b"], {"a": 1.0, "b": 1.0}, {("a", "b"): 1.2})
    assert math.isnan(t[1, 0])
    with pytest.raises(ValueError, match="missing or non-finite"):
        distance_matrix(t)


def test_bad_losses_and_names_are_named():
    with pytest.raises(ValueError, match="transfer_loss must be a finite number"):
        transfer_difficulty(float("nan"), 1.0)
    with pytest.raises(ValueError, match="no scratch loss for \\['b'\\]"):
        transfer_matrix(["a", "b"], {"a": 1.0}, {})
    with pytest.raises(ValueError, match="names 'z'"):
        transfer_matrix(["a", "b"], {"a": 1.0, "b": 1.0}, {("a", "z"): 1.0})
    with pytest.raises(ValueError, match="duplicates"):
        transfer_matrix(["a", "a"], {"a": 1.0}, {})


# ---- clustering -> sharing groups -------------------------------------------------------------------
def _blocks(labels: list[int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.array(labels)
    d = np.where(lab[:, None] == lab[None, :], 0.1, 1.0) + 0.05 * rng.random((len(lab), len(lab)))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    return d


def test_clustering_recovers_the_blocks():
    names = ["img", "aud", "ts1", "ts2", "ts3", "txt", "tab"]
    labels = [0, 0, 1, 1, 1, 2, 2]
    d = _blocks(labels)
    # Shuffle the node order: the blocks must still come out.
    perm = np.random.default_rng(1).permutation(len(names))
    groups = cluster(d[np.ix_(perm, perm)], [names[i] for i in perm], 3, prefix="u")
    found = sorted(sorted(ms) for ms in groups.values())
    assert found == sorted([sorted(["img", "aud"]), sorted(["ts1", "ts2", "ts3"]), sorted(["txt", "tab"])])
    assert set(groups) == {"u1", "u2", "u3"}
    assert cluster(d, names, 1) == {"g1": names}
    assert len(cluster(d, names, len(names))) == len(names)


def test_bad_matrices_and_k_give_clear_errors():
    names = ["a", "b", "c"]
    d = _blocks([0, 0, 1])
    with pytest.raises(ValueError, match="must be square"):
        cluster(np.zeros((2, 3)), names[:2], 1)
    with pytest.raises(ValueError, match="k must be an integer between 1 and the number of nodes \\(3"):
        cluster(d, names, 4)
    with pytest.raises(ValueError, match="k must be"):
        cluster(d, names, 0)
    nan = d.copy()
    nan[0, 1] = nan[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cluster(nan, names, 2)
    with pytest.raises(ValueError, match="not symmetric"):
        check_distance(np.array([[0.0, 1.0], [2.0, 0.0]]))
    with pytest.raises(ValueError, match="negative"):
        check_distance(np.array([[0.0, -1.0], [-1.0, 0.0]]))
    with pytest.raises(ValueError, match="2 names were given"):
        cluster(d, names[:2], 1)
    with pytest.raises(ValueError, match="linkage must be one of"):
        cluster(d, names, 2, linkage="ward!")


def test_emitted_sharing_builds_a_model_between_none_and_all():
    mods = {"img": ModalityConfig("image", {"channels": 1}), "aud": ModalityConfig("timeseries", {"channels": 2}),
            "ts": ModalityConfig("timeseries", {"channels": 3}), "tab": ModalityConfig("tabular", {"num_numeric": 3})}
    tasks = {"av": TaskConfig(["img", "aud"], "classification", 3), "three": TaskConfig(["aud", "ts", "tab"], "classification", 2)}
    pairs = task_pairs(t.modalities for t in tasks.values())
    enc = cluster(_blocks([0, 0, 1, 1]), list(mods), 2, prefix="u")
    fus = cluster(_blocks([0, 1, 1, 0]), pairs, 2, prefix="c")
    emitted = sharing_config(enc, fus)
    json.dumps(emitted)  # a plain JSON value, usable as --set model.sharing.encoder=...

    def params(sharing: dict) -> int:
        cfg = HighMMTConfig(dim=16, modalities=mods, tasks=tasks, encoder=EncoderConfig(num_latents=4, heads=2, dim_head=8),
                            fusion=FusionConfig(heads=2, dim_head=8), sharing=SharingConfig(**sharing))
        return HighMMT(cfg).parameter_counts()["shared"]

    none, share_all, grouped = params(sharing_config("none", "none")), params(sharing_config("all", "all")), params(emitted)
    assert share_all < grouped < none
    model = HighMMT(HighMMTConfig(dim=16, modalities=mods, tasks=tasks, encoder=EncoderConfig(num_latents=4, heads=2, dim_head=8),
                                  fusion=FusionConfig(heads=2, dim_head=8), sharing=SharingConfig(**emitted)))
    assert set(model.encoders) == {"u1", "u2"} and set(model.fusion.blocks) == {"c1", "c2"}
    out = model({"aud": torch.randn(2, 5, 2), "ts": torch.randn(2, 7, 3), "tab": torch.randn(2, 3)}, task="three")
    assert out.shape == (2, 2) and torch.isfinite(out).all()


def test_restrict_and_random_groups():
    groups = {"u1": ["a", "b"], "u2": ["c"], "u3": ["d", "e"]}
    assert restrict_groups(groups, ["a", "c"]) == {"u1": ["a"], "u2": ["c"]}
    with pytest.raises(ValueError, match="\\['z'\\] are in no group"):
        restrict_groups(groups, ["a", "z"])
    rnd = random_groups_like(groups, seed=3)
    assert [len(v) for v in rnd.values()] == [2, 1, 2]
    assert sorted(m for v in rnd.values() for m in v) == list("abcde")
    with pytest.raises(ValueError, match="'a\\|b'"):
        sharing_config("all", {"c1": ["abc"]})
    assert sharing_config("all", {"c1": ["b|a"]}) == {"encoder": "all", "fusion": {"c1": ["a|b"]}}


# ---- diagnostics and completion --------------------------------------------------------------------
def test_low_rank_completion_recovers_a_rank_two_matrix():
    rng = np.random.default_rng(0)
    m = rng.standard_normal((12, 2)) @ rng.standard_normal((2, 12))
    mask = rng.random((12, 12)) < 0.7
    filled = complete_low_rank(np.where(mask, m, np.nan), rank=2)
    np.testing.assert_array_equal(filled[mask], m[mask])
    assert np.linalg.norm(filled - m) / np.linalg.norm(m) < 0.05
    assert explained_variance(m, 2) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="row\\(s\\) \\[0\\] have no observed entry"):
        complete_low_rank(np.vstack([np.full(12, np.nan), m[1:]]), rank=2)
    with pytest.raises(ValueError, match="rank must be"):
        complete_low_rank(m, rank=0)


def test_triangle_fraction():
    assert triangle_fraction(_blocks([0, 0, 1, 1])) == 1.0
    bad = np.array([[0.0, 1.0, 10.0], [1.0, 0.0, 1.0], [10.0, 1.0, 0.0]])
    assert triangle_fraction(bad) == pytest.approx(4 / 6)  # d(a,c) > d(a,b) + d(b,c), both directions
    assert triangle_fraction(bad, c=5.0) == 1.0


def test_transfer_weights_copies_only_the_named_part():
    def build(seed: int, channels: int) -> HighMMT:
        torch.manual_seed(seed)
        cfg = HighMMTConfig(dim=16, modalities={"x": ModalityConfig("timeseries", {"channels": channels})},
                            tasks={"t": TaskConfig(["x"], "classification", 2)}, encoder=EncoderConfig(num_latents=4, heads=2, dim_head=8))
        return HighMMT(cfg)

    src, dst = build(0, 3), build(1, 5)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    names = transfer_weights(dst, src.state_dict(), ["encoders."])
    assert names and all(n.startswith("encoders.") for n in names)
    for k, v in dst.state_dict().items():
        expected = src.state_dict()[k] if k in names else before[k]
        torch.testing.assert_close(v, expected)
    with pytest.raises(ValueError, match="no tensor under \\['nothing.'\\]"):
        transfer_weights(dst, src.state_dict(), ["nothing."])


# ---- the study end to end -------------------------------------------------------------------------------
def test_study_runs_end_to_end_on_synthetic_tasks(tmp_path):
    from experiments import heterogeneity as study

    out = tmp_path / "het"
    res = study.main(["--tasks", "synthetic_pair,synthetic_single", "--steps", "4", "--evals", "2", "--eval-rows", "16",
                      "--k", "1,2", "--scratch-inits", "2", "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(out), "--quiet", "--cpu"])
    uni = res["unimodal"]
    assert uni["names"] == ["syn_a", "syn_b"]
    t = np.array(uni["T"])
    d = np.array(uni["d"])
    np.testing.assert_allclose(d, np.clip(t, 0, None) + np.clip(t, 0, None).T)
    # T from the recorded losses: transfer minus the mean of the target's scratch runs (2 random starts).
    scratch_b = [uni["scratch"][f"syn_b@0#{i}"]["loss"] for i in range(2)]
    assert t[0, 1] == pytest.approx(uni["transfer"]["syn_a->syn_b@0"]["loss"] - np.mean(scratch_b))
    assert uni["noise_floor"]["syn_b"] == pytest.approx(np.std(scratch_b, ddof=1))
    assert uni["transfer"]["syn_a->syn_b@0"]["loaded"] > 0
    assert res["interaction"]["names"] == ["syn_a|syn_b"]
    for f in ("heterogeneity.json", "unimodal_heatmap.png", "interaction_heatmap.png", "sharing_k2.json", "preset_k2.json", "summary.md"):
        assert (out / f).is_file(), f
    sharing = json.loads((out / "sharing_k2.json").read_text())
    assert sorted(m for ms in sharing["encoder"].values() for m in ms) == ["syn_a", "syn_b"] and len(sharing["encoder"]) == 2
    assert sharing["fusion"] == {"c1": ["syn_a|syn_b"]}
    # The emitted preset trains with train.py as written.
    import train

    run = train.main(["--preset", str(out / "preset_k2.json"), "--output-dir", str(tmp_path / "run"), "--quiet",
                      "--cache-dir", str(tmp_path / "cache"), "--set", "train.epochs=1", "--set", "train.steps_per_epoch=2"])
    assert set(HighMMT.from_pretrained(run).encoders) == {"u1", "u2"}


def test_study_rejects_bad_flags(tmp_path):
    from experiments import heterogeneity as study

    with pytest.raises(SystemExit):
        study.main(["--tasks", "synthetic_single", "--sample-fraction", "0", "--output-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--k must be"):
        study.main(["--tasks", "synthetic_single", "--k", "two", "--output-dir", str(tmp_path), "--quiet"])


def test_sampled_transfers_cover_every_row_and_column():
    from experiments.heterogeneity import sampled_pairs

    names = [f"m{i}" for i in range(7)]
    chosen = sampled_pairs(names, 0.2, rank=2, seed=0)
    assert all(s != t for s, t in chosen)
    for n in names:
        assert sum(s == n for s, _ in chosen) >= 2 and sum(t == n for _, t in chosen) >= 2
    assert len(chosen) < 7 * 6
    assert len(sampled_pairs(names, 1.0, rank=2, seed=0)) == 7 * 6


# ---- the staged protocol: share-all -> copy into groups -> multitask fine-tuning ---------------------------------
N1, N3 = 3, 2  # stage-1 and stage-3 steps of the synthetic study


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """One run of ``python -m experiments.heterogeneity --protocol staged`` on two synthetic tasks (four
    modalities, two pairs; k = 2, two random draws, one seed), measurement included: (summary, output folder)."""
    from accelerate.state import AcceleratorState

    import train
    from experiments import heterogeneity as study

    tmp = tmp_path_factory.mktemp("staged")
    doc = tmp / "doc.md"
    doc.write_text("# doc\n\n<!-- staged-table:begin -->\nnumbers to come\n<!-- staged-table:end -->\n\nafter\n")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "_plot_curves", lambda history, path: None)
        AcceleratorState._reset_state(reset_partial_state=True)
        try:
            res = study.main(["--tasks", "synthetic_pair,synthetic_slope", "--steps", "4", "--evals", "2", "--eval-rows", "16", "--k", "2",
                              "--scratch-inits", "2", "--cache-dir", str(tmp / "cache"), "--output-dir", str(tmp / "out"), "--quiet", "--cpu",
                              "--protocol", "staged", "--random-draws", "2", "--seeds", "1", "--stage1-steps", str(N1),
                              "--stage3-steps", str(N3), "--limit", "16", "--set", "train.precision=fp32", "--write-doc", str(doc)])
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
            torch.set_num_threads(threads)
    return res, tmp / "out" / "staged", doc


def _sizes(groups):
    return [len(ms) for ms in groups.values()]


def test_random_groups_unlike_keep_the_sizes_and_differ():
    from transference.heterogeneity import can_regroup, partition, random_groups_unlike

    groups = {"u1": ["a", "b"], "u2": ["c", "d"]}
    # Plain random groups of these sizes repeat the given partition a third of the time: the control must not.
    assert any(partition(random_groups_like(groups, seed=s)) == partition(groups) for s in range(20))
    for s in range(20):
        rnd = random_groups_unlike(groups, seed=s)
        assert _sizes(rnd) == [2, 2] and sorted(m for ms in rnd.values() for m in ms) == list("abcd")
        assert partition(rnd) != partition(groups)
    assert random_groups_unlike(groups, seed=3) == random_groups_unlike(groups, seed=3)
    assert not can_regroup({"c1": ["a|b"], "c2": ["c|d"]}) and not can_regroup({"g1": ["a", "b"]})
    with pytest.raises(ValueError, match="admit no other partition"):
        random_groups_unlike({"u1": ["a"], "u2": ["b"]}, seed=0)


def test_random_sharing_regroups_every_part_that_can_be():
    from experiments.heterogeneity_staged import arms, random_sharing
    from transference.heterogeneity import partition

    clustered = {"encoder": {"u1": ["a", "b", "c"], "u2": ["d"]}, "fusion": {"c1": ["a|b"], "c2": ["c|d"]}}
    rnd = random_sharing(clustered, seed=0)
    assert _sizes(rnd["encoder"]) == [3, 1] and partition(rnd["encoder"]) != partition(clustered["encoder"])
    assert rnd["fusion"] == clustered["fusion"]  # singletons: no other partition of these sizes
    plan = arms({2: clustered}, 5)
    assert list(plan) == ["share_all_same_steps", "grouped_k2", *[f"random_k2_d{i}" for i in range(5)]]
    assert plan == arms({2: clustered}, 5)  # the same draws for every seed
    assert plan["share_all_same_steps"] == {"encoder": "all", "fusion": "all"}
    with pytest.raises(ValueError, match="no other partition"):
        random_sharing({"encoder": {"u1": ["a"], "u2": ["b"]}, "fusion": "all"}, seed=0)


def test_stage2_group_encoders_start_bit_identical_to_the_share_all_encoder(staged):
    from safetensors.torch import load_file

    from experiments.heterogeneity_staged import stage2_model

    res, out, _ = staged
    stage1 = out / "s0" / "stage1_share_all"
    shared = load_file(str(stage1 / "model.safetensors"))
    for name in ("grouped_k2", "random_k2_d0", "random_k2_d1"):
        sharing = next(r["sharing"] for r in res["staged"]["runs"] if r["run"] == name)
        model, report = stage2_model(stage1, sharing)
        assert len(model.encoders) == 2 and len(model.fusion.blocks) == 2
        for g, enc in model.encoders.items():
            for k, v in enc.state_dict().items():
                assert torch.equal(v, shared[f"encoders.shared.{k}"]), (name, g, k)
        for g, block in model.fusion.blocks.items():
            for k, v in block.state_dict().items():
                assert torch.equal(v, shared[f"fusion.blocks.shared.{k}"]), (name, g, k)
        for k, v in model.state_dict().items():  # embedders and heads: loaded as they are
            if k.startswith(("embedders.", "heads.")):
                assert torch.equal(v, shared[k]), k
        assert report.new == []
        # What train.py --init-from did in stage 3: every group copied from the share-all group.
        run_report = json.loads((out / "s0" / name / "config.json").read_text())["init_from"]
        assert run_report["new"] == [] and run_report["checkpoint"] == str(stage1)
        assert sorted(run_report["copied"]) == sorted([f"encoders.{g}" for g in model.encoders] + [f"fusion.blocks.{g}" for g in model.fusion.blocks])
        assert set(run_report["copied"].values()) == {"encoders.shared", "fusion.blocks.shared"}
    # The comparison can fail: a model that was not loaded starts elsewhere.
    torch.manual_seed(123)
    fresh = HighMMT(model.config)
    assert not torch.equal(next(iter(fresh.encoders.values())).latents, shared["encoders.shared.latents"])


def test_staged_random_groupings_keep_the_clustered_sizes_and_differ(staged):
    from transference.heterogeneity import partition

    res, _, _ = staged
    clustered = res["staged"]["grouped"]["2"]
    assert clustered == res["sharing"]["2"]  # the groups this command measured and clustered
    randoms = [r for r in res["staged"]["runs"] if r["run"].startswith("random_k2_")]
    assert len(randoms) == 2
    for r in randoms:
        assert _sizes(r["sharing"]["encoder"]) == _sizes(clustered["encoder"])
        assert partition(r["sharing"]["encoder"]) != partition(clustered["encoder"])
        assert _sizes(r["sharing"]["fusion"]) == _sizes(clustered["fusion"])  # two singleton pairs: nothing to shuffle


def test_share_all_same_steps_trains_stage1_plus_stage3_steps(staged):
    from safetensors.torch import load_file

    res, out, _ = staged
    rows = {r["run"]: r for r in res["staged"]["runs"]}
    assert rows["stage1_share_all"]["steps"] == {"stage1": N1, "stage3": 0}
    assert rows["share_all_same_steps"]["steps"] == {"stage1": N1, "stage3": N3}
    assert rows["share_all_same_steps"]["steps_total"] == rows["grouped_k2"]["steps_total"] == N1 + N3
    # From the run folders: stage 1 saved its weights after N1 steps; the continuation loaded all of
    # them (one shared encoder and fusion, nothing copied or new) and then trained N3 more steps.
    stage1, cont = out / "s0" / "stage1_share_all", out / "s0" / "share_all_same_steps"
    assert json.loads((stage1 / "best.json").read_text())["step"] == N1
    steps = [json.loads(line)["step"] for line in (cont / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == N3
    cfg = json.loads((cont / "config.json").read_text())
    assert cfg["train"]["epochs"] == 1 and cfg["train"]["steps_per_epoch"] == N3
    assert cfg["model"]["sharing"] == {"encoder": "all", "fusion": "all"}
    report = cfg["init_from"]
    assert report["checkpoint"] == str(stage1) and report["new"] == [] and report["copied"] == {}
    assert len(report["loaded"]) == report["total"]
    before, after = load_file(str(stage1 / "model.safetensors")), load_file(str(cont / "model.safetensors"))
    assert not torch.equal(before["encoders.shared.latents"], after["encoders.shared.latents"])  # it trained


def test_staged_study_writes_the_table_with_parameter_counts(staged):
    res, out, doc = staged
    table = {r["label"]: r for r in res["staged"]["table"]}
    assert list(table) == ["share-all, stage 1 only", "share-all, same total steps", "grouped k=2 (clustered)", "random k=2 (2 draws)"]
    share_all, grouped, rnd = table["share-all, same total steps"], table["grouped k=2 (clustered)"], table["random k=2 (2 draws)"]
    assert share_all["parameters_shared"] < grouped["parameters_shared"] == rnd["parameters_shared"]
    assert grouped["parameters_total"] == rnd["parameters_total"] and (grouped["encoder_groups"], grouped["fusion_groups"]) == (2, 2)
    assert rnd["over"] == "draws" and rnd["mean"]["n"] == 2 and grouped["mean"]["n"] == 1
    runs = [r for r in res["staged"]["runs"] if r["run"].startswith("random_k2_")]
    assert rnd["mean"]["mean"] == pytest.approx(np.mean([np.mean(list(r["metrics"].values())) for r in runs]))
    assert set(grouped) >= {"vs_share_all_same_steps", "vs_random"}
    md = (out / "staged.md").read_text()
    assert "| grouped k=2 (clustered) | 2, 2 | 5 |" in md and (out / "staged.json").is_file()
    text = doc.read_text()
    assert "numbers to come" not in text and "| random k=2 (2 draws) |" in text and text.endswith("after\n")


def test_staged_study_rejects_bad_input(tmp_path):
    from experiments import heterogeneity as study
    from experiments.heterogeneity_staged import write_doc_block

    with pytest.raises(SystemExit):
        study.main(["--tasks", "synthetic_single", "--groups-from", str(tmp_path), "--output-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        study.main(["--tasks", "synthetic_single", "--seeds", "0", "--output-dir", str(tmp_path)])
    assert study.parse_seeds("3") == [0, 1, 2] and study.parse_seeds("0,1,2") == [0, 1, 2] and study.parse_seeds("5,") == [5]
    with pytest.raises(FileNotFoundError, match="sharing_k2.json is missing"):
        study.main(["--tasks", "synthetic_single", "--protocol", "staged", "--groups-from", str(tmp_path), "--k", "2",
                    "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(tmp_path / "out"), "--quiet", "--cpu"])
    (tmp_path / "doc.md").write_text("no markers\n")
    with pytest.raises(ValueError, match="staged-table:begin"):
        write_doc_block(tmp_path / "doc.md", "table\n")
