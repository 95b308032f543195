"""Benchmark head scoring against a plain forward pass, a full ``run_with_cache`` and a per-head ablation sweep.

Run::

    python benchmarks/bench_find_heads.py [--model organism|gpt2-small-shaped] [--n 256] [--threads 1]

Each measurement runs in a fresh subprocess; its peak memory is the largest resident
set size, sampled every 2 ms, above the process's state after loading the model,
tokenizing and one single-prompt warm-up pass. Times are
wall-clock seconds of one run; the ratios are what to read (machines are noisy).
The per-head ablation sweep is timed on ``--sweep-n`` prompts and scaled linearly to
``--n`` prompts (its cost is linear in prompts: one forward pass per head).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class _PeakRSS:
    """Sample the resident set size every few milliseconds: the peak above the starting point.

    The kernel's high-water mark (``ru_maxrss``) is already set by loading the model,
    whose temporary copies are freed before the measurement starts, so it cannot see a
    pass that needs less than loading did.
    """

    def __enter__(self) -> _PeakRSS:
        self.start = self.peak = _current_rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _current_rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _current_rss_mb())

    @property
    def mb(self) -> float:
        return max(self.peak - self.start, 0.0)


def _model(kind: str, tmp: Path):
    import icl_heads as ih

    if kind == "organism":
        return ih.load_model("organism")
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from icl_heads.testing import bpe_tokenizer

    path = tmp / "gpt2-small-shaped"
    if not path.exists():
        torch.manual_seed(0)
        tok = bpe_tokenizer()
        cfg = GPT2Config(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
        GPT2LMHeadModel(cfg).save_pretrained(path)
        tok.save_pretrained(path)
    return ih.load_model(path)


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
        with torch.inference_mode():
            if what == "forward":
                for b in batches:
                    model(b.tokens)
            elif what == "run_with_cache":
                for b in batches:
                    _, cache = model.run_with_cache(b.tokens)
                    del cache
            elif what in ("dla", "logprob_increase"):
                ih.score_heads(model, tp, methods=(what,), options=ih.RunOptions(batch_size=batch_size))
            elif what == "ablation_sweep":
                for layer in range(access.n_layers):
                    for head in range(access.n_heads):
                        ih.accuracy.predict(
                            access,
                            tp,
                            hooks=ih.interventions.HeadAblation(((layer, head),)),
                            options=ih.RunOptions(batch_size=batch_size),
                        )
            elif what == "ablation_batched":
                ih.score_heads(model, tp, methods=("ablation",), options=ih.RunOptions(batch_size=batch_size))
        seconds = time.perf_counter() - start
    return {"what": what, "seconds": seconds, "peak_mb": rss.mb, "n": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="organism", choices=["organism", "gpt2-small-shaped"])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--sweep-n", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
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
    plan = [("forward", args.n), ("run_with_cache", args.n), ("dla", args.n), ("logprob_increase", args.n)]
    plan += [("ablation_sweep", args.sweep_n), ("ablation_batched", args.sweep_n)]
    for what, n in plan:
        cmd = [sys.executable, __file__, "--model", args.model, "--child", what, str(n), "--batch-size",
               str(args.batch_size), "--threads", str(args.threads), "--tmp", tmp]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        row = json.loads(out)
        row["seconds_per_n"] = row["seconds"] * args.n / row["n"]
        rows.append(row)
    base = next(r for r in rows if r["what"] == "forward")
    cache = next(r for r in rows if r["what"] == "run_with_cache")
    sweep = next(r for r in rows if r["what"] == "ablation_sweep")

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b > 0.5 else "n/a"  # below 0.5 MB the sampled RSS is noise

    print(f"model `{args.model}`, {args.n} prompts (4-shot organism task), batch {args.batch_size}, "
          f"{args.threads} thread(s); sweep timed on {args.sweep_n} prompts and scaled")  # fmt: skip
    print()
    print("| pass | seconds | peak MB | time / forward | memory / forward | run_with_cache memory / this | "
          "sweep time / this |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        t, mem = r["seconds_per_n"], r["peak_mb"]
        print(
            f"| {r['what']} | {t:.2f} | {mem:.1f} | {t / base['seconds_per_n']:.2f} | {ratio(mem, base['peak_mb'])} "
            f"| {ratio(cache['peak_mb'], mem) if mem > 0.5 else 'n/a'} | {sweep['seconds_per_n'] / t:.1f} |"
        )


if __name__ == "__main__":
    main()
