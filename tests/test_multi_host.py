"""Two processes joined by ``jax.distributed`` on localhost train like one process.

``examples/multi_host.py``'s launcher runs in its own process group, so that whatever
happens the test can end it and every process it started; the test checks that none is left.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import assert_close

import optimizers

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))
import multi_host  # noqa: E402

STEPS, TIMEOUT = 10, 120  # the launcher stops its processes after 100 s; the test ends it after 120 s
NAMES = ["adamw"] + (["lamb"] if getattr(optimizers, "lamb", None) else [])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _launch(out: Path, *extra):
    """Runs the launcher; returns its exit code, output, the pids it started and its seconds."""
    cmd = [sys.executable, str(EXAMPLES / "multi_host.py"), "--processes", "2", "--steps", str(STEPS),
           "--out", str(out), *extra]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        output = ""
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its processes, if any is left
        except ProcessLookupError:
            pass
        proc.wait()
    assert time.monotonic() - start < TIMEOUT, f"the launcher did not end within {TIMEOUT} s"
    pids = [int(p) for p in output.split("started processes ")[1].splitlines()[0].split()]
    return proc.returncode, output, pids, time.monotonic() - start


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("multi_host")
    code, output, pids, _ = _launch(out, "--optimizers", ",".join(NAMES))
    assert code == 0, output
    assert len(pids) == 2 and not any(_alive(p) for p in pids), output
    return {name: [dict(np.load(out / f"{name}_process{i}.npz")) for i in range(2)] for name in NAMES}


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_two_processes_equal_one_process(two_processes, name):
    if name not in NAMES:
        pytest.skip(f"optimizers.{name} does not exist yet; it joins this test when it is added")
    first, second = two_processes[name]
    assert first.keys() == second.keys()
    for k in first:  # both processes hold exactly the same params
        np.testing.assert_array_equal(first[k], second[k], err_msg=k)
    # One process, two devices: the same program, the collectives inside one process.
    same_mesh = multi_host._flat(multi_host.train(name, STEPS, devices=jax.devices()[:2])[0])
    # One process, one device: float32 rounding apart (the sum over the batch is split in two).
    one_device = multi_host._flat(multi_host.train(name, STEPS, devices=jax.devices()[:1])[0])
    for k in first:
        assert_close(first[k], same_mesh[k], rtol=1e-6)
        assert_close(first[k], one_device[k], rtol=2e-5)


def test_a_failed_process_ends_the_run_and_leaves_nothing(tmp_path):
    code, output, pids, seconds = _launch(tmp_path, "--fail-process", "1")
    assert code == 1 and "FAILED: process 1 failed with exit code 1" in output, output
    assert "failing on purpose" in output
    assert not any(_alive(p) for p in pids)
    assert seconds < 60
