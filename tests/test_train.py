"""train.py / evaluate.py end to end on the synthetic tasks, resume, schedules, bad input."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from torch import nn
from _helpers import killed_after_epoch
from safetensors.torch import load_file

import evaluate
import predict
import train
from highmmt import HighMMT
from highmmt.heads import PART_RIDGES, choose_part_ridge
from tasks.cache import load_task
from transference.config import TrainConfig
from transference.schedules import make_schedule

ROOT = Path(__file__).resolve().parents[1]
SYN = "synthetic_pair,synthetic_single"


def test_two_epoch_smoke_writes_the_run_folder(tmp_path, tiny_run):
    out = tiny_run("run")
    for f in ("config.json", "model.safetensors", "metrics.jsonl", "curves.png", "DONE", "trainer_state/state.pt"):
        assert (out / f).exists(), f
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["task"] for r in rows} == {"synthetic_pair", "synthetic_single"}
    assert {r["split"] for r in rows} == {"train", "validation"}
    assert max(r["epoch"] for r in rows) == 3
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["steps_per_epoch"] == 4 and set(cfg["tasks"]) == {"synthetic_pair", "synthetic_single"}
    model = HighMMT.from_pretrained(out)
    assert set(model.config.tasks) == {"synthetic_pair", "synthetic_single"}


def test_resume_after_a_kill_ends_with_the_same_weights(tmp_path, monkeypatch, tiny_run):
    full = tiny_run("full")

    with killed_after_epoch(monkeypatch, 1):
        tiny_run("killed")
    assert not (tmp_path / "killed" / "DONE").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        tiny_run("killed")
    tiny_run("killed", "--resume")

    def last_weights(out):
        st = torch.load(out / "trainer_state" / "state.pt", weights_only=True)
        return load_file(str(out / "trainer_state" / st["weights"]))

    a, b = last_weights(full), last_weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    rows_a = (full / "metrics.jsonl").read_text().splitlines()
    rows_b = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert len(rows_a) == len(rows_b)


def test_weight_average_is_what_validation_saves_and_it_resumes(tmp_path, monkeypatch, tiny_run):
    ema = ("--set", "train.ema_decay=0.9")
    validate = train.validate
    monkeypatch.setattr(train, "validate", lambda *a: (validate(*a)[0], float(a[5])))  # each epoch beats the last
    full = tiny_run("full", *ema)
    with killed_after_epoch(monkeypatch, 1):
        tiny_run("killed", *ema)
    tiny_run("killed", "--resume")
    st = {d: torch.load(d / "trainer_state" / "state.pt", weights_only=True) for d in (full, tmp_path / "killed")}
    for k, v in st[full]["ema"].items():  # the average (and its count) resume exactly
        torch.testing.assert_close(v, st[tmp_path / "killed"]["ema"][k], rtol=0, atol=0, msg=k)
    assert int(st[full]["ema"]["n_averaged"]) == 12  # 3 epochs x 4 steps
    live = load_file(str(full / "trainer_state" / st[full]["weights"]))
    best = load_file(str(full / "model.safetensors"))
    averaged = {k[len("module."):]: v for k, v in st[full]["ema"].items() if k.startswith("module.")}
    assert json.loads((full / "best.json").read_text())["epoch"] == 3
    assert all(torch.equal(best[k], averaged[k]) for k in best)  # the best checkpoint holds the average
    assert not all(torch.equal(best[k], live[k]) for k in best)
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)


def test_same_seed_same_run_other_seed_other_run(tmp_path, tiny_run):
    a = load_file(str(tiny_run("a") / "model.safetensors"))
    b = load_file(str(tiny_run("b") / "model.safetensors"))
    c = load_file(str(tiny_run("c", "--seed", "1") / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_evaluate_reads_the_tasks_where_the_run_was_trained_from(tmp_path, tiny_run, monkeypatch):
    """A new shell without $HIGHMMT_DATA / $HIGHMMT_CACHE: evaluate.py finds the data root and cache the run was
    trained with (config.json); an argument or the environment still wins."""
    (tmp_path / "data").mkdir()
    out = tiny_run("where", "--data-root", str(tmp_path / "data"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data_root"] == str((tmp_path / "data").resolve()) and cfg["cache_dir"] == str((tmp_path / "cache").resolve())
    seen = []
    real = evaluate.load_task
    monkeypatch.setattr(evaluate, "load_task", lambda *a, **k: seen.append(k) or real(*a, **k))
    monkeypatch.delenv("HIGHMMT_DATA", raising=False)
    monkeypatch.delenv("HIGHMMT_CACHE", raising=False)
    lt = evaluate.load_run_task(cfg, "synthetic_pair", quiet=True)
    assert (seen[-1]["data_root"], seen[-1]["cache_dir"]) == (cfg["data_root"], cfg["cache_dir"])
    assert lt.source == "cache"  # the run's own cached copy, not a rebuild elsewhere
    monkeypatch.setenv("HIGHMMT_CACHE", str(tmp_path / "elsewhere"))
    evaluate.load_run_task(cfg, "synthetic_pair", quiet=True, data_root=str(tmp_path / "other"))
    assert seen[-1]["data_root"] == str(tmp_path / "other") and seen[-1]["cache_dir"] is None  # load_task reads $HIGHMMT_CACHE
    # a run folder brought from another machine: recorded folders that do not exist here are not used
    monkeypatch.delenv("HIGHMMT_CACHE")
    moved = {**cfg, "cache_dir": str(tmp_path / "gone"), "data_root": str(tmp_path / "gone")}
    evaluate.load_run_task(moved, "synthetic_pair", quiet=True, cache_dir=str(tmp_path / "cache"))
    assert seen[-1]["data_root"] is None and seen[-1]["cache_dir"] == str(tmp_path / "cache")


def test_evaluate_writes_metrics_robustness_and_efficiency(tmp_path, tiny_run):
    out = tiny_run("run")
    metrics = evaluate.main(["--checkpoint", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet", "--noise-levels", "0.5,1,2,4,8"])
    saved = json.loads((out / "eval" / "metrics.json").read_text())
    assert saved.keys() == metrics.keys()
    pair = saved["synthetic_pair"]
    assert 0.0 <= pair["accuracy"] <= 1.0 and "f1" in pair
    assert pair["latency_ms_per_sample"] > 0 and pair["throughput_samples_per_s"] > 0
    rob = json.loads((out / "eval" / "robustness.json").read_text())
    assert set(rob["synthetic_pair"]["drop"]) == {"syn_a", "syn_b"}
    assert len(rob["synthetic_pair"]["noise"]["syn_a"]) == 5
    assert (out / "eval" / "results.md").read_text().startswith("## Results")
    with pytest.raises(ValueError, match="not in checkpoint"):
        evaluate.main(["--checkpoint", str(out), "--tasks", "nope", "--quiet"])


def test_schedules():
    sizes = {"big": 6, "mid": 3, "small": 1}
    s = make_schedule("highmmt", sizes, 6)
    assert s.steps[0] == ["big"] and s.steps[-1] == ["big", "mid", "small"]
    assert s.batches_per_task() == {"big": 6, "mid": 3, "small": 1}
    floor = make_schedule("highmmt", sizes, 6, min_fraction=0.5)
    assert floor.batches_per_task() == {"big": 6, "mid": 3, "small": 3} and floor.steps[2] == ["big"]
    # per task (train.task_min_fraction over train.min_task_fraction): the small task on every step, the rest as before
    own = make_schedule("highmmt", sizes, 6, min_fraction={"big": 0.5, "mid": 0.5, "small": 1.0})
    assert own.batches_per_task() == {"big": 6, "mid": 3, "small": 6} and own.steps[0] == ["big", "small"]
    with pytest.raises(ValueError, match="for task 'small'"):
        make_schedule("highmmt", sizes, 6, min_fraction={"small": 1.5})
    rr = make_schedule("round_robin", sizes, 6)
    assert [t for (t,) in rr.steps] == ["big", "mid", "small"] * 2
    sp = make_schedule("size_proportional", sizes, 3000, seed=0)
    share = sp.batches_per_task()["big"] / 3000
    assert abs(share - 0.6) < 0.05
    hot = make_schedule("temperature", sizes, 3000, temperature=100.0).batches_per_task()
    assert abs(hot["small"] / 3000 - 1 / 3) < 0.05
    assert make_schedule("temperature", sizes, 50, seed=3).steps == make_schedule("temperature", sizes, 50, seed=3).steps
    with pytest.raises(ValueError, match="unknown multitask strategy 'mixed'"):
        make_schedule("mixed", sizes, 5)
    with pytest.raises(ValueError, match="needs at least one"):
        make_schedule("highmmt", {"a": 0}, 5)


@pytest.mark.parametrize(
    "argv, error, match",
    [
        (["--preset", "huge"], ValueError, "unknown preset 'huge'"),
        (["--set", "train.lrr=1"], ValueError, "unknown key"),
        (["--set", "train.epochs=many"], TypeError, "expected an integer"),
        (["--set", "train.precision=fp8"], ValueError, "precision must be one of"),
        (["--tasks", "nope"], ValueError, "unknown task 'nope'"),
        (["--set", 'train.loss_weights={"other": 2}'], ValueError, "names task 'other'"),
        (["--resume"], FileNotFoundError, "trainer_state"),
    ],
)
def test_bad_command_lines_are_clear_errors(tmp_path, argv, error, match):
    base = ["--preset", "tiny", "--tasks", SYN, "--output-dir", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c"), "--quiet"]
    with pytest.raises(error, match=match):
        train.main(base + argv)


def test_bring_your_own_task_trains(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)

    def split(n):
        y = rng.integers(0, 2, n)
        acc = [(rng.standard_normal((8, 3)) + y_i).astype(np.float32) for y_i in y]
        return datasets.Dataset.from_dict({"acc": acc, "label": y.tolist()})

    datasets.DatasetDict({"train": split(40), "test": split(12)}).save_to_disk(tmp_path / "hf")
    spec = tmp_path / "my_task.yaml"
    spec.write_text(
        "name: my_task\npath: hf\nmodalities:\n  acc: timeseries\ntarget: label\ntask_type: classification\n"
        "num_classes: 2\nmetric: accuracy\nmodality_options:\n  acc: {channels: 3}\n"
    )
    out = tmp_path / "run"
    train.main(["--preset", "tiny", "--tasks", f"{spec},synthetic_single", "--output-dir", str(out),
                "--cache-dir", str(tmp_path / "cache"), "--quiet", "--set", "train.steps_per_epoch=3"])
    metrics = evaluate.main(["--checkpoint", str(out), "--no-robustness", "--quiet"])
    assert 0.0 <= metrics["my_task"]["accuracy"] <= 1.0


@pytest.mark.slow
def test_two_cpu_processes_agree(tmp_path):
    """torchrun --nproc_per_node 2 (gloo, accelerate's DDP; two tasks a step, so gradients are synced
    once per step over parameters some tasks leave unused): both ranks end with identical weights."""
    import socket

    out = tmp_path / "ddp"
    with socket.socket() as s:  # a free port, not a fixed one another job may hold
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), str(ROOT / "train.py"),
           "--preset", "tiny", "--tasks", SYN, "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet",
           "--set", "train.steps_per_epoch=4"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, cwd=ROOT, env=env, timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    ranks = json.loads((out / "ranks.json").read_text())
    assert ranks["world_size"] == 2
    assert len(ranks["weights_sha256"]) == 2 and len(set(ranks["weights_sha256"])) == 1
    assert (out / "DONE").is_file()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precisions_that_run_on_a_cpu_train_finite_weights(tmp_path, precision, tiny_run):
    """fp32 and bf16 autocast train through accelerate on the CPU (fp16 needs a GPU: its gradient
    scaler unscales before clipping and skips inf steps there); bf16 does change the arithmetic."""
    out = tiny_run(precision, "--cpu", "--set", f"train.precision={precision}", "--set", "train.epochs=1",
                    "--set", "train.steps_per_epoch=3")
    assert json.loads((out / "config.json").read_text())["precision"] == precision
    weights = load_file(out / "trainer_state" / next(p.name for p in (out / "trainer_state").glob("model-*")))
    assert all(torch.isfinite(w).all() for w in weights.values())
    if precision == "bf16":  # the same seeded run in fp32 ends elsewhere
        ref = tiny_run("fp32", "--cpu", "--set", "train.precision=fp32", "--set", "train.epochs=1",
                        "--set", "train.steps_per_epoch=3")
        ref_weights = load_file(ref / "trainer_state" / next(p.name for p in (ref / "trainer_state").glob("model-*")))
        assert any(not torch.equal(weights[k], ref_weights[k]) for k in weights)


def test_augmentation_changes_real_float_values_only():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 2)
    mask = torch.tensor([[1, 1, 1, 0, 0]] * 3, dtype=torch.bool)
    x[~mask] = 0.0
    ids = torch.randint(0, 255, (3, 7))
    inputs = {"ts": {"x": x.clone(), "mask": mask}, "text": {"x": ids.clone(), "mask": torch.ones(3, 7, dtype=torch.bool)}}
    train.augment_inputs(inputs, 0.2)
    out = inputs["ts"]["x"]
    assert not torch.equal(out[mask], x[mask])
    assert torch.equal(out[~mask], torch.zeros_like(out[~mask]))
    assert torch.equal(inputs["text"]["x"], ids)


def test_window_warping_reads_a_shared_window_of_real_steps_and_leaves_other_inputs():
    torch.manual_seed(0)
    ramp = torch.arange(10.0)
    mask = torch.ones(5, 10, dtype=torch.bool)
    mask[3, 6:] = False  # a shorter series: real steps first, then padding
    mask[4, 1:] = False  # one real step: nothing to warp
    x = ramp.reshape(1, 10, 1).repeat(5, 1, 2) * mask[..., None]
    pose = x[..., None].clone()  # [b, t, joints, 3]-like: a step axis then more axes
    gappy = torch.ones(5, 10, dtype=torch.bool)
    gappy[:, 4] = False  # real steps not first: left as they are
    inputs = {"ts": {"x": x.clone(), "mask": mask}, "pose": {"x": pose.clone(), "mask": mask},
              "gappy": {"x": x.clone(), "mask": gappy},
              "video": {"x": x[..., None, None].clone(), "mask": mask},  # float frames with a step mask
              "set": {"x": x.clone(), "mask": mask},  # unordered elements, the same shapes as a series
              "image": {"x": torch.rand(5, 5, 5, 1), "mask": torch.ones(5, 5, 5, dtype=torch.bool)}}
    kinds = {"ts": "timeseries", "pose": "pose", "gappy": "timeseries", "video": "video", "set": "set", "image": "image"}
    before = {m: v["x"].clone() for m, v in inputs.items()}
    train.augment_time(inputs, 0.5, kinds)
    out = inputs["ts"]["x"][..., 0]
    assert not torch.equal(out, x[..., 0])
    steps = out[:, 1:] - out[:, :-1]
    real = mask[:, 1:] & mask[:, :-1]
    # a ramp read through a window of 50-100% of its steps: still a ramp, slope between 0.5 and 1, inside the series
    assert bool((steps[real] > 0.5 - 1e-5).all() & (steps[real] < 1 + 1e-5).all())
    assert bool((out >= 0).all()) and bool((out[:3] <= 9 + 1e-5).all()) and bool((out[3, :6] <= 5 + 1e-5).all())
    assert torch.equal(out[3, 6:], torch.zeros(4)) and torch.equal(out[4], x[4, :, 0])  # padding; a one-step sample
    assert torch.allclose(inputs["pose"]["x"][..., 0, 0], out)  # one window per sample, shared by its series
    for m in ("gappy", "video", "set", "image"):
        assert torch.equal(inputs[m]["x"], before[m]), m
    with pytest.raises(ValueError, match="augment_time"):
        TrainConfig(augment_time=1.0)


def test_task_augment_time_warps_the_named_tasks_batches_only():
    """train.task_augment_time overrides train.augment_time per task, inside the one training step."""
    from types import SimpleNamespace

    class Recorder(nn.Module):  # a step loss that keeps what each task's batch looked like when it arrived
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))
            self.model = SimpleNamespace(config=SimpleNamespace(modalities={"ts": SimpleNamespace(kind="timeseries")}))
            self.seen = {}

        def forward(self, batch, task):
            self.seen[task] = batch["inputs"]["ts"]["x"].clone()
            return self.w * 0 + batch["inputs"]["ts"]["x"].sum() * 0

    ramp = torch.arange(10.0).reshape(1, 10, 1).repeat(4, 1, 1)
    batch = lambda: {"inputs": {"ts": {"x": ramp.clone(), "mask": torch.ones(4, 10, dtype=torch.bool)}}, "target": torch.zeros(4)}  # noqa: E731
    step_loss = Recorder()
    optimizer = torch.optim.SGD(step_loss.parameters(), lr=0.1)
    torch.manual_seed(0)
    tc = TrainConfig(augment_time=0.0, task_augment_time={"warped": 0.5})
    train.train_step(step_loss, [("warped", batch()), ("plain", batch())], optimizer, None, None, tc)
    assert not torch.equal(step_loss.seen["warped"], ramp) and torch.equal(step_loss.seen["plain"], ramp)
    tc = TrainConfig(augment_time=0.5, task_augment_time={"plain": 0.0})  # 0 switches a task off
    train.train_step(step_loss, [("warped", batch()), ("plain", batch())], optimizer, None, None, tc)
    assert not torch.equal(step_loss.seen["warped"], ramp) and torch.equal(step_loss.seen["plain"], ramp)
    with pytest.raises(ValueError, match="task_augment_time.plain"):
        TrainConfig(task_augment_time={"plain": 1.0})
    with pytest.raises(ValueError, match="task_min_fraction.small"):
        TrainConfig(task_min_fraction={"small": -0.1})
    with pytest.raises(ValueError, match="floor of the 'highmmt' schedule"):
        TrainConfig(strategy="round_robin", task_min_fraction={"small": 0.5})


def test_per_task_settings_reach_the_schedule_and_name_only_trained_tasks(tiny_run, monkeypatch):
    floors = []
    real = train.make_schedule
    monkeypatch.setattr(train, "make_schedule", lambda *a, **k: floors.append(k["min_fraction"]) or real(*a, **k))
    out = tiny_run("floors", "--set", "train.min_task_fraction=0.25", "--set", 'train.task_min_fraction={"synthetic_pair": 1.0}')
    assert floors and all(f == {"synthetic_pair": 1.0, "synthetic_single": 0.25} for f in floors), floors
    assert json.loads((out / "config.json").read_text())["train"]["task_min_fraction"] == {"synthetic_pair": 1.0}
    with pytest.raises(ValueError, match="train.task_augment_time names task 'nope', which is not being trained"):
        tiny_run("nope", "--set", 'train.task_augment_time={"nope": 0.2}')


def test_modality_dropout_leaves_out_one_modality_at_the_rate_asked():
    torch.manual_seed(0)
    inputs = {"a": torch.zeros(2), "b": torch.ones(2), "c": torch.ones(2)}
    kept = [train.drop_one_modality(inputs, 0.3) for _ in range(2000)]
    dropped = [set(inputs) - set(k) for k in kept]
    assert all(len(d) <= 1 for d in dropped) and all(k[m] is inputs[m] for k in kept for m in k)
    rate = np.mean([bool(d) for d in dropped])
    assert abs(rate - 0.3) < 0.04, rate
    counts = [sum(d == {m} for d in dropped) for m in inputs]  # each modality equally often
    assert max(counts) - min(counts) < 0.35 * np.mean(counts), counts
    assert train.drop_one_modality({"a": inputs["a"]}, 0.99) == {"a": inputs["a"]}  # one modality: never
    with pytest.raises(ValueError, match="modality_dropout"):
        TrainConfig(modality_dropout=1.0)


def test_noise_corrupts_each_input_type_and_only_the_named_modality():
    g = torch.Generator().manual_seed(0)
    inputs = {
        "img": {"x": torch.randint(0, 256, (2, 8, 8, 1), dtype=torch.uint8, generator=g), "mask": torch.ones(2, 8, 8, dtype=torch.bool)},
        "ids": {"x": torch.randint(0, 256, (2, 20), generator=g), "mask": torch.ones(2, 20, dtype=torch.bool)},
        "tab": {"x": torch.zeros(2, 1), "numeric": torch.randn(2, 4, generator=g), "numeric_observed": torch.ones(2, 4, dtype=torch.bool)},
    }
    for m in inputs:
        out = evaluate.add_noise(inputs, m, 1.0, seed=0)
        key = "numeric" if m == "tab" else "x"
        assert out[m][key].dtype == inputs[m][key].dtype
        assert not torch.equal(out[m][key], inputs[m][key])
        for other in set(inputs) - {m}:
            assert out[other] is inputs[other]
    assert torch.equal(evaluate.add_noise(inputs, "ids", 0.0, seed=0)["ids"]["x"], inputs["ids"]["x"])


def test_training_hooks_are_called_and_their_modules_train_and_resume(tmp_path, monkeypatch, tiny_run):
    from transference import hooks as hooks_mod

    calls = {"loss": 0, "epochs": []}

    class Probe(hooks_mod.TrainHook):
        name = "probe"

        def __init__(self) -> None:
            self.scale = torch.nn.Linear(1, 1)
            calls["initial"] = self.scale.weight.detach().clone()

        def setup(self, ctx, state):
            calls["setup_state"] = state
            lt = ctx.loaded["synthetic_single"]  # keep half the training rows: the stream must follow
            splits = dict(lt.splits, train=lt.splits["train"].select(range(len(lt.splits["train"]) // 2)))
            ctx.loaded["synthetic_single"] = type(lt)(**{**lt.__dict__, "splits": splits})

        def modules(self):
            return {"scale": self.scale}

        def extra_loss(self, ctx, task, batch, outputs):
            calls["loss"] += 1
            return self.scale(outputs.new_ones(1, 1)).pow(2).sum()

        def end_epoch(self, ctx, epoch):
            calls["epochs"].append(epoch)
            return [{"step": 0, "epoch": epoch + 1, "task": "synthetic_single", "split": "train", "metric": "probe", "value": 1.0}]

        def state_dict(self):
            return {"epochs_seen": len(calls["epochs"])}

    monkeypatch.setattr(hooks_mod, "_FACTORIES", [lambda run: Probe()])
    out = tiny_run("hooked")
    assert calls["loss"] > 0 and calls["epochs"] == [0, 1, 2] and calls["setup_state"] is None
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["metric"] == "probe" for r in rows) == 3
    st = torch.load(out / "trainer_state" / "state.pt", weights_only=True)
    assert st["hooks"] == {"probe": {"epochs_seen": 3}}
    assert "probe.scale.weight" in st["extra"]
    # The extra loss pulls the probe's output towards 0: its weight was trained.
    assert not torch.equal(st["extra"]["probe.scale.weight"], calls["initial"])
    with pytest.raises(ValueError, match="share a name"):
        monkeypatch.setattr(hooks_mod, "_FACTORIES", [lambda run: Probe(), lambda run: Probe()])
        hooks_mod.build_hooks(None)


def test_a_busy_cpu_is_reported_when_threads_are_not_set(tmp_path, monkeypatch, capsys, tiny_run):
    monkeypatch.setattr(train.os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    tiny_run("busy")
    captured = capsys.readouterr()
    assert "the CPU is busy" in captured.out + captured.err
    monkeypatch.setattr(train.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    tiny_run("idle")
    captured = capsys.readouterr()
    assert "the CPU is busy" not in captured.out + captured.err


def test_auto_precision_follows_the_device_and_is_kept_on_resume(tmp_path, monkeypatch):
    from transference import autotune

    assert train.resolve_precision("fp32", True, None) == ("fp32", "set")
    monkeypatch.setattr(autotune, "cpu_has_amx", lambda: True)
    choice, note = train.resolve_precision("auto", True, None)
    assert choice == "bf16" and "AMX" in note
    monkeypatch.setattr(autotune, "cpu_has_amx", lambda: False)
    choice, note = train.resolve_precision("auto", True, None)
    assert choice == "fp32" and "without AMX" in note
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"precision": "bf16"}))
    assert train.resolve_precision("auto", True, run) == ("bf16", "auto, as chosen when the run started")


def test_precision_probe_times_both_and_leaves_the_rng_alone():
    from highmmt.config import EncoderConfig, HighMMTConfig
    from transference import autotune

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    times = autotune.time_precisions(HighMMTConfig(dim=16, encoder=EncoderConfig(num_latents=4, heads=2, dim_head=8)),
                                     torch.device("cpu"), batch=4, tokens=8, repeats=2)
    assert torch.equal(torch.rand(3), expected)
    assert set(times) == {"fp32", "bf16"} and all(t > 0 for t in times.values())


@pytest.mark.slow
def test_compiled_training_runs_and_saves_plain_weights(tmp_path, tiny_run):
    out = tiny_run("compiled", "--tasks", "synthetic_pair", "--set", "train.compile=true", "--set", "train.epochs=1")
    weights = load_file(str(out / "model.safetensors"))
    assert not any("_orig_mod" in k for k in weights)
    evaluate.main(["--checkpoint", str(out), "--quiet", "--no-robustness", "--cache-dir", str(tmp_path / "cache")])


def test_runs_with_different_precisions_share_one_process(tmp_path, tiny_run):
    """accelerate's process-wide state would refuse the second precision; train.main resets it."""
    for precision in ("bf16", "fp32"):
        out = tiny_run(precision, "--set", "train.epochs=1",
                        "--set", f"train.precision={precision}")
        assert json.loads((out / "config.json").read_text())["precision"] == precision


