"""Smoke tests of the benchmark scripts: tiny sizes, JSON keys, positive numbers (no timing assertions)."""

from __future__ import annotations

import json
import shlex
import statistics
from pathlib import Path

import pytest

from benchmarks import data, speed
from benchmarks.common import compare, format_mean_sd, format_seeds, markdown_table, mean_sd, stats_note, time_interleaved

ROOT = Path(__file__).resolve().parents[1]


def positive(x: float) -> bool:
    return isinstance(x, (int, float)) and x > 0 and x == x


def test_speed_quick_writes_every_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nested" / "speed.json"
    # One thread: on a shared 2-core machine two threads can make these tiny steps many times slower.
    report = speed.main(["--quick", "--no-isolate", "--threads", "1", "--tasks", "robot_failures_lp1,physionet_mortality",
                         "--output", str(out)])
    assert json.loads(out.read_text())["benchmark"] == "speed"
    assert set(report) >= {"machine", "presets", "efficiency", "scaling", "options", "targets", "task_shapes"}
    assert set(report["machine"]) >= {"cpu_model", "logical_cpus", "torch_threads", "torch_version", "date", "load_average"}
    assert report["machine"]["torch_threads"] == 1

    tiny = report["presets"]["tiny"]
    assert set(tiny["tasks"]) == {"robot_failures_lp1", "physionet_mortality"}
    for r in tiny["tasks"].values():
        assert positive(r["train_samples_per_s"]) and positive(r["inference_latency_ms_per_sample"])
        assert all(n >= 1 for n in r["tokens"].values())
    assert tiny["tasks"]["robot_failures_lp1"]["tokens"] == {"force_torque": 16}  # 15 steps + the summary token
    assert positive(tiny["suite_samples_per_s"]) and tiny["peak_rss_mb"] >= tiny["rss_at_start_mb"] > 0

    (row,) = report["efficiency"]["sizes"]
    assert row["encoder_fwd_bwd_flops"] == 3 * speed.encoder_flops(speed._sizes("tiny").encoder, b=2, n=16, d=32)
    assert positive(row["ratio"]) and positive(row["matmul_gflops"])

    sc = report["scaling"]
    assert set(sc["modalities"]) == {"pairwise", "bottleneck"}
    assert set(sc["modalities"]["bottleneck"]) == {"1", "2", "3"}
    assert set(sc["length"]) == {"16", "32"} and positive(sc["length_time_ratio"])

    opts = report["options"]
    assert {"fp32 eager", "bf16 autocast eager"} <= set(opts["variants"]) and opts["fastest"] in opts["variants"]
    assert opts["compiled"] == []  # --quick never compiles
    adamw = opts["optimizer_step"]
    assert adamw["parameter_tensors"] > 0 and all(positive(adamw[k]["median_ms"]) for k in ("for-loop", "foreach", "fused"))
    assert any("flops" in k.lower() or "FLOP" in k for k in report["targets"])
    printed = capsys.readouterr().out
    assert "| preset | task |" in printed and "robot_failures_lp1" in printed


def test_encoder_flops_counts_every_matmul() -> None:
    from highmmt.config import EncoderConfig

    cfg = EncoderConfig(depth=1, num_latents=2, cross_heads=1, heads=1, dim_head=4, self_per_cross=0, mlp_mult=1)
    # cross-attention: q 2*1*2*8*4, kv 2*3*8*8, QK^T and AV 2*2*2*3*4, out 2*2*4*8; feed-forward 2*2*2*8*8
    expected = 128 + 384 + 96 + 128 + 512
    assert speed.encoder_flops(cfg, b=1, n=3, d=8) == expected
    assert speed.encoder_flops(cfg, b=5, n=3, d=8) == 5 * expected


def test_synthetic_batches_match_the_kinds_collate() -> None:
    descs = {"physionet_mortality": {**speed.FALLBACK_TASKS["physionet_mortality"], "task_type": "classification"}}
    batch = speed.make_batch(descs["physionet_mortality"], 3, seed=0)
    assert batch["inputs"]["vitals"]["x"].shape[::2] == (3, 37)
    assert batch["inputs"]["static"]["mask"].shape == (3, 5)
    assert batch["target"].shape == (3,)


