"""The examples run and learn (short runs; the full runs are the README's commands)."""

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_main_example_writes_its_table_and_figures(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "examples" / "main.py"), "--smoke", "--out", str(tmp_path)],
                   capture_output=True, text=True, check=True, timeout=600)
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
