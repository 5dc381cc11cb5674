"""Data-parallel training across processes with ``jax.distributed``, on one machine.

Each process is a JAX "host" with one CPU device; ``jax.distributed.initialize`` joins them
into one runtime whose ``jax.devices()`` are all the processes' devices, and the CPU
collectives go through gloo. Every process runs the same program: it builds the same
replicated params, feeds its share of every global batch
(``jax.make_array_from_process_local_data``), and ``jax.jit`` reduces the gradients across
processes. The launcher starts the processes, waits for them, checks that they all end with
the same params, and never leaves a process behind (a failed or stuck process ends the
run, within ``--timeout`` seconds)::

    python examples/multi_host.py --processes 2 [--steps 200] [--optimizers adamw,lamb]

A process alone (what the launcher runs; on several machines, run one per machine with the
first one's address in ``--coordinator``)::

    python examples/multi_host.py --processes 2 --process-id 0 --coordinator localhost:12345
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_optimizer(name: str, learning_rate: float):
    import optimizers

    kwargs = {"learning_rate": learning_rate}
    if name in ("adamw", "lamb"):
        kwargs["weight_decay"] = 1e-4
    return getattr(optimizers, name)(**kwargs)


def train(name: str, steps: int, learning_rate: float = 3e-3, devices=None, batch_size: int = 64, seed: int = 0):
    """Data-parallel training over ``devices`` (default: every device of every process).

    Every process calls this with the same arguments and feeds its share of each global
    batch. Returns this process's copy of the final params (NumPy) and the validation
    accuracy. With one process and one device it is plain single-device training.
    """
    import jax
    import optax
    from digits_mlp import Mlp, accuracy, cross_entropy, initial_params, load_data
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    import optimizers

    devices = jax.devices() if devices is None else devices
    mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices)
    replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    x_train, x_val, y_train, y_val = load_data()  # every process loads the same data
    model, tx = Mlp(), make_optimizer(name, learning_rate)
    params = jax.tree.map(lambda a: jax.make_array_from_process_local_data(replicated, a), initial_params(seed))
    s_sh = optimizers.state_shardings(tx, params, replicated)
    opt_state = jax.jit(tx.init, out_shardings=s_sh)(params)

    def train_step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(lambda p: cross_entropy(model.apply({"params": p}, x), y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(train_step, in_shardings=(replicated, s_sh, split, split),
                   out_shardings=(replicated, s_sh, replicated))
    share = batch_size // jax.process_count()
    mine = slice(jax.process_index() * share, (jax.process_index() + 1) * share)
    rng = np.random.default_rng(seed)  # the same global batches in every process
    for _ in range(steps):
        idx = rng.choice(len(x_train), batch_size, replace=False)[mine]
        x = jax.make_array_from_process_local_data(split, x_train[idx], (batch_size,) + x_train.shape[1:])
        y = jax.make_array_from_process_local_data(split, y_train[idx], (batch_size,))
        params, opt_state, loss = step(params, opt_state, x, y)
    local = jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), params)
    return local, accuracy(model, local, x_val, y_val)


def _flat(tree) -> dict:
    import jax

    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _die_with_launcher(deadline: float):
    """Ends this process if the launcher dies or ``deadline`` (monotonic seconds) passes."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent and time.monotonic() < deadline:
            time.sleep(0.5)
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()


def worker(args):
    """One process: join the others, train each optimizer, save the params."""
    _die_with_launcher(time.monotonic() + args.timeout)
    try:
        import jax

        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.config.update("jax_num_cpu_devices", 1)
        jax.distributed.initialize(args.coordinator, args.processes, args.process_id,
                                   initialization_timeout=int(args.timeout))
        if args.process_id == args.fail_process:
            raise RuntimeError(f"process {args.process_id}: failing on purpose (--fail-process)")
        for name in args.optimizers.split(","):
            params, acc = train(name, args.steps, args.learning_rate)
            if args.out:
                np.savez(Path(args.out) / f"{name}_process{args.process_id}.npz", **_flat(params))
            print(f"process {args.process_id}/{args.processes} ({jax.device_count()} devices): {name} "
                  f"validation accuracy after {args.steps} steps {acc:.4f}", flush=True)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)  # skip jax.distributed's shutdown barrier, which would wait for the others


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _wait(procs, timeout: float):
    """None when every process succeeded; otherwise why not. Stops at the first failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        codes = [p.poll() for p in procs]
        failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            return f"process {failed[0]} failed with exit code {codes[failed[0]]}"
        if all(c == 0 for c in codes):
            return None
        time.sleep(0.1)
    return f"timed out after {timeout:.0f} s"


def _check(out: Path, names, processes: int) -> bool:
    """Whether every process ended with exactly the same params, per optimizer."""
    ok = True
    for name in names:
        runs = [np.load(out / f"{name}_process{i}.npz") for i in range(processes)]
        diff = max(float(np.max(np.abs(r[k] - runs[0][k]), initial=0.0)) for r in runs[1:] for k in runs[0].files)
        same = all(r.files == runs[0].files and all(np.array_equal(r[k], runs[0][k]) for k in r.files) for r in runs)
        print(f"{name}: params identical in the {processes} processes: {same} (max |difference| {diff:.1e})")
        ok &= same
    return ok


def launch(args) -> int:
    """Starts the processes, waits for them, checks them; kills whatever is left, always."""
    out = Path(args.out or tempfile.mkdtemp(prefix="multi_host_"))
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device per process
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    common = [sys.executable, __file__, "--processes", str(args.processes), "--coordinator",
              f"localhost:{_free_port()}", "--steps", str(args.steps), "--optimizers", args.optimizers,
              "--learning-rate", str(args.learning_rate), "--out", str(out), "--fail-process",
              str(args.fail_process), "--timeout", str(args.timeout)]
    procs, logs = [], [out / f"process{i}.log" for i in range(args.processes)]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the clean-up below on SIGTERM too
    try:
        for i, log in enumerate(logs):
            with open(log, "w") as f:
                procs.append(subprocess.Popen(common + ["--process-id", str(i)], stdout=f, stderr=subprocess.STDOUT,
                                              env=env))
        print(f"started processes {' '.join(str(p.pid) for p in procs)}", flush=True)
        failure = _wait(procs, args.timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
    for i, log in enumerate(logs):
        text = log.read_text().strip()
        lines = text.splitlines() if failure is None else text.splitlines()[-15:]
        print("\n".join(f"[process {i}] {line}" for line in lines))
    if failure is not None:
        print(f"FAILED: {failure}; every process has been stopped", flush=True)
        return 1
    ok = _check(out, args.optimizers.split(","), args.processes)
    print(f"params saved in {out}")
    return 0 if ok else 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--process-id", type=int, default=None, help="run as this process (set by the launcher)")
    parser.add_argument("--coordinator", default=None, help="host:port of process 0 (set by the launcher)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--optimizers", default="adamw", help="comma-separated, e.g. adamw,lamb")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--out", default=None, help="folder for the params and logs (default: a new temporary one)")
    parser.add_argument("--timeout", type=float, default=100.0, help="seconds before every process is stopped")
    parser.add_argument("--fail-process", type=int, default=-1, help="make this process fail (to test the launcher)")
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error(f"--processes must be >= 1, got {args.processes}")
    if args.process_id is None:
        sys.exit(launch(args))
    if args.coordinator is None:
        parser.error("--coordinator is needed with --process-id")
    worker(args)


if __name__ == "__main__":
    main()