def test_speed_rejects_unknown_section(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown section"):
        speed.main(["--quick", "--sections", "presets,nope", "--output", str(tmp_path / "x.json")])


def test_data_quick_on_synthetic_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "data.json"
    report = data.main(["--tasks", "synthetic_pair,no_such_task", "--preset", "tiny", "--quick", "--threads", "1",
                        "--cache-dir", str(tmp_path / "cache"), "--output", str(out)])
    assert json.loads(out.read_text())["benchmark"] == "data"
    r = report["tasks"]["synthetic_pair"]
    assert r["first_load_source"] == "built" and r["second_load_source"] == "cache"
    for key in ("first_load_s", "second_load_s", "loader_samples_per_s", "train_samples_per_s", "ratio"):
        assert positive(r[key]), key
    assert r["batch_size"] == 16 and r["train_rows"] == 96
    assert "error" in report["tasks"]["no_such_task"]  # recorded, and the run went on
    assert report["summary"]["tasks_failed"] == ["no_such_task"]
    assert list((tmp_path / "cache").iterdir()) == []  # the fresh cache folder is removed
    assert "| synthetic_pair |" in capsys.readouterr().out


def test_time_interleaved_and_table() -> None:
    calls: list[str] = []
    times = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=2)
    assert calls == ["a", "b"] * 3 and all(len(t) == 2 for t in times.values())
    table = markdown_table(["x", "y"], [[1, 0.12345], ["z", float("nan")]])
    assert table.splitlines()[2] == "| 1 | 0.123 |" and table.splitlines()[3] == "| z | - |"


# ---- statistics over seeds (benchmarks/common.py) and the study scripts' tables ------------------------------
MACHINE = {"cpu_model": "cpu", "logical_cpus": 2, "torch_version": "x", "torch_threads": 1, "date": "d", "load_average": []}


def test_mean_sd_is_the_sample_standard_deviation() -> None:
    values = [0.5, 0.7, 0.65]
    m = mean_sd(values)
    assert m.n == 3 and m.mean == pytest.approx(statistics.fmean(values))
    assert m.sd == pytest.approx(statistics.stdev(values)) and m.sd != pytest.approx(statistics.pstdev(values))
    assert tuple(mean_sd([0.5])) == (0.5, None, 1)  # one seed: no spread
    assert mean_sd([]).n == 0 and mean_sd([]).sd is None
    assert format_mean_sd([0.5, 0.7]) == "0.600 ± 0.141" and format_mean_sd([0.5]) == "0.500"
    assert format_mean_sd([0.55, 0.75], per_seed=True) == "0.650 ± 0.141 (0.550, 0.750)"
    assert format_mean_sd([]) == "-" and format_mean_sd([0.5, float("nan")]) == "-"
    assert format_seeds([0]) == "seed 0" and format_seeds([0, 1, 2]) == "seeds 0, 1, 2"
    assert "seeds 0, 1" in stats_note([0, 1]) and "ddof = 1" in stats_note([0, 1]) and "one seed" in stats_note([3])


def test_compare_calls_a_difference_inside_the_seed_spread_no_difference() -> None:
    inside = compare([0.55, 0.75], [0.5, 0.7])  # +0.05 against seed sds of 0.141
    assert inside.verdict == "no difference" and inside.difference == pytest.approx(0.05)
    assert inside.spread == pytest.approx(statistics.stdev([0.5, 0.7]))
    assert inside.format() == "+0.050 (no difference)"
    # The spread is the larger of the two sds: a tight baseline does not make a noisy method's gain real.
    assert compare([0.6, 0.8], [0.6, 0.61]).verdict == "no difference"
    assert compare([0.90, 0.92], [0.50, 0.52]).verdict == "gain"
    assert compare([0.50, 0.52], [0.90, 0.92]).verdict == "loss"
    assert compare([0.10, 0.11], [0.50, 0.52], higher_is_better=False).verdict == "gain"  # a loss value that fell
    assert compare([0.9], [0.1]).verdict == "one seed" and compare([0.9], [0.1]).spread is None
    assert compare([0.9], [0.1, 0.12]).verdict == "gain"  # one side's seeds give the spread
    assert compare([0.7, 0.7], [0.7, 0.7]).verdict == "no difference"


