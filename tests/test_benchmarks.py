"""Smoke tests of the benchmark scripts: tiny sizes, JSON keys, positive numbers (no timing assertions)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a folder of scripts, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import data, speed  # noqa: E402
from benchmarks.common import markdown_table, time_interleaved  # noqa: E402


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
    assert tiny["tasks"]["robot_failures_lp1"]["tokens"] == {"force_torque": 15}
    assert positive(tiny["suite_samples_per_s"]) and tiny["peak_rss_mb"] >= tiny["rss_at_start_mb"] > 0

    (row,) = report["efficiency"]["sizes"]
    assert row["encoder_fwd_bwd_flops"] == 3 * speed.encoder_flops(speed._sizes("tiny").encoder, b=2, n=16, d=32)
    assert positive(row["ratio"]) and positive(row["matmul_gflops"])
    masks = report["efficiency"]["dropout_masks"]
    assert positive(masks["torch"]["median_ms"]) and positive(masks["highmmt"]["median_ms"]) and positive(masks["speedup"])

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
