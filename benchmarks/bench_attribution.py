"""Benchmark the ``attribution`` head score against a plain forward pass and the exact ``ablation`` score.

Run::

    python benchmarks/bench_attribution.py [--model organism|gpt2-small-shaped] [--n 64] [--threads 1]

Each measurement runs in a fresh subprocess (peak memory: the largest resident set
size above the state after loading the model, as in ``bench_find_heads.py``). The
exact score is timed on ``--exact-n`` prompts and scaled linearly to ``--n`` (its
cost is linear in prompts). The ratios are what to read.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_find_heads import _model, _PeakRSS

PLAN = ("forward", "attribution", "attribution_rescore4", "ablation")


def _measure(kind: str, what: str, n: int, batch_size: int, threads: int, tmp: str) -> dict:
    """Runs in a subprocess: one measurement."""
    import torch

    torch.set_num_threads(threads)
    import icl_heads as ih
    from icl_heads.organism import organism_task

    model = _model(kind, Path(tmp))
    access = ih.access.ModelAccess(model)
    tp = access.tokenize(organism_task(seed=5).prompts(n, 4, seed=5))
    batches = list(access.batches(tp, batch_size))
    with torch.inference_mode():  # warm up kernels on one prompt: a full batch would set the peak RSS
        for _ in range(2):
            model(batches[0].tokens[:1])
    with _PeakRSS() as rss:
        start = time.perf_counter()
        if what == "forward":
            with torch.inference_mode():
                for b in batches:
                    model(b.tokens)
        elif what == "attribution":
            ih.score_heads(model, tp, methods=("attribution",), options=ih.RunOptions(batch_size=batch_size))
        elif what == "attribution_rescore4":
            ih.score_heads(model, tp, methods=("attribution",), rescore=4, options=ih.RunOptions(batch_size=batch_size))
        elif what == "ablation":
            ih.score_heads(model, tp, methods=("ablation",), options=ih.RunOptions(batch_size=batch_size))
        seconds = time.perf_counter() - start
    return {"what": what, "seconds": seconds, "peak_mb": rss.mb, "n": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="organism", choices=["organism", "gpt2-small-shaped"])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--exact-n", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, n = args.child
        print(json.dumps(_measure(args.model, what, int(n), args.batch_size, args.threads, args.tmp)))
        return
    tmp = args.tmp or tempfile.mkdtemp()
    rows = []
    for what in PLAN:
        n = args.exact_n if what == "ablation" else args.n
        cmd = [sys.executable, __file__, "--model", args.model, "--child", what, str(n), "--batch-size",
               str(args.batch_size), "--threads", str(args.threads), "--tmp", tmp]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        row = json.loads(out)
        row["seconds_per_n"] = row["seconds"] * args.n / row["n"]
        rows.append(row)
    base = next(r for r in rows if r["what"] == "forward")
    exact = next(r for r in rows if r["what"] == "ablation")
    print(f"model `{args.model}`, {args.n} prompts (4-shot organism task), batch {args.batch_size}, "
          f"{args.threads} thread(s); exact score timed on {args.exact_n} prompts and scaled")  # fmt: skip
    print()
    print("| pass | seconds | peak MB | time / forward | memory / forward | exact time / this |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        t, mem = r["seconds_per_n"], r["peak_mb"]
        mem_ratio = f"{mem / base['peak_mb']:.2f}" if base["peak_mb"] > 0.5 else "n/a"
        print(f"| {r['what']} | {t:.2f} | {mem:.1f} | {t / base['seconds_per_n']:.2f} | {mem_ratio} "
              f"| {exact['seconds_per_n'] / t:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
