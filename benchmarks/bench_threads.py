"""Torch threads on a shared CPU: one analysis on the organism with 1, 2, ... threads.

Run::

    python benchmarks/bench_threads.py [--threads 1 2] [--busy 1] [--n 200]

Each thread count runs in a fresh subprocess: load the organism, then time
``find_in_context_heads`` (scoring and the causal check against random head sets) on
``--n`` 4-shot prompts. ``--busy K`` starts K other torch processes (one thread each,
matrix products in a loop) for the whole measurement, as on a machine shared with
other jobs. Reported: wall-clock seconds and CPU seconds (user + system of all the
process's threads). CPU seconds well above wall seconds times the cores actually
available mean threads spin waiting for each other: the cost of oversubscription.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

_WORK = """
import json, time, torch
import icl_heads as ih
torch.set_num_threads({threads})
torch.manual_seed(0)
model = ih.load_model("organism")
prompts = ih.organism_task().prompts(n={n}, shots=4, seed=0)
ih.icl_accuracy(model, prompts[:8])  # warm-up
wall, cpu = time.perf_counter(), time.process_time()
ih.find_in_context_heads(model, prompts)
print(json.dumps({{"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}}))
"""

_BUSY = """
import torch
torch.set_num_threads(1)
a = torch.randn(256, 256)
while True:
    a = torch.tanh(a @ a)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(var, None)  # torch.set_num_threads decides
    return env


def measure(threads: int, n: int) -> dict[str, float]:
    code = _WORK.format(threads=threads, n=n)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--busy", type=int, default=0, help="other torch processes running meanwhile (default 0)")
    parser.add_argument("--n", type=int, default=200, help="prompts (default 200)")
    args = parser.parse_args()
    busy = [subprocess.Popen([sys.executable, "-c", _BUSY], env=_env()) for _ in range(args.busy)]
    try:
        time.sleep(3 if busy else 0)  # let the competitors start
        load = os.getloadavg()[0]
        print(f"organism, {args.n} prompts, {args.busy} other torch process(es), {os.cpu_count()} cores")
        print(f"1-minute load average at the start: {load:.1f}\n")
        print("| threads | wall s | CPU s | CPU / wall |")
        print("|---:|---:|---:|---:|")
        for threads in args.threads:
            r = measure(threads, args.n)
            print(f"| {threads} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['cpu'] / r['wall']:.2f} |", flush=True)
    finally:
        for p in busy:
            p.kill()
            p.wait()


if __name__ == "__main__":
    main()
