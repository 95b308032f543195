"""Benchmark component decomposition against a plain forward pass, and the reweighting fit.

Run::

    python benchmarks/bench_decomposition.py [--model organism|gpt2-small-shaped] [--n 256] [--threads 1]
    python benchmarks/bench_decomposition.py --organism-results   # the organism experiment (slow, minutes)

Peak memory: each kind of pass runs in ``--memory-runs`` fresh subprocesses (median
reported); the peak RSS during one pass over all batches (the kernel's mark reset
just before it) above the RSS after loading the model, tokenizing and one pass of the
same kind on a single prompt.
Time: one subprocess runs ``--repeats`` rounds of every kind of pass, interleaved
(a busy machine slows them alike), and keeps each kind's best.
Compared: ``forward`` (the plain forward pass of the same batches), ``decompose``
(one pass with captures at the final position, then the per-component logits) and
``run_with_cache`` (the naive alternative: cache every activation at every position).
The reweighting fit is timed on random component logits of ``1,000 components x 24
examples`` for the full 2,000 epochs (early stopping off). ``--write`` puts the table
into ``benchmarks/README_decomposition.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

README = Path(__file__).with_name("README_decomposition.md")


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak() -> float:
    """Reset the peak-RSS mark (Linux ``clear_refs``) and return the current RSS, in MB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_mb("VmRSS")
    except OSError:  # not Linux: fall back to the (never reset) high-water mark
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_mb() -> float:
    try:
        return _status_mb("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


KINDS = ("forward", "decompose", "run_with_cache")


def _setup(kind: str, n: int, threads: int, tmp: str):
    import torch

    torch.set_num_threads(threads)
    import icl_heads as ih
    from icl_heads.organism import organism_task

    model = _model(kind, Path(tmp))
    access = ih.access.ModelAccess(model)
    tp = access.tokenize(organism_task(seed=5).prompts(n, 4, seed=5))
    tiny = access.tokenize(organism_task(seed=5).prompts(1, 4, seed=6))
    return model, access, tp, tiny


def _pass(what: str, model, access, tp, batch_size: int) -> None:
    import torch

    from icl_heads.components.decompose import decompose
    from icl_heads.engine import RunOptions

    with torch.inference_mode():
        if what == "forward":
            for b in access.batches(tp, batch_size):
                access.run(b)
        elif what == "decompose":
            decompose(access, tp, options=RunOptions(batch_size=batch_size))
        else:
            for b in access.batches(tp, batch_size):
                kw = {"attention_mask": b.attention_mask} if b.has_padding else {}
                _, cache = model.run_with_cache(b.tokens, **kw)
                del cache


def _memory(kind: str, what: str, n: int, batch_size: int, threads: int, tmp: str) -> dict:
    """Runs in a subprocess: peak memory of one kind of pass over ``n`` prompts."""
    model, access, tp, tiny = _setup(kind, n, threads, tmp)
    _pass(what, model, access, tiny, batch_size)  # one-off costs (lazy imports, kernel set-up) on one prompt
    before = _reset_peak()
    _pass(what, model, access, tp, batch_size)
    return {"what": what, "peak_mb": max(_peak_mb() - before, 0.0)}


def _times(kind: str, n: int, batch_size: int, threads: int, repeats: int, tmp: str) -> dict:
    """Runs in a subprocess: best time of each kind of pass, the kinds interleaved round by round
    (so that a busy machine slows them alike)."""
    model, access, tp, tiny = _setup(kind, n, threads, tmp)
    out: dict[str, float] = {}
    for what in KINDS:
        _pass(what, model, access, tiny, batch_size)
    for _ in range(repeats):
        for what in KINDS:
            start = time.perf_counter()
            _pass(what, model, access, tp, batch_size)
            out[what] = min(out.get(what, float("inf")), time.perf_counter() - start)
    return out


def _fit_time(repeats: int, threads: int) -> dict:
    """Runs in a subprocess: best time of the reweighting fit on random 1,000 x 24 component logits."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from icl_heads.components.estimators import ComponentReweighting

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(24, 1000, 2)), rng.integers(0, 2, 24)
    times, epochs = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        rw = ComponentReweighting(n_iter_no_change=2000, random_state=0).fit(X, y)
        times.append(time.perf_counter() - start)
        epochs = rw.n_epochs_
    return {"seconds": min(times), "epochs": epochs}


def _child(args: argparse.Namespace, what: str) -> dict:
    cmd = [sys.executable, __file__, "--model", args.model, "--child", what, "--n", str(args.n), "--batch-size",
           str(args.batch_size), "--threads", str(args.threads), "--repeats", str(args.repeats), "--tmp", args.tmp]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def _replace_section(name: str, body: str) -> None:
    text = README.read_text() if README.exists() else "# Component decomposition: measured numbers\n"
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    README.write_text(text)


def bench(args: argparse.Namespace) -> str:
    # the median over fresh processes: a few MB of allocator noise matter on a small model
    memory = {w: statistics.median(_child(args, w)["peak_mb"] for _ in range(args.memory_runs)) for w in KINDS}
    times = _child(args, "times")
    fit = _child(args, "fit")
    lines = [
        f"model `{args.model}`, {args.n} prompts (4-shot organism task), batch {args.batch_size}, "
        f"{args.threads} thread(s); time: best of {args.repeats} interleaved rounds; memory: median of "
        f"{args.memory_runs} processes; {platform.processor() or platform.machine()}",
        "",
        "| pass | seconds | peak MB | time / forward | memory / forward |",
        "|---|---:|---:|---:|---:|",
    ]
    for w in KINDS:
        lines.append(
            f"| {w} | {times[w]:.3f} | {memory[w]:.1f} | {times[w] / times['forward']:.2f} | "
            f"{memory[w] / max(memory['forward'], 1e-9):.2f} |"
        )
    lines += ["", f"Reweighting fit, 1,000 components x 24 examples, {fit['epochs']} epochs: {fit['seconds']:.3f} s"]
    return "\n".join(lines)


def _cell(template: str) -> str:
    """A template as markdown code that survives a table cell."""
    return "`" + repr(template).replace("|", "\\|") + "`"


def organism_results(seeds: tuple[int, ...], n: int) -> str:
    """The organism experiment on held-out templates with noisier, longer sentences."""
    import torch

    torch.set_num_threads(1)
    import icl_heads as ih
    from icl_heads.components.decompose import decompose
    from icl_heads.components.protocol import compare_reweighting
    from icl_heads.components.stability import component_stability
    from icl_heads.organism import HELDOUT_TEMPLATES, organism_task

    model = ih.load_model("organism")
    task = organism_task(max_words=6, noise_rate=0.2, seed=seeds[0])
    tok = ih.access.ModelAccess(model).tokenizer
    longest = max(  # 24 demonstrations and a query of 6 words each, plus BOS
        1 + len(tok(t.format(text=" ".join(["goal"] * 6), label="foo") * 24 + t.split(" {label}")[0].format(
            text=" ".join(["goal"] * 6)), add_special_tokens=False)["input_ids"])
        for t in HELDOUT_TEMPLATES
    )  # fmt: skip
    lines = [f"Task: `organism_task(max_words=6, noise_rate=0.2, seed={seeds[0]})`, templates "
             f"{', '.join(_cell(t) for t in HELDOUT_TEMPLATES)} (never seen in training). The longest possible "
             f"24-shot prompt has {longest} tokens (context 256).", ""]  # fmt: skip
    lines += [
        "| template | full model | best component | worst component | components > full model |",
        "|---|---:|---|---|---:|",
    ]
    for t in HELDOUT_TEMPLATES:
        dec = decompose(model, task.with_template(t).prompts(n, 4, seed=seeds[0]))
        k = dec.kinds()
        best, worst = k.loc[k.accuracy.idxmax()], k.loc[k.accuracy.idxmin()]
        lines.append(f"| {_cell(t)} | {dec.full_accuracy:.3f} | {best.component} {best.accuracy:.3f} | "
                     f"{worst.component} {worst.accuracy:.3f} | {int(k.good.sum())} of {len(k)} |")  # fmt: skip
    stab = component_stability(model, task, templates=HELDOUT_TEMPLATES, n_demo_sets=5, n=n, seed=seeds[0])
    s = stab.summary()
    lines += ["", f"Stability ({n} queries, 5 demonstration sets x 3 templates, 4 shots):", ""]
    lines += [f"- {key}: {value:.3f}" for key, value in s.items()]
    res = compare_reweighting(model, task, k=24, seeds=seeds, templates=HELDOUT_TEMPLATES, n_test=n)
    lines += ["", f"K = 24 ({len(seeds)} seeds x 3 templates, {n} test queries; mean ± std over runs):", "",
              "| method | accuracy |", "|---|---|"]  # fmt: skip
    lines += [f"| {r.method} | {r.mean:.3f} ± {r.std:.3f} |" for r in res.table().itertuples()]
    for base in ("ICL-24", "ICL-4", "Calib+"):
        m, sd = res.margin("reweighting", base)
        lines.append(f"\nreweighting - {base}: {m:+.3f} ± {sd:.3f}")
    kept = res.df.loc[res.df.method == "reweighting", "kept"]
    lines.append(f"\ncomponents kept by reweighting: {kept.mean():.1f} of {len(res.names)} on average")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="organism", choices=["organism", "gpt2-small-shaped"])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-runs", type=int, default=3, help="fresh processes per memory measurement")
    parser.add_argument("--write", action="store_true", help="write the results into README_decomposition.md")
    parser.add_argument("--organism-results", action="store_true", help="run the organism experiment instead")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1000, 1001, 1002, 1003, 1004])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "fit":
        print(json.dumps(_fit_time(args.repeats, args.threads)))
        return
    if args.child == "times":
        print(json.dumps(_times(args.model, args.n, args.batch_size, args.threads, args.repeats, args.tmp)))
        return
    if args.child:
        print(json.dumps(_memory(args.model, args.child, args.n, args.batch_size, args.threads, args.tmp)))
        return
    args.tmp = args.tmp or tempfile.mkdtemp()
    if args.organism_results:
        text, section = organism_results(tuple(args.seeds), 200 if args.n == 256 else args.n), "organism"
    else:
        text, section = bench(args), f"bench-{args.model}"
    print(text)
    if args.write:
        _replace_section(section, text)


if __name__ == "__main__":
    main()
