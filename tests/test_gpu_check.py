"""benchmarks/gpu_check.sh keeps to its time budget: a device call is cut at 10 minutes, and what the
check measures takes longer than that, so the script plans its steps against GPU_CHECK_BUDGET_S, skips
what no longer fits, marks finished steps done in its output folder so that a second call runs only
the rest, and always writes targets.json. Its dry run (GPU_CHECK_DRY=1: the plan, every command assumed
to use its whole time limit, nothing built or run) checks that here without a GPU."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
RESERVE = 25  # the script's seconds kept for its tables and targets.json


def dry_run(out: Path, budget: int, steps: str | None = None) -> list[tuple[int, int, str]]:
    """Runs the dry plan into `out`; returns its lines as (start s, limit s, command)."""
    env = {**os.environ, "GPU_CHECK_DRY": "1", "GPU_CHECK_BUDGET_S": str(budget), "PYTHON": sys.executable}
    env.pop("GPU_CHECK_STEPS", None)
    if steps is not None:
        env["GPU_CHECK_STEPS"] = steps
    proc = subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan = (out / "plan.txt").read_text().splitlines() if (out / "plan.txt").exists() else []
    rows = []
    for line in plan:
        m = re.match(r"(\d+) s \+(\d+) s: (.*)$", line)
        assert m, line
        rows.append((int(m.group(1)), int(m.group(2)), m.group(3)))
    return rows


def kind(command: str) -> str:
    """The step a planned command belongs to."""
    for key, name in [(" -m pytest", "tests"), ("+compile", "compile"), ("train_speed.py", "train"),
                      ("--op-graphs", "graphs"), ("--cuda-graphs --presets", "graphs"), ("method_step.py", "method"),
                      ("fastnas.search", "search"), ("compare_ops.py", "ops"), ("probe_conditional", "probe")]:
        if key in command:
            return name
    raise AssertionError(f"unknown command in the plan: {command}")


def test_unlimited_plan_runs_every_step_most_important_first(tmp_path):
    rows = dry_run(tmp_path, budget=100_000)
    kinds = [kind(c) for _, _, c in rows]
    order = ["tests", "train", "graphs", "search", "probe", "method", "compile", "ops"]
    assert sorted(set(kinds), key=order.index) == order
    assert kinds == sorted(kinds, key=order.index), kinds  # tests, targets 1, 3, 2, then side by side, extras
    search = [c for _, _, c in rows if "fastnas.search" in c]
    assert len(search) == 1 and "--epochs 1 1 1" in search[0]  # the preset's three stages, an epoch each
    assert not (tmp_path / "skipped.txt").exists()
    # no logs, and no picture: nothing was measured
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done", "plan.txt", "targets.json", "targets.md"]
    assert "not measured" in (tmp_path / "targets.md").read_text()
    assert not any((tmp_path / "done").iterdir())  # a dry run marks nothing done


def test_budget_cuts_limits_and_skips_what_does_not_fit(tmp_path):
    budget = 500
    rows = dry_run(tmp_path, budget=budget)
    assert rows, "nothing planned"
    start, limit, _ = rows[-1]
    assert start + limit <= budget - RESERVE  # every command ends before the reserve for targets.json
    for (s0, l0, _), (s1, _, _) in zip(rows[:-1], rows[1:], strict=True):
        assert s1 == s0 + l0
    skipped = (tmp_path / "skipped.txt").read_text().splitlines()
    assert skipped and all(line.startswith("skipped, out of time") for line in skipped)
    assert any("fastnas.search" in line for line in skipped)  # the stage epochs did not fit this budget
    targets = json.loads((tmp_path / "targets.json").read_text())  # written all the same, unmeasured = null
    for key in ("retrain_img_s", "search_total_min", "softmax_family_speedup", "darts2_speedup", "sync_free",
                "warmup_draw_ahead", "search_total_min_warmup_estimated"):
        assert targets[key] is None, key
    assert targets["search_stage_epoch_s"] == [None, None, None]
    assert targets["search_graphs"] is None


def test_second_call_runs_only_what_the_first_left(tmp_path):
    done = tmp_path / "done"
    done.mkdir()
    for step in ("tests", "train", "graphs", "method"):
        (done / step).write_text("2026-12-03T00:00:00\n")
    rows = dry_run(tmp_path, budget=100_000)
    commands = [c for _, _, c in rows]
    assert [kind(c) for c in commands] == ["search", "probe", "compile", "ops"]
    assert "--resume" not in commands[0]
    # the search the first call started and the budget cut: resumed from its checkpoint
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "checkpoint.pt").write_bytes(b"")
    rows = dry_run(tmp_path, budget=100_000, steps="train search")  # by name, still without what is done
    assert [c.split(" -m ", 1)[-1] for _, _, c in rows] == [f"fastnas.search --resume {tmp_path}/search --device cuda"]


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def test_targets_are_read_from_the_result_files(tmp_path, capsys):
    """targets.json from result files in the formats the benchmark scripts write (no step runs)."""
    def trainer(config, rate, warmup=2.0):
        return {"config": config, "images_per_s": rate, "peak_mb": 5000.0, "warmup_s": warmup}

    _write(tmp_path / "train_speed_cuda.json", [trainer("trainer", 1000.0), trainer("trainer+cuda_graphs", 3000.0),
                                                trainer("trainer+bf16+channels_last+cuda_graphs", 4500.0)])
    _write(tmp_path / "loss_curve.json", {"configs": {
        "trainer": {"final_loss": 1.9, "within_noise": None},
        "trainer+cuda_graphs": {"final_loss": 1.91, "within_noise": True},
        "trainer+bf16+channels_last+cuda_graphs": {"final_loss": 1.92, "within_noise": True}}})
    # the compiled step is the fastest but trains differently: reported, not chosen
    _write(tmp_path / "compile" / "train_speed_cuda.json",
           [trainer("trainer", 990.0), trainer("trainer+bf16+channels_last+compile", 5000.0, 95.0)])
    _write(tmp_path / "compile" / "loss_curve.json", {"configs": {
        "trainer": {"final_loss": 1.89, "within_noise": None},
        "trainer+bf16+channels_last+compile": {"final_loss": 2.5, "within_noise": False}}})
    eager = {"darts": 100.0, "darts2": 20.0, "pcdarts": 60.0, "drnas": 80.0, "pdarts": 90.0, "gdas": 200.0,
             "progressive": 210.0}
    _write(tmp_path / "method_step.json", [{"preset": p, "images_per_s": r, "mode": "eager"} for p, r in eager.items()])
    _write(tmp_path / "graphs" / "method_step.json",
           [{"preset": p, "images_per_s": 3 * eager[p], "mode": "cuda graphs: iteration (10 replays)"}
            for p in ("darts", "darts2", "pcdarts", "drnas", "pdarts")]
           + [{"preset": "progressive", "images_per_s": 400.0, "mode": "cuda graphs: architecture step (10 replays)",
               "gpu_busy": 0.41, "kernels_per_step": 1800.0}])
    _write(tmp_path / "op_graphs" / "method_step.json", [
        {"preset": "progressive", "images_per_s": 600.0, "mode": "cuda graphs: architecture step (10 replays); "
                                                                  "per-op graphs: 464 ops, 300 replays",
         "s_per_iter": 0.05, "warmup_s_per_iter_ahead": 0.02, "warmup_s_per_iter_no_ahead": 0.025},
        {"preset": "gdas", "images_per_s": 300.0, "mode": "eager; per-op graphs: 464 ops, 300 replays"}])
    _write(tmp_path / "search" / "metrics.jsonl", "".join(
        json.dumps({"stage": s, "epoch": 1, "warmup": False, "epoch_time_s": secs, "epoch_wall_s": secs + 0.5}) + "\n"
        for s, secs in ((1, 7.0), (2, 12.0), (3, 18.0))))
    _write(tmp_path / "search" / "summary.json", {"stages": [{"stage": s, "finish_s": 2.0} for s in (1, 2, 3)]})
    graphs_line = "CUDA graphs: on for the architecture step (one capture per epoch)\n"
    _write(tmp_path / "search.log", "".join(f"{graphs_line}stage {s} epoch 1/1: ...\n" for s in (1, 2, 3))
           + "search time 40.1s; results in x\n")
    _write(tmp_path / "sync_free.log", "......\n6 passed in 3.20s\n")
    _write(tmp_path / "no_cudnn_benchmark" / "method_step.json",
           [{"preset": "darts", "images_per_s": 80.0, "mode": "eager"},
            {"preset": "progressive", "images_per_s": 210.0, "mode": "eager"}])
    _write(tmp_path / "probe_conditional.json", {"available": True, "captured": True, "matches_eager": True, "ops": [
        {"op": "sep_conv_3x3", "max_abs_diff": 1e-6, "replay_ms": 0.5, "eager_ms": 1.5}]})
    fast = "trainer+bf16+channels_last+cuda_graphs"
    _write(tmp_path / "b128" / "train_speed_cuda.json",
           [trainer("trainer+cuda_graphs", 3200.0), trainer(fast, 4800.0),
            trainer(fast + "+no_cudnn_benchmark", 3200.0)])
    assert dry_run(tmp_path, budget=560, steps="none") == []
    t = json.loads((tmp_path / "targets.json").read_text())
    assert t["retrain_mode"] == "trainer+bf16+channels_last+cuda_graphs" and t["retrain_img_s"] == 4500.0
    assert t["retrain_loss_within_noise"] is True
    assert t["retrain_not_within_noise"] == ["trainer+bf16+channels_last+compile"]
    assert t["retrain_compile"] == {"trainer+bf16+channels_last+compile": {"img_s": 5000.0, "warmup_s": 95.0,
                                                                            "within_noise": False}}
    assert t["retrain_final_loss"]["trainer"] == 1.9  # eager fp32 of the main run, not the compile folder's
    assert t["retrain_600_epochs_h"] == round(600 * 50000 / 4500 / 3600, 2)
    assert t["softmax_family_speedup"] == {"darts": round(300 / 51.1, 2), "pcdarts": round(180 / 33.8, 2),
                                           "drnas": round(240 / 42.6, 2), "pdarts": round(270 / 44.4, 2)}
    assert t["darts2_speedup"] == round(60 / 14.4, 2)
    assert t["op_graphs_vs_without"] == {"progressive": 1.5, "gdas": 1.5}
    # gpu_check's choice for the stage epochs: per-op graphs, since progressive was faster with them
    targets = load_benchmark("gpu_targets")
    assert targets.op_graphs_pay(tmp_path) is True
    assert targets.main([str(tmp_path), "--op-graphs-pay"]) == 0 and capsys.readouterr().out == "1\n"
    assert t["search_stage_epoch_s"] == [7.0, 12.0, 18.0] and t["sync_free"] is True
    from fastnas.search import PRESETS, SearchConfig

    epochs = PRESETS["progressive"].get("epochs", SearchConfig().epochs)
    # every epoch with its derivation, metrics and checkpoint (epoch_wall_s), and the three stage ends
    walls = [7.5, 12.5, 18.5]
    assert t["search_total_min"] == round((sum(n * e for n, e in zip(epochs, walls, strict=True)) + 6.0) / 60, 1)
    # the warm-up epochs at a warm-up step's share of an iteration (0.02 / 0.05 s in the op-graphs mode,
    # which paid here): less than the upper bound above
    warm = PRESETS["progressive"].get("warmup_epochs", SearchConfig().warmup_epochs)
    assert t["search_total_min_warmup_estimated"] == round((sum(
        (n - w + 0.4 * w) * e for n, w, e in zip(epochs, warm, walls, strict=True)) + 6.0) / 60, 1)
    assert t["search_total_min_warmup_estimated"] < t["search_total_min"]
    assert t["search_graphs"] == "on for the architecture step (one capture per epoch)"
    assert t["search_mode"]["darts"] == "cuda_graphs" and t["search_mode"]["gdas"] == "eager"
    assert t["cudnn_benchmark_vs_heuristics"] == {"darts": 1.25, "progressive": 1.0,
                                                  f"retrain (batch 128, {fast})": 1.5}
    assert t["gpu_busy"] == {"progressive (cuda graphs)": {"busy": 0.41, "kernels": 1800.0}}
    assert t["warmup_draw_ahead"] == {"progressive (op graphs)": 1.25}
    assert t["conditional_nodes"] == {"captured": True, "why": None, "matches_eager": True,
                                      "eager_over_replay": {"sep_conv_3x3": 3.0}}
    # what a person reads: each target, its goal, the measured value, met or not; and the same as bars
    table = (tmp_path / "targets.md").read_text()
    assert f"| 1. retraining images/s, batch 96 ({fast}) | >= 4,000 | 4,500 | yes |" in table
    assert f"| 2. the default search, three stages, preset epochs | <= 20 min | {t['search_total_min']:,.2f} |" in table
    assert "| 3. darts2 iteration vs 2026-11-29 | >= 2x | 4.17 | yes |" in table
    assert "| 4. no host sync in a steady search or training step | true | yes | yes |" in table
    assert (tmp_path / "targets.png").stat().st_size > 1000


def test_targets_cli_refuses_a_missing_folder(tmp_path, capsys):
    assert load_benchmark("gpu_targets").main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing'} is not a folder"



def test_every_planned_command_parses_and_names_what_exists(tmp_path, monkeypatch, capsys):
    """Each command of the full plan, checked without running it: its flags parse, the configs, presets
    and test files it names exist, and each search stage's options make a valid config (on the CPU). A
    mistyped config name once cost a GPU run its retraining table."""
    import shlex

    from fastnas.cli import search as search_cli
    from fastnas.search import PRESETS

    rows = dry_run(tmp_path / "plan", budget=100_000)
    scripts = {name: load_benchmark(name) for name in ("train_speed", "method_step", "compare_ops",
                                                         "probe_conditional")}
    launched = []

    def fake_worker(script, name, args, **kw):  # records what would run, runs nothing
        launched.append((Path(script).stem, name))
        return {"config": name, "preset": name, "error": "not run"}

    for module in scripts.values():
        monkeypatch.setattr(module.harness, "run_worker", fake_worker)
    for _, _, command in rows:
        argv = shlex.split(command)[1:]  # without the interpreter
        if argv[:2] == ["-m", "pytest"]:
            paths = [a for a in argv if a.startswith("tests")]
            assert paths and all((ROOT / a).exists() for a in paths), command
        elif argv[:2] == ["-m", "fastnas.search"]:
            args = search_cli.parse_args([("cpu" if a == "cuda" else a) for a in argv[2:]])
            search_cli.launch(args)  # raises ConfigError on an invalid stage config
        else:
            name = Path(argv[0]).stem
            argv = [a if not a.startswith(str(tmp_path)) else str(tmp_path / "out") for a in argv[1:]]
            before = len(launched)
            if name == "probe_conditional":  # parsed; without CUDA it says so, writes its answer, exits 0
                assert scripts[name].main(argv) == 0
                answer = json.loads((tmp_path / "out" / "probe_conditional.json").read_text())
                if not __import__("torch").cuda.is_available():
                    assert answer["available"] is False and answer["why"] == "needs a CUDA device"
                continue
            if name == "compare_ops":
                assert scripts[name].main(argv) == 2  # parsed; refuses --device cuda without a GPU
                assert "no CUDA device" in capsys.readouterr().err
                continue
            assert scripts[name].main([("cpu" if a == "cuda" else a) for a in argv]) == 0, command
            names = [n for _, n in launched[before:]]
            assert names, command
            if name == "train_speed":
                assert set(names) <= set(scripts[name].CONFIGS), names
            else:
                assert set(names) <= set(PRESETS), names
    assert {s for s, _ in launched} == {"train_speed", "method_step"}


def test_gpu_busy_is_the_union_of_kernel_intervals():
    """harness.busy_fraction: overlapping kernels (two streams) count once, gaps (the host) do not."""
    harness = load_benchmark("harness")
    assert harness.busy_fraction([], 10.0) == 0.0
    assert harness.busy_fraction([(0, 2), (1, 3), (5, 6)], 10.0) == 0.4  # [0, 3] and [5, 6]
    assert harness.busy_fraction([(4, 5), (0, 10), (2, 3)], 10.0) == 1.0  # nested inside one long kernel
    assert harness.busy_fraction([(0, 1)], 0.0) == 0.0
    if not __import__("torch").cuda.is_available():
        assert harness.gpu_profile(lambda: None, 2) == {}  # the tables then show "-"


@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_gpu_profile_counts_kernels_on_a_gpu():
    """The profiler's kernel events as gpu_profile reads them: a step of 3 elementwise kernels and one
    matmul is 4 kernels (cuBLAS may split the matmul in two), the GPU busy part of the time, at most all."""
    import torch

    harness = load_benchmark("harness")
    x = torch.randn(512, 512, device="cuda")

    def step():
        y = (x * 2 + 1).relu()
        return y @ y

    step()
    row = harness.gpu_profile(step, 5)
    assert 4 <= row["kernels_per_step"] <= 5, row
    assert 0 < row["gpu_busy"] <= 1 and row["gpu_kernel_ms_per_step"] > 0, row
