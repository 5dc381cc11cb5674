"""The examples run and learn (short runs; the full runs are the README's commands)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_main_example_learns_digits():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "main.py"), "--steps", "200"],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    accuracy = float(out.split("validation accuracy after 200 steps:")[1].split()[0])
    assert accuracy > 0.9  # chance is 0.1


def test_schedule_gallery_is_drawn(tmp_path):
    out = tmp_path / "schedules.png"
    subprocess.run([sys.executable, str(ROOT / "examples" / "plot_schedules.py"), "--out", str(out)],
                   check=True, capture_output=True, timeout=600)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