def test_suite_results_table_says_one_seed_and_combines_seeds(tmp_path: Path) -> None:
    from experiments import suite_results

    def results(seed: int, mt: tuple[float, float], st: tuple[float, float]) -> dict:
        avmnist = {"accuracy": mt[0], "baseline_best": 0.7393, "baseline_name": "concat_lr"}  # evaluate.py's margin fields
        runs = {"multitask": {"metrics": {"avmnist": avmnist, "omniglot": {"accuracy": mt[1]}}, "parameters": 100, "train_log": "x"},
                "single/avmnist": {"metrics": {"avmnist": {"accuracy": st[0]}}, "parameters": 60},
                "single/omniglot": {"metrics": {"omniglot": {"accuracy": st[1]}}, "parameters": 60}}
        return {"preset": "tiny", "overrides": [], "seed": seed, "tasks": ["avmnist", "omniglot"], "runs": runs}

    one = suite_results.markdown(results(0, (0.82, 0.29), (0.83, 0.07)))
    assert "one seed (0)" in one and "difference +0.105 (one seed" in one and "gain" not in one
    folders = []
    for seed, mt, st in ((0, (0.82, 0.29), (0.83, 0.07)), (1, (0.76, 0.28), (0.84, 0.072))):
        folders.append(tmp_path / f"s{seed}")
        folders[-1].mkdir()
        (folders[-1] / "results.json").write_text(json.dumps(results(seed, mt, st)))
    combined = suite_results.main(["--combine", ",".join(map(str, folders)), "--output-dir", str(tmp_path / "out")])
    assert combined["seeds"] == [0, 1] and combined["per_task"]["avmnist"]["multitask_vs_single"]["verdict"] == "loss"
    md = (tmp_path / "out" / "seeds.md").read_text()
    assert "seeds 0, 1" in md and "| avmnist | accuracy | 0.790 ± 0.042 (0.820, 0.760) | 0.835 ± 0.007 (0.830, 0.840) | -0.045 (loss) | - |" in md
    assert "| omniglot | accuracy | 0.285 ± 0.007 (0.290, 0.280) | 0.071 ± 0.001 (0.070, 0.072) | +0.214 (gain) | - |" in md
    assert "| -0.045 (loss) | - | 0.739 concat_lr | 0.825 late fusion LR" in md  # baseline.py's figure, then the data README's
    assert "| +0.214 (gain) | - | - | 0.259 LR on pixels" in md
    # one seed's multitask and single-task runs from two calls, merged with +
    split = []
    for part in ("multitask", "single"):
        r = results(1, (0.76, 0.28), (0.84, 0.072))
        r["runs"] = {k: v for k, v in r["runs"].items() if k.startswith(part)}
        split.append(tmp_path / f"s1_{part}")
        split[-1].mkdir()
        (split[-1] / "results.json").write_text(json.dumps(r))
    merged = suite_results.main(["--combine", f"{folders[0]},{split[0]}+{split[1]}", "--output-dir", str(tmp_path / "out2")])
    assert merged["per_task"] == combined["per_task"]
    # a task's single-task run taken from another call: DIR[task|task]
    other = tmp_path / "s1_other"
    other.mkdir()
    (other / "results.json").write_text(json.dumps(results(1, (0.0, 0.0), (0.5, 0.5))))
    picked = suite_results.main(["--combine", f"{folders[0]},{split[0]}+{split[1]}[avmnist]+{other}[ omniglot ]",
                                 "--output-dir", str(tmp_path / "out2")])
    assert picked["per_task"]["avmnist"] == combined["per_task"]["avmnist"]
    assert picked["per_task"]["omniglot"]["single"] == [0.07, 0.5]
    with pytest.raises(ValueError, match="not \\['sentiment'\\]"):
        suite_results.main(["--combine", f"{split[1]}[sentiment]", "--output-dir", str(tmp_path / "out3")])
    with pytest.raises(ValueError, match="no single-task or late-fusion run of \\['avmnist'\\].*cannot be split by task"):
        suite_results.main(["--combine", f"{split[0]}[avmnist]", "--output-dir", str(tmp_path / "out3")])
    with pytest.raises(ValueError, match="repeats the runs"):
        suite_results.main(["--combine", f"{split[0]}+{split[0]}", "--output-dir", str(tmp_path / "out3")])
    # an override in one call of a seed and not the other: refused, unless named as inert there
    r = json.loads((split[0] / "results.json").read_text())
    (split[0] / "results.json").write_text(json.dumps({**r, "overrides": ["train.deep_loss=1"]}))
    with pytest.raises(ValueError, match="--inert-override"):
        suite_results.main(["--combine", f"{split[0]}+{split[1]}", "--output-dir", str(tmp_path / "out3")])
    inert = suite_results.main(["--combine", f"{split[0]}+{split[1]}", "--inert-override", "train.deep_loss",
                                "--output-dir", str(tmp_path / "out3")])
    assert inert["overrides"] == ["train.deep_loss=1"] and inert["inert_overrides"] == ["train.deep_loss"]
    (split[0] / "results.json").write_text(json.dumps(r))
    # runs that keep each task's own weights are also scored with one checkpoint: two more columns
    for seed, folder in enumerate(folders):
        r = json.loads((folder / "results.json").read_text())
        r["runs"]["multitask"]["metrics_one_checkpoint"] = {"avmnist": {"accuracy": 0.70 + seed / 100}, "omniglot": {"accuracy": 0.285}}
        (folder / "results.json").write_text(json.dumps(r))
    both = suite_results.main(["--combine", ",".join(map(str, folders)), "--output-dir", str(tmp_path / "out4")])
    assert both["per_task"]["avmnist"]["task_weights_vs_one_checkpoint"]["verdict"] == "gain"
    md = (tmp_path / "out4" / "seeds.md").read_text()
    assert "| multitask | multitask, one checkpoint | multitask - one checkpoint | single-task |" in md
    assert "| avmnist | accuracy | 0.790 ± 0.042 (0.820, 0.760) | 0.705 ± 0.007 (0.700, 0.710) | +0.085 (gain) | 0.835" in md
    assert "| **mean (2)** |  | 0.537 ± 0.025 (0.555, 0.520) | 0.495 ± 0.004 (0.492, 0.497) | +0.043 (gain) |" in md
    (folders[1] / "results.json").write_text(json.dumps({**results(0, (0.8, 0.3), (0.8, 0.1))}))
    with pytest.raises(ValueError, match="repeat a seed"):
        suite_results.main(["--combine", ",".join(map(str, folders)), "--output-dir", str(tmp_path / "out")])