def test_label_smoothing_penalises_overconfident_logits_and_is_checked():
    import math

    from highmmt.config import apply_overrides
    from highmmt.heads import task_loss
    from transference.config import RunConfig

    target = torch.tensor([0, 1])
    confident = torch.tensor([[20.0, -20.0], [-20.0, 20.0]])
    assert task_loss(confident, target, "classification") < 1e-6
    smoothed = task_loss(confident, target, "classification", label_smoothing=0.1)
    assert abs(float(smoothed) - 0.05 * 40) < 1e-3  # the 0.05 of mass on the wrong class costs 40 nats
    uniform = torch.zeros(2, 2)
    assert torch.allclose(task_loss(uniform, target, "classification", label_smoothing=0.1), torch.tensor(math.log(2)))
    with pytest.raises(ValueError, match="label_smoothing"):
        apply_overrides(RunConfig(), ["train.label_smoothing=1.0"])


def test_a_crafted_trainer_state_is_refused_and_runs_no_code(tmp_path):
    """state.pt is read with weights_only=True: a pickle that would call a function is an error."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (os.makedirs, (str(tmp_path / "pwned"),))

    state = tmp_path / "run" / "trainer_state" / "state.pt"
    state.parent.mkdir(parents=True)
    torch.save({"weights": "x", "payload": Payload()}, state, pickle_module=pickle)
    with pytest.raises(ValueError, match="state.pt: not a trainer state"):
        train.load_trainer_state(tmp_path / "run")
    assert not (tmp_path / "pwned").exists()


def test_metrics_with_a_torn_last_line_are_read_and_a_bad_middle_line_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    good = json.dumps({"step": 1, "epoch": 1, "task": "t", "split": "train", "metric": "loss", "value": 0.5})
    notes = []
    path.write_text(good + "\n" + good + "\n" + '{"step": 2, "epo')
    assert len(train.read_metrics(path, notes.append)) == 2 and "line 3: torn last line" in notes[0]
    path.write_text(good + "\n{oops\n" + good + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not a metrics row"):
        train.read_metrics(path)
    assert train.read_metrics(tmp_path / "absent.jsonl") == []


def test_a_run_folder_in_use_is_refused_and_a_stale_lock_is_taken_over(tmp_path, tiny_run):
    import subprocess

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / train.LOCK_FILE).write_text(f"{holder.pid}\n")
        with pytest.raises(RuntimeError, match=f"in use by another run \\(process {holder.pid}"):
            tiny_run("run")
    finally:
        holder.kill()
        holder.wait()
    (out / ".model.safetensors.x1.tmp").write_bytes(b"half")  # a killed writer's leftover
    tiny_run("run")  # the holder is gone: its lock is stale
    assert (out / "DONE").exists() and not (out / train.LOCK_FILE).exists()
    assert not list(out.glob(".*.tmp"))


def test_overwrite_removes_the_old_run_before_the_new_one_writes(tmp_path, monkeypatch, tiny_run):
    out = tiny_run("run")
    (out / "eval").mkdir()
    monkeypatch.setattr(train, "load_task", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # killed before the first epoch of the new run
        tiny_run("run", "--overwrite")
    left = {p.name for p in out.iterdir()}
    assert not left & {"model.safetensors", "best.json", "DONE", "config.json", "trainer_state", "eval"}, left


def test_damaged_weights_and_trainer_state_are_errors_that_name_the_file(tmp_path, tiny_run):
    from highmmt.checkpoint import load_weights

    out = tiny_run("run", "--set", "train.epochs=1")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match=r"model.safetensors: not a readable safetensors file"):
        load_weights(weights)
    with pytest.raises(ValueError, match=r"model.safetensors: not a readable safetensors file"):
        HighMMT.from_pretrained(out)
    state = out / "trainer_state" / "state.pt"
    state.write_bytes(state.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"state.pt: damaged trainer state"):
        train.load_trainer_state(out)


def test_resume_keeps_the_runs_settings_and_refuses_contradicting_flags(tmp_path):
    out = tmp_path / "run"
    base = ["--preset", "tiny", "--tasks", SYN, "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet",
            "--seed", "3", "--set", "train.steps_per_epoch=4", "--set", "train.epochs=2"]
    train.main(base)
    (out / "DONE").unlink()  # pretend it stopped after its last checkpoint
    bare = ["--output-dir", str(out), "--resume", "--quiet", "--cache-dir", str(tmp_path / "cache")]
    for extra, message in ((["--seed", "4"], "--seed 3, not 4"), (["--preset", "default"], "--preset tiny, not default"),
                           (["--tasks", "synthetic_single"], "--tasks"), (["--set", "train.lr=0.5"], "train.lr")):
        with pytest.raises(ValueError, match=re.escape(message)):
            train.main([*bare, *extra])
    saved = json.loads((out / "config.json").read_text())  # a run started before two settings existed
    del saved["train"]["ema_decay"], saved["train"]["semi"][next(iter(saved["train"]["semi"]))]
    (out / "config.json").write_text(json.dumps(saved))
    train.main([*bare, "--set", "train.threads=1"])  # bare --resume: the run's preset, tasks, seed and overrides
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["seed"] == 3 and cfg["preset"] == "tiny" and cfg["train"]["epochs"] == 2 and (out / "DONE").exists()


def test_atomic_writes_follow_the_umask(tmp_path):
    from highmmt.checkpoint import atomic_save_safetensors, atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        atomic_save_safetensors(tmp_path / "w.safetensors", {"w": torch.zeros(2)})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_run_folder_that_cannot_be_written_is_named(tmp_path, monkeypatch, tiny_run):
    """As root chmod does not stop writes, so the refusal is simulated where the run first writes."""
    real_open = os.open

    def refuse(path, flags, *a, **k):
        if str(path).endswith(train.LOCK_FILE):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(PermissionError, match=r"run: cannot write the run folder \(Permission denied\); pick a writable --output-dir"):
        tiny_run("run")


def test_every_shipped_preset_loads_and_default_is_short_with_a_longer_averaged_schedule():
    import dataclasses
    names = sorted(p.stem for p in train.CONFIG_DIR.glob("*.json"))
    assert {"tiny", "default", "short"} <= set(names)
    loaded = {n: train.load_preset(n)[0] for n in names}
    default, short = loaded["default"], loaded["short"]
    assert short.model == dataclasses.replace(default.model, modality_heads=False, summary_heads=False)
    assert default.model.modality_heads and default.model.summary_heads  # the default since session 12 / 15
    assert (default.train.epochs, default.train.ema_decay, default.train.select) == (30, 0.998, "task")
    assert (short.train.epochs, short.train.ema_decay, short.train.select) == (20, 0.0, "mean")  # the default until 2026-12-05
    assert default.train.wide_own_loss_only and not short.train.wide_own_loss_only  # the default since session 21
    assert dataclasses.replace(default.train, epochs=20, ema_decay=0.0, select="mean", wide_own_loss_only=False) == short.train


def test_select_task_keeps_each_tasks_own_best_epoch_and_evaluate_scores_with_it(tmp_path, monkeypatch, tiny_run):
    validate = train.validate

    def staged(*a):  # synthetic_pair peaks at epoch 1, synthetic_single at epoch 3, the mean at epoch 2
        rows, _ = validate(*a)
        epoch = a[5] + 1
        fake = {"synthetic_pair": {1: 0.9, 2: 0.8, 3: 0.1}[epoch], "synthetic_single": {1: 0.1, 2: 0.5, 3: 0.6}[epoch]}
        rows = [{**r, "value": fake[r["task"]]} if r["split"] == "validation" and r["metric"] == "accuracy" else r for r in rows]
        return rows, {1: 0.5, 2: 0.65, 3: 0.35}[epoch]

    monkeypatch.setattr(train, "validate", staged)
    out = tiny_run("run", "--set", "train.select=task", "--set", "train.select_min_rows=1")
    with killed_after_epoch(monkeypatch, 1):
        tiny_run("killed", "--set", "train.select=task")  # the default 500 rows: the synthetic tasks have fewer
    tiny_run("killed", "--resume")
    bests = json.loads((out / "task_weights" / "best.json").read_text())
    assert {t: b["epoch"] for t, b in bests.items()} == {"synthetic_pair": 1, "synthetic_single": 3}
    assert json.loads((tmp_path / "killed" / "task_weights" / "best.json").read_text()) == bests  # resumes
    assert not list((tmp_path / "killed" / "task_weights").glob("*.safetensors"))  # too few validation rows: no files
    assert json.loads((out / "best.json").read_text())["epoch"] == 2  # model.safetensors: the mean's epoch
    mean = load_file(str(out / "model.safetensors"))
    pair, single = (load_file(str(out / "task_weights" / f"{t}.safetensors")) for t in ("synthetic_pair", "synthetic_single"))
    assert not any(k.startswith("heads.synthetic_single") for k in pair) and not any(k.startswith("embedders.syn_b") for k in single)
    assert any(k.startswith("embedders.syn_b") for k in pair) and any(k.startswith("heads.synthetic_single") for k in single)
    st = torch.load(out / "trainer_state" / "state.pt", weights_only=True)
    last = load_file(str(out / "trainer_state" / st["weights"]))
    assert all(torch.equal(single[k], last[k]) for k in single)  # epoch 3 = the last weights
    assert not all(torch.equal(pair[k], mean[k]) for k in pair)

    flags = ["--checkpoint", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet", "--no-robustness", "--no-baselines"]
    own = evaluate.main([*flags, "--output-dir", str(tmp_path / "own")])
    assert own["_weights"] == {"synthetic_pair": "task epoch 1", "synthetic_single": "task epoch 3"}
    assert "| task epoch 1 |" in (out / "README.md").read_text()  # the model card says which weights scored it
    one = evaluate.main([*flags, "--output-dir", str(tmp_path / "one"), "--weights", "mean"])
    assert "_weights" not in one
    test = load_task("synthetic_pair", cache_dir=tmp_path / "cache", quiet=True).splits["test"]
    test.to_parquet(str(tmp_path / "rows.parquet"))
    for weights, metrics in (("auto", own), ("mean", one)):  # predict.py reads the same weights as evaluate.py
        path = predict.main(["--checkpoint", str(out), "--input", str(tmp_path / "rows.parquet"), "--task", "synthetic_pair",
                             "--output", str(tmp_path / f"{weights}.csv"), "--quiet", "--cpu", "--weights", weights])
        hits = np.array(datasets.Dataset.from_csv(str(path))["prediction"]) == np.array(test["label"])
        assert abs(hits.mean() - metrics["synthetic_pair"]["accuracy"]) < 1e-9
    model = HighMMT.from_pretrained(out)
    assert model.load_task_weights(out, "synthetic_pair") and all(
        torch.equal(model.state_dict()[k], v) for k, v in pair.items())
    assert not model.load_task_weights(tmp_path / "killed" / "nothing", "synthetic_pair")
    rows = bests["synthetic_pair"]["validation_rows"]
    config = json.loads((out / "config.json").read_text())
    config["train"]["select_min_rows"] = rows + 1  # too few validation rows to choose a task's own epoch on
    (out / "config.json").write_text(json.dumps(config))
    strict = evaluate.main([*flags, "--output-dir", str(tmp_path / "strict")])
    assert strict["_weights"]["synthetic_pair"] == f"mean ({rows} validation rows < {rows + 1})"
    assert strict["synthetic_pair"]["accuracy"] == one["synthetic_pair"]["accuracy"]
    from highmmt.checkpoint import task_weight_epochs
    assert task_weight_epochs(tmp_path, "auto") == {} and task_weight_epochs(out, "mean") == {}
    with pytest.raises(FileNotFoundError, match="train.select=task"):
        task_weight_epochs(tmp_path, "task")  # evaluate.py / predict.py --weights task on a run without them
    with pytest.raises(ValueError, match="select"):
        TrainConfig(select="best")
    with pytest.raises(ValueError, match="select_min_rows"):
        TrainConfig(select_min_rows=0)


def test_task_select_stacked_scores_that_tasks_validation_on_its_parts_stacked(tmp_path, tiny_run, monkeypatch):
    calls = []
    stacked = train.stacked_outputs

    def recorded(model, lt, tc, device):
        o, y = stacked(model, lt, tc, device)
        calls.append((lt.spec.name, model.part_weights["synthetic_pair"].weight.clone()))
        return o, y

    monkeypatch.setattr(train, "stacked_outputs", recorded)
    out = tiny_run("stacked", "--set", "model.modality_heads=true", "--set", 'train.task_select_stacked={"synthetic_pair": true}')
    assert [t for t, _ in calls] == ["synthetic_pair"] * 3  # each epoch's validation, that task only
    assert all(torch.equal(w, torch.ones(3)) for _, w in calls)  # the model's own part weights are not touched
    # the outputs: the parts weighted by the weights fitted on the validation rows with the cross-validated ridge
    model = HighMMT.from_pretrained(out).eval()
    model.part_weights["synthetic_pair"].weight.fill_(1.0)
    lt = load_task("synthetic_pair", cache_dir=tmp_path / "cache", quiet=True)
    tc = TrainConfig(max_eval_samples=0)
    o, y = stacked(model, lt, tc, "cpu")
    from tasks.loader import collate_rows

    batch = collate_rows(lt.splits["validation"], np.arange(len(lt.splits["validation"])), lt.spec)
    with torch.no_grad():
        _, parts = model(batch["inputs"], "synthetic_pair", return_parts=True)
    from highmmt.heads import fit_part_weights

    ridge, _ = choose_part_ridge(parts, batch["target"], "classification")
    weights = fit_part_weights(parts, batch["target"], "classification", ridge=ridge)
    np.testing.assert_allclose(o, sum(w * parts[k] for k, w in weights.items()).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y, batch["target"].numpy())
    with pytest.raises(ValueError, match="task_select_stacked names task 'synthetic_single', whose outputs have one part"):
        tiny_run("one_part", "--set", "model.modality_heads=true", "--set", 'train.task_select_stacked={"synthetic_single": true}')
    with pytest.raises(ValueError, match="task_select_stacked names task 'nope', which is not being trained"):
        tiny_run("unknown", "--set", 'train.task_select_stacked={"nope": true}')


def test_part_weights_are_fitted_on_validation_after_training_for_each_scored_checkpoint(tmp_path, tiny_run):
    out = tiny_run("late", "--set", "model.modality_heads=true", "--set", "train.select=task", "--set", "train.select_min_rows=1")
    fitted = json.loads((out / "part_weights.json").read_text())
    assert list(fitted) == ["synthetic_pair"]  # the one task with two modalities
    assert set(fitted["synthetic_pair"]) == {"model", "own", "ridge"}
    assert list(fitted["synthetic_pair"]["own"]) == ["deep", "modality:syn_a", "modality:syn_b"]
    ridges = fitted["synthetic_pair"]["ridge"]  # the ridge cross-validation chose, recorded for each fit
    assert set(ridges) == {"model", "own"} and all(r == "inf" or r in PART_RIDGES for r in ridges.values()), ridges
    mean = load_file(str(out / "model.safetensors"))
    own = load_file(str(out / "task_weights" / "synthetic_pair.safetensors"))
    for state, which in ((mean, "model"), (own, "own")):
        torch.testing.assert_close(state["part_weights.synthetic_pair.weight"],
                                   torch.tensor(list(fitted["synthetic_pair"][which].values())))
    assert not torch.equal(mean["part_weights.synthetic_pair.weight"], torch.ones(3))
    # the weights are the ones that minimise the validation loss: evaluating with them beats all-ones there
    model = HighMMT.from_pretrained(out).eval()
    model.load_task_weights(out, "synthetic_pair")
    val = load_task("synthetic_pair", cache_dir=tmp_path / "cache", quiet=True).splits["validation"]
    spec = load_task("synthetic_pair", cache_dir=tmp_path / "cache", quiet=True).spec
    from tasks.loader import collate_rows

    batch = collate_rows(val, np.arange(len(val)), spec)
    with torch.no_grad():
        _, parts = model(batch["inputs"], "synthetic_pair", return_parts=True)
    ridge, _ = choose_part_ridge(parts, batch["target"], "classification")
    assert ridges["own"] == (ridge if math.isfinite(ridge) else "inf")
    with torch.no_grad():
        fitted_loss = nn.functional.cross_entropy(model(batch["inputs"], "synthetic_pair"), batch["target"])
        model.part_weights["synthetic_pair"].weight.fill_(1.0)
        ones_loss = nn.functional.cross_entropy(model(batch["inputs"], "synthetic_pair"), batch["target"])
    assert float(fitted_loss) <= float(ones_loss) + 1e-6
    off = tiny_run("off", "--set", "model.modality_heads=true", "--set", "train.part_weights=none")
    assert not (off / "part_weights.json").exists()
    assert torch.equal(load_file(str(off / "model.safetensors"))["part_weights.synthetic_pair.weight"], torch.ones(3))
