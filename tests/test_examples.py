"""The examples run and learn (short runs; the full runs are the README's commands)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# The smoke runs are a few steps each: compiling dominates them, and XLA's cheapest CPU backend
# optimisation level halves it without changing what is computed.
FAST_COMPILE = dict(os.environ,
                    XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip())


def run_example(name, *args):
    return subprocess.run([sys.executable, str(ROOT / "examples" / name), *args],
                          capture_output=True, text=True, check=True, timeout=600, env=FAST_COMPILE)


def test_main_example_writes_its_table_and_figures(tmp_path):
    run_example("main.py", "--smoke", "--out", str(tmp_path))
    table = (tmp_path / "results.md").read_text()
    for recipe in ("(a) AdamW + one-cycle", "(b) SGD + CLR", "(c) SGD + SGDR", "(d) Adam"):
        assert recipe in table
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    accuracies = [float(r["final_mean"]) for r in rows]
    assert min(accuracies) > 0.3  # 40 steps already learn (chance is 0.1)
    for figure in ("val_accuracy.png", "lr_finder_adamw.png", "lr_finder_sgd.png"):
        assert (tmp_path / figure).read_bytes()[:4] == b"\x89PNG"


def test_schedule_gallery_is_drawn(tmp_path):
    out = tmp_path / "schedules.png"
    subprocess.run([sys.executable, str(ROOT / "examples" / "plot_schedules.py"), "--out", str(out)],
                   check=True, capture_output=True, timeout=600)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_optimizer_comparison_writes_its_table_and_figure(tmp_path):
    run_example("compare_optimizers.py", "--smoke", "--out", str(tmp_path))
    table = (tmp_path / "results.md").read_text()
    names = ("Adagrad", "Adadelta", "RMSProp", "Adam", "Adamax", "SGD + CLR")
    for name in names:
        assert f"| {name} |" in table
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["optimizer"] for r in rows] == list(names)
    assert all(float(r["final_val_mean"]) > 0.2 for r in rows)  # 30 steps already learn (chance is 0.1)
    for figure in ("accuracy.png", "lr_finder_sgd.png"):
        assert (tmp_path / figure).read_bytes()[:4] == b"\x89PNG"


def test_char_lm_writes_its_table_and_figure(tmp_path):
    run_example("char_lm.py", "--smoke", "--out", str(tmp_path))
    table = (tmp_path / "results.md").read_text()
    assert "(i) AdamW" in table and "(ii) LAMB, 8x batch" in table
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["batch"]) for r in rows] == [8, 64]
    assert all(float(r["final_val_loss"]) < 5.0 for r in rows)  # below log(vocabulary) ~ 5.1: it learns
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_quantized_state_comparison_writes_its_tables(tmp_path):
    """The language model (the digits task shares all but its data), one optimizer, 2 seeds:
    float32, 8-bit and the noise control, paired per seed."""
    run_example("quantized_state.py", "--smoke", "--tasks", "char_lm", "--optimizers", "AdamW", "--out", str(tmp_path))
    table = (tmp_path / "results.md").read_text()
    assert table.count("| AdamW |") == 1 and "float32 vs float32 (noise)" in table
    raw = json.loads((tmp_path / "results.json").read_text())
    for task in ("char_lm 8-bit",):
        runs = raw[task]["runs"]["AdamW"]
        assert [len(runs[k]) for k in ("float32", "8-bit", "noise")] == [2, 2, 2]
        for (acc, loss), (_, noise_loss) in zip(runs["float32"], runs["noise"]):
            assert 0.0 <= acc <= 1.0 and abs(noise_loss - loss) < 1e-3 * loss  # 5 steps: the noise stays small


def test_scanned_transformer_with_layer_axes_is_the_unrolled_one(tmp_path):
    """nn.scan's blocks with LAMB and layer_axes: the unrolled model's run; without, another."""
    run_example("scanned_transformer.py", "--smoke", "--out", str(tmp_path))  # exits 1 otherwise
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in
            (tmp_path / "results.md").read_text().splitlines() if line.startswith("| (")}
    assert float(rows["(b) nn.scan, layer_axes"][-1].strip(" |")) < 1e-4
    assert float(rows["(c) nn.scan, no layer_axes"][-1].strip(" |")) > 1e-3


@pytest.mark.parametrize("example", ["nnx_example.py", "linen_example.py"])
def test_short_flax_example_prints_an_accuracy_above_chance(example):
    result = run_example(example, "--steps", "60")
    accuracy = float(result.stdout.strip().splitlines()[-1].split(":")[1])
    assert accuracy > 0.5  # chance is 0.1


@pytest.mark.parametrize("example", ["data_parallel_pmap.py", "sharded_jit.py"])
def test_multi_device_example_runs_on_8_cpu_devices(example):
    env = dict(FAST_COMPILE, XLA_FLAGS=FAST_COMPILE["XLA_FLAGS"] + " --xla_force_host_platform_device_count=8")
    result = subprocess.run([sys.executable, str(ROOT / "examples" / example), "--steps", "20"],
                            capture_output=True, text=True, check=True, timeout=600, env=env)
    assert "accuracy" in result.stdout.lower()


def test_lr_free_study_writes_its_tables_and_figure(tmp_path):
    """The four swept optimizers at two learning rates, 20 steps, one seed (no range test)."""
    run_example("lr_free_study.py", "--smoke", "--out", str(tmp_path))
    table = (tmp_path / "results.md").read_text()
    names = ("AdamW, constant", "AdamW + WSD", "schedule-free AdamW", "Prodigy")
    for name in names:
        assert f"| {name} |" in table
    with open(tmp_path / "sensitivity.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["optimizer"], float(r["multiplier"])) for r in rows] == [(n, k) for n in names for k in (0.1, 1.0)]
    at_base = {r["optimizer"]: float(r["acc_mean"]) for r in rows if float(r["multiplier"]) == 1.0}
    assert all(a > 0.3 for a in at_base.values())  # 20 steps already learn (chance is 0.1)
    assert (tmp_path / "lr_free_study.png").read_bytes()[:4] == b"\x89PNG"


def test_lr_free_char_lm_writes_its_tables_and_figure(tmp_path):
    """The baseline and schedule-free AdamW on a tiny transformer: 8 steps, 2 seeds, 2 learning rates."""
    run_example("lr_free_char_lm.py", "--smoke", "--out", str(tmp_path))
    table = (tmp_path / "results.md").read_text()
    names = ("AdamW + warm-up + cosine", "schedule-free AdamW")
    for name in names:
        assert f"| {name} |" in table
    with open(tmp_path / "sensitivity.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["optimizer"], float(r["multiplier"])) for r in rows] == [(n, k) for n in names for k in (0.1, 1.0)]
    loss = {(r["optimizer"], float(r["multiplier"])): float(r["val_loss"]) for r in rows}
    for name in names:  # 8 steps at the base rate learn more than at a tenth of it
        assert loss[name, 1.0] < loss[name, 0.1] - 0.1
    assert (tmp_path / "lr_free_char_lm.png").read_bytes()[:4] == b"\x89PNG"