def test_transfer_table_uses_the_sample_sd_and_judges_the_best_transfer() -> None:
    from experiments import transfer

    def run(method: str, seed: int, test: float) -> dict:
        return {"task": "t", "fraction": 0.5, "method": method, "seed": seed, "test": test, "metric": "accuracy", "train_rows": 10,
                "trainable_parameters": 5, "total_parameters": 10, "train_loop_s": 1.0}

    runs = [run("scratch", 0, 0.60), run("scratch", 1, 0.64), run("full", 0, 0.80), run("full", 1, 0.84), run("head", 0, 0.5), run("head", 1, 0.9)]
    results = {"methods": ["scratch", "full", "head"], "runs": runs, "pretrain_tasks": ["a"], "preset": "tiny", "finetune_overrides": [],
               "seeds": [0, 1], "layer_decay": 1.0, "machine": MACHINE, "wall_s": 60.0, "pretrain_loop_s": 60.0}
    cell = transfer.summarize(results)["t"][0.5]["scratch"]
    assert cell["sd"] == pytest.approx(statistics.stdev([0.60, 0.64]))  # was the population sd
    md = transfer.markdown(results)
    assert "| 0.5 | 10 | 0.620 ± 0.028 | 0.820 ± 0.028 | 0.700 ± 0.283 | full +0.200 (gain) |" in md
    assert "seeds 0, 1" in md and "ddof = 1" in md


