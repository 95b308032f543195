"""Benchmark "compute only what changes": an intervention at layer 16 and above on a 32-layer model.

Run::

    python benchmarks/bench_resume.py [--layers 32] [--d-model 512] [--n 64] [--threads 1]

A random Llama-shaped model (``--layers`` layers, built offline) runs a clean pass over
the prompts, which keeps the residual stream entering every block. Then head ablations
whose first head sits at layer ``layers / 2`` or later run twice: resumed at their first
layer from the kept residuals (the library's default), and in full (keeping switched
off). Every timing is the median of ``--repeats`` runs in this one process; the ratios
to the clean forward pass are what to read, next to the ratio of layer×token
evaluations counted by the cost ledger.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def _model(layers: int, d_model: int, tmp: Path):
    import torch
    import transformers

    import icl_heads as ih
    from icl_heads.testing import bpe_tokenizer

    tok = bpe_tokenizer()
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=d_model, intermediate_size=4 * d_model, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).eval().save_pretrained(tmp / "model")
    tok.save_pretrained(tmp / "model")
    return ih.load_model(tmp / "model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import icl_heads as ih
    import icl_heads._resume as resume
    from icl_heads.engine import count_cost
    from icl_heads.testing import toy_task

    model = _model(args.layers, args.d_model, Path(tempfile.mkdtemp()))
    task = toy_task()
    half = args.layers // 2
    at = [half, half + 4, half + 8, args.layers - 1]
    labels = (
        "clean forward (keeps residuals)",
        f"ablate 4 heads at layers {at}: resumed at {half}",
        f"ablate 4 heads at layers {at}: in full",
    )
    seconds: dict[str, list[float]] = {k: [] for k in labels}
    layer_tokens: dict[str, int] = {}

    def run(label: str, prompts, hooks) -> None:
        with count_cost() as ledger:
            start = time.perf_counter()
            ih.icl_accuracy(model, prompts, hooks=hooks, options=ih.RunOptions(batch_size=args.batch_size))
            seconds[label].append(time.perf_counter() - start)
        layer_tokens[label] = ledger.total.layer_tokens

    options = ih.RunOptions(batch_size=args.batch_size)
    ih.icl_accuracy(model, task.prompts(4, 4, seed=99), options=options)  # warm-up and the probe
    keep = resume.CACHE_BYTES
    for r in range(args.repeats):
        prompts = task.prompts(args.n, 4, seed=r)  # new prompts each repeat: nothing memoised
        run(labels[0], prompts, ())
        run(labels[1], prompts, ih.interventions.ablation(model, [(la, r % 8) for la in at]))
        resume._CACHE.clear()
        resume.CACHE_BYTES = 0
        try:
            run(labels[2], prompts, ih.interventions.ablation(model, [(la, (r + 4) % 8) for la in at]))
        finally:
            resume.CACHE_BYTES = keep
    rows = [(k, statistics.median(v), layer_tokens[k]) for k, v in seconds.items()]
    base_s, base_lt = rows[0][1], rows[0][2]
    print(
        f"model: random Llama shape, {args.layers} layers x 8 heads, d_model {args.d_model}; {args.n} prompts "
        f"(4-shot), batch {args.batch_size}, {args.threads} thread(s), median of {args.repeats}"
    )
    print(f"resumes exactly: {resume.support(ih.access.ModelAccess(model))}")
    print()
    print("| pass | seconds | time / forward | layer×token evaluations / forward |")
    print("|---|---:|---:|---:|")
    for label, s, lt in rows:
        print(f"| {label} | {s:.2f} | {s / base_s:.2f} | {lt / base_lt:.2f} |")


if __name__ == "__main__":
    main()