def test_transfer_lr_grid_is_chosen_on_validation_never_on_test() -> None:
    from experiments import transfer

    def run(method: str, seed: int, lr: float, val: float, test: float) -> dict:
        return {"task": "t", "fraction": 0.5, "method": method, "seed": seed, "lr": lr, "val": val, "test": test, "metric": "accuracy",
                "train_rows": 10, "trainable_parameters": 5, "total_parameters": 10, "train_loop_s": 1.0}

    # lr 1e-3 validates better (0.7 vs 0.6 on average) but tests worse: the table must show its test scores.
    runs = [run("full", 0, 1e-3, 0.70, 0.50), run("full", 1, 1e-3, 0.70, 0.52), run("full", 0, 3e-3, 0.60, 0.90), run("full", 1, 3e-3, 0.60, 0.92),
            run("scratch", 0, 3e-3, 0.5, 0.40), run("scratch", 1, 3e-3, 0.5, 0.42)]
    results = {"methods": ["scratch", "full"], "runs": runs, "pretrain_tasks": ["a"], "preset": "tiny", "finetune_overrides": [],
               "seeds": [0, 1], "layer_decay": 1.0, "machine": MACHINE, "wall_s": 60.0, "pretrain_loop_s": 60.0,
               "lrs": [1e-3, 3e-3], "lr_methods": ["full"]}
    cell = transfer.summarize(results)["t"][0.5]["full"]
    assert cell["values"] == [0.50, 0.52] and cell["lr"] == 1e-3
    md = transfer.markdown(results)
    assert "0.510 ± 0.014 (lr 0.001)" in md and "best mean validation score" in md


def test_sharing_aggregate_uses_the_sample_sd_and_compares_with_all() -> None:
    from experiments import sharing

    def row(config: str, seed: int, a: float, b: float) -> dict:
        return {"config": config, "seed": seed, "encoder_groups": 1, "fusion_groups": 1, "parameters_total": 10, "parameters_shared": 5,
                "metrics": {"avmnist": a, "robot_failures_lp1": b}, "metric_names": {"avmnist": "accuracy", "robot_failures_lp1": "accuracy"}}

    rows = [row("none", 0, 0.7, 0.5), row("all", 0, 0.6, 0.5), row("none", 1, 0.72, 0.52), row("all", 1, 0.62, 0.4)]
    table = {r["config"]: r for r in sharing.aggregate(rows)}
    assert table["all"]["metrics_sd"]["robot_failures_lp1"] == pytest.approx(statistics.stdev([0.5, 0.4]))
    assert table["all"]["mean_sd_over_seeds"] == pytest.approx(statistics.stdev([0.55, 0.51]))
    assert table["none"]["mean_vs_all"]["verdict"] == "gain" and "mean_vs_all" not in table["all"]
    summary = {"table": list(table.values()), "metric_names": rows[0]["metric_names"], "hardware_line": "cpu", "wall_s": 1.0,
               "preset": "tiny", "epochs": 1, "steps_per_epoch": 1, "seeds": 2, "limit": 10}
    md = sharing.markdown(summary)
    assert "seeds 0, 1" in md and "+0.080 (gain)" in md


def test_colearn_tables_name_label_transfer_and_judge_against_the_baseline() -> None:
    from experiments import colearn

    def row(study: str, run: str, seed: int, **metrics: float) -> dict:
        return {"study": study, "run": run, "seed": seed, "trainable_parameters": 1, "train_wall_s": 1.0, "test_clips": 5,
                "audio_labels_used": False, **metrics}

    rows = []
    for seed, (alone, trans, aligned, none) in enumerate([(0.78, 0.77, 0.41, 0.10), (0.74, 0.76, 0.30, 0.12)]):
        rows += [row("missing", "IMU alone", seed, test_primary_only=alone, test_both=float("nan")),
                 row("missing", "translation IMU -> depth", seed, test_primary_only=trans, test_both=trans),
                 row("label_transfer", "contrastive alignment", seed, test_audio_accuracy=aligned, test_image_accuracy=0.6),
                 row("label_transfer", "no alignment (weight 0)", seed, test_audio_accuracy=none, test_image_accuracy=0.6)]
    md = colearn.markdown({"machine": MACHINE, "settings": "s", "wall_s": 60.0, "seeds": [0, 1], "rows": rows})
    assert "| translation IMU -> depth | 1 | 0.765 ± 0.007 (0.770, 0.760) | +0.005 (no difference) |" in md
    assert "cross-modal label transfer" in md and "zero-shot" not in md.replace("not zero-shot", "")
    assert "| contrastive alignment | 1 | no | 0.355 ± 0.078 (0.410, 0.300) | +0.245 (gain) |" in md
    with pytest.raises(ValueError, match="'zeroshot' is now called 'label_transfer'"):
        colearn.main(["--studies", "zeroshot"])


def test_pretrained_table_compares_each_run_with_its_reference() -> None:
    from experiments import pretrained

    def run(group: str, seed: int, acc: float) -> dict:
        return {"name": group if seed == 0 else f"{group}-seed{seed}", "group": group, "seed": seed, "what": "w", "tasks": ["utd_mhad"],
                "trainable": 1, "total": 2, "train_s": 1.0, "test": {"utd_mhad": {"accuracy": acc}}}

    runs = [run(g, s, a) for s in (0, 1) for g, a in (("utd_mhad/full", 0.65 + 0.05 * s), ("utd_mhad/embedders_head", 0.55 + 0.01 * s))]
    md = pretrained.markdown({"preset": "default", "steps": 1, "source_steps": 1, "avmnist_fraction": 0.1, "hardware": "cpu",
                              "runs": runs, "wall_s": 60.0, "cpu_s": 60.0})
    assert "| utd_mhad/embedders_head | w | 0,1 | 1 | 2 (50%) | 0.555 ± 0.007 (0.550, 0.560) | utd_mhad/full: -0.120 (loss) | 1 |" in md
    assert "seeds 0, 1 in all" in md and "prefix" not in md


def test_compare_runs_reads_evaluated_folders_and_judges_by_the_seed_spread(tmp_path):
    from experiments import compare_runs

    for name, values in (("a", (0.80, 0.82, 0.81)), ("b", (0.70, 0.71, 0.69))):
        for seed, v in enumerate(values):
            d = tmp_path / name / f"s{seed}" / "eval"
            d.mkdir(parents=True)
            (d / "metrics.json").write_text(json.dumps({"t": {"accuracy": v, "latency_ms_per_sample": 1.0}}))
    rows = compare_runs.main(["--tasks", "t", "--a", str(tmp_path / "a" / "s{seed}"), "--b", str(tmp_path / "b" / "s{seed}")])
    assert rows[0][1] == "accuracy" and rows[0][4] == "+0.110 (gain)"
    with pytest.raises(FileNotFoundError, match="no evaluation"):
        compare_runs.main(["--tasks", "t", "--seeds", "0,5", "--a", str(tmp_path / "a" / "s{seed}"), "--b", str(tmp_path / "b" / "s{seed}")])


def test_compare_runs_expands_a_task_alias(tmp_path):
    from experiments import compare_runs
    from train import ALIASES

    for name in ("a", "b"):
        d = tmp_path / name / "s0" / "eval"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({t: {"accuracy": 0.5 + 0.1 * (name == "a")} for t in ALIASES["robot_failures"]}))
    rows = compare_runs.main(["--tasks", "robot_failures", "--seeds", "0", "--a", str(tmp_path / "a" / "s{seed}"), "--b", str(tmp_path / "b" / "s{seed}")])
    assert [r[0] for r in rows] == ALIASES["robot_failures"] and len(rows) == 5
    assert all(r[4] == "+0.100 (one seed)" for r in rows)


def test_write_doc_section_replaces_only_between_its_markers(tmp_path) -> None:
    from experiments.common import write_doc_section

    doc = tmp_path / "doc.md"
    write_doc_section(doc, "<!-- t:begin -->", "<!-- t:end -->", "first\n")  # created
    doc.write_text("intro\n" + doc.read_text() + "outro\n")
    write_doc_section(doc, "<!-- t:begin -->", "<!-- t:end -->", "second")
    assert doc.read_text() == "intro\n<!-- t:begin -->\nsecond\n<!-- t:end -->\noutro\n"
    with pytest.raises(ValueError, match="doc.md: no block between '<!-- u:begin -->'"):
        write_doc_section(doc, "<!-- u:begin -->", "<!-- u:end -->", "x", append=False)
    write_doc_section(doc, "<!-- u:begin -->", "<!-- u:end -->", "x")
    assert doc.read_text().endswith("outro\n\n<!-- u:begin -->\nx\n<!-- u:end -->\n") and "second" in doc.read_text()


@pytest.mark.slow
def test_suite_results_scores_a_per_task_run_both_ways(tmp_path: Path) -> None:
    from experiments import suite_results

    out = tmp_path / "suite"
    results = suite_results.main(["--preset", "tiny", "--tasks", "synthetic_pair,synthetic_single", "--runs", "multitask",
                                  "--set", "train.select=task", "--set", "train.epochs=2", "--set", "train.steps_per_epoch=3",
                                  "--set", "train.threads=1", "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(out)])
    run = results["runs"]["multitask"]
    assert set(run["metrics"]["_weights"]) == {"synthetic_pair", "synthetic_single"}
    assert "_weights" not in run["metrics_one_checkpoint"] and (out / "multitask" / "eval_one_checkpoint" / "metrics.json").is_file()


def test_suite_results_seeds_runs_every_seed_combines_them_and_writes_the_doc(tmp_path: Path, monkeypatch) -> None:
    """``--seeds`` is the table in one command: one call per seed into seed<S>, the combine, the page. A seed folder
    whose results.json is this call's is kept on a rerun; another call's (other overrides) is run again."""
    from experiments import suite_results

    calls = []

    def fake_run(kind, out, tasks, preset, common, extra, threads, eval_args=()):
        seed = int(extra[extra.index("--seed") + 1])
        calls.append((kind, str(out), seed))
        acc = {"avmnist": 0.80 + seed / 100 + (0.05 if kind == "multitask" else 0), "omniglot": 0.30 + seed / 100}
        return {"kind": kind, "tasks": list(tasks), "metrics": {t: {"accuracy": acc[t]} for t in tasks}, "parameters": 10,
                "train_log": "x", "wall_s_this_call": 1.0}

    monkeypatch.setattr(suite_results, "run", fake_run)
    out, doc = tmp_path / "table", tmp_path / "docs" / "results.md"
    argv = ["--seeds", "0,1,2", "--tasks", "avmnist,omniglot", "--runs", "multitask,single", "--output-dir", str(out), "--doc", str(doc)]
    combined = suite_results.main(argv)
    assert combined["seeds"] == [0, 1, 2] and len(calls) == 9  # 3 seeds x (multitask + 2 single-task)
    assert {Path(c[1]).relative_to(out).parts[0] for c in calls} == {"seed0", "seed1", "seed2"}
    assert all(Path(c[1]).relative_to(out).parts[0] == f"seed{c[2]}" for c in calls)  # each seed's folder, its own --seed
    assert combined["per_task"]["avmnist"]["multitask"] == pytest.approx([0.85, 0.86, 0.87])
    assert combined["per_task"]["avmnist"]["multitask_vs_single"]["verdict"] == "gain"
    page = doc.read_text()
    assert page.startswith("# Results on the real suite") and f"`python -m experiments.suite_results {shlex.join(argv)}`" in page
    assert "seeds 0, 1, 2" in page and (out / "seeds.md").is_file()
    doc.write_text(page + "\n<!-- other:begin -->\nanother study's table\n<!-- other:end -->\n")
    suite_results.main(argv)  # a rerun keeps the finished seeds
    assert len(calls) == 9
    assert doc.read_text().count("# Results on the real suite") == 1 and "another study's table" in doc.read_text()
    # a page written before the markers, with another study's block appended: the old table goes, the block stays
    doc.write_text("# Results on the real suite\n\nold table\n\n<!-- other:begin -->\nanother study's table\n<!-- other:end -->\n")
    suite_results.main(argv)
    page = doc.read_text()
    assert "old table" not in page and "another study's table" in page and page.count("seeds 0, 1, 2") >= 1
    assert page.index("seeds 0, 1, 2") < page.index("another study's table")
    with pytest.raises(SystemExit):  # other overrides: another call's seed folders are refused, not re-scored
        suite_results.main([*argv, "--set", "train.lr=0.001"])
    assert len(calls) == 9
    (out / "seed1" / "results.json").unlink()  # a seed whose call stopped before its results.json: run again
    suite_results.main(argv)
    assert len(calls) == 12
    with pytest.raises(SystemExit):
        suite_results.main(["--seeds", "0,0", "--output-dir", str(out)])
    with pytest.raises(SystemExit):
        suite_results.main(["--seeds", "0,1", "--seed", "3", "--output-dir", str(out)])
    with pytest.raises(SystemExit):
        suite_results.main(["--seeds", "0", "--combine", str(out / "seed0"), "--output-dir", str(out)])


def test_suite_results_refuses_to_rescore_a_finished_run_of_another_call(tmp_path: Path) -> None:
    """A finished run folder records the call that trained it; a call with other training arguments is refused there
    (train_unless_done would skip the training and re-score the old weights under the new call's name)."""
    from experiments import suite_results

    run = tmp_path / "multitask"
    run.mkdir()
    (run / "DONE").write_text("finished\n")
    (run / "suite_call.json").write_text(json.dumps({"preset": "tiny", "tasks": ["avmnist"], "train_args": ["--seed", "0"]}))
    with pytest.raises(ValueError, match="another call"):
        suite_results.run("multitask", run, ["avmnist"], "tiny", ["--quiet"], ["--seed", "0", "--set", "train.lr=0.1"], 0)


def test_curves_summarise_a_run_and_print_one_tasks_epochs(tmp_path: Path, capsys) -> None:
    from experiments import curves

    run = tmp_path / "run"
    run.mkdir()
    rows = []
    for epoch, (loss, acc, auroc) in enumerate([(2.0, 0.50, 0.70), (1.0, 0.90, 0.80), (0.5, 0.90, 0.75)], 1):
        rows += [{"step": 10 * epoch, "epoch": epoch, "task": "a", "split": "train", "metric": "loss", "value": loss},
                 {"step": 10 * epoch, "epoch": epoch, "task": "a", "split": "validation", "metric": "accuracy", "value": acc},
                 {"step": 10 * epoch, "epoch": epoch, "task": "b", "split": "validation", "metric": "auroc", "value": auroc},
                 {"step": 10 * epoch, "epoch": epoch, "task": "b", "split": "validation", "metric": "accuracy", "value": 0.1}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps({"a": {"accuracy": 0.85}}))
    got = {r["task"]: r for r in curves.main([str(run), "--task", "b"])}
    assert got["a"]["val_best"] == 0.90 and got["a"]["val_best_epoch"] == 2  # the first of equal epochs
    assert got["a"]["train_loss_min"] == 0.5 and got["a"]["test"] == 0.85
    assert got["b"]["metric"] == "auroc" and got["b"]["val_best_epoch"] == 2 and got["b"]["test"] is None
    out = capsys.readouterr().out
    assert "b validation auroc, best 0.800 at epoch 2; by epoch: 0.700 0.800 0.750" in out
    with pytest.raises(KeyError, match="no rows for task 'c'"):
        curves.epoch_series(run, "c")
