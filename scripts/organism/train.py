"""Train the icl_heads model organism from scratch.

Usage::

    python scripts/organism/train.py --out DIR [--steps N] [--seed S] [--layout separator|slot]

The organism is a small Llama-style causal language model (RMSNorm, rotary
positions, gated MLP, grouped-query attention) with a word-level tokenizer. It is
trained on two kinds of sequences, mixed in every batch:

* **ICL episodes**: demonstrations ``(sentence, label)`` rendered by a template,
  where each class is a latent topic (:mod:`icl_heads.organism.vocab`) and the label
  words are drawn at random from a pool for every episode, so the label can only be
  read from the demonstrations. The loss falls on every label token whose class
  already appeared earlier in the episode. Episodes vary in the number of
  demonstrations (0-9 before the last), in balance (balanced, i.i.d. or in blocks),
  in the number of classes (2 or 3), in sentence length and noise, and in template.
  ``--layout`` picks the templates: ``separator`` (the default, ``{text} : {label}\n``
  and kin, the bundled ``organism``) or ``slot`` (``{text} {label}\n`` and kin, no
  separator before the label: the ``organism-slot`` model).
* **Repeated random sequences** ``<bos> s s`` with the loss on the second copy. They
  give a dense induction signal, which lets a small model leave the plateau where it
  only learns "answer with one of the labels in context".

Everything is seeded (``--seed``) and runs on the CPU. The script writes the
Hugging Face checkpoint (``config.json``, ``model.safetensors``, ``tokenizer.json``),
``metrics.json`` (the learning curve and final evaluation) and
``training_curve.html`` (a plotly figure) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from icl_heads.organism.vocab import (
    LABEL_WORDS,
    LAYOUTS,
    N_CTX,
    SPECIAL_TOKENS,
    TOPICS,
    build_tokenizer,
    sample_sentence,
    vocabulary,
)

logger = logging.getLogger(__name__)

_SPLIT = re.compile(r"\n|[^\s]+")


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of the organism and its training run."""

    steps: int = 8000
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 200
    weight_decay: float = 0.01
    induction_mix: float = 0.5
    induction_mix_final: float = 0.25
    recall_mix: float = 0.0
    head_sparsity: float = 0.0
    d_model: int = 96
    n_layers: int = 3
    n_heads: int = 8
    n_kv_heads: int = 4
    d_mlp: int = 256
    n_ctx: int = N_CTX
    seed: int = 0
    eval_every: int = 250
    threads: int = 1
    layout: str = "separator"


class EpisodeSampler:
    """Builds token-id training sequences without calling the tokenizer (fast)."""

    def __init__(self, seed: int, layout: str = "separator"):
        self.templates = LAYOUTS[layout]
        self.rng = np.random.default_rng(seed)
        self.words = vocabulary()
        self.ids = {w: i for i, w in enumerate(self.words)}
        self.bos = self.ids["<bos>"]
        self.ordinary = np.array([i for w, i in self.ids.items() if w not in SPECIAL_TOKENS])
        self.topics = list(TOPICS)

    def encode(self, text: str) -> list[int]:
        return [self.ids[w] for w in _SPLIT.findall(text)]

    def render(self, template: str, text: str, label: str) -> tuple[list[int], int]:
        """Token ids of one demonstration and the index of its label token."""
        before, after = template.split("{label}")
        head = self.encode(before.format(text=text))
        return [*head, self.ids[label], *self.encode(after)], len(head)

    def icl(self) -> tuple[list[int], list[int]]:
        rng = self.rng
        n_classes = 2 if rng.random() < 0.75 else 3
        classes = rng.choice(len(self.topics), n_classes, replace=False)
        labels = rng.choice(LABEL_WORDS, n_classes, replace=False)
        n_items = int(rng.integers(1, 11))
        mode = rng.random()
        if mode < 0.45:
            ys = np.resize(rng.permutation(n_classes), n_items)
            rng.shuffle(ys)
        elif mode < 0.85:
            ys = rng.integers(0, n_classes, n_items)
        else:
            ys = np.sort(rng.integers(0, n_classes, n_items))
            if rng.random() < 0.5:
                ys = ys[::-1]
        templates = self.templates
        template = templates[0] if rng.random() < 0.5 else templates[rng.integers(len(templates))]
        max_words = int(rng.choice([1, 3, 6]))
        noise = float(rng.choice([0.0, 0.1, 0.2]))
        ids, targets, seen = [self.bos], [], set()
        for y in ys:
            text = sample_sentence(rng, self.topics[classes[y]], max_words=max_words, noise_rate=noise)
            piece, at = self.render(template, text, str(labels[y]))
            if y in seen:
                targets.append(len(ids) + at)
            seen.add(int(y))
            ids.extend(piece)
        return ids, targets

    def recall(self) -> tuple[list[int], list[int]]:
        """Associative recall in ICL layout: keys are exact random phrases, repeated verbatim."""
        rng = self.rng
        n_keys = int(rng.integers(2, 5))
        keys = [
            " ".join(self.words[i] for i in rng.choice(self.ordinary, int(rng.integers(1, 4)))) for _ in range(n_keys)
        ]
        values = rng.choice(LABEL_WORDS, n_keys, replace=False)
        template = self.templates[rng.integers(len(self.templates))]
        ids, targets, seen = [self.bos], [], set()
        for k in rng.integers(0, n_keys, int(rng.integers(3, 11))):
            piece, at = self.render(template, keys[k], str(values[k]))
            if k in seen:
                targets.append(len(ids) + at)
            seen.add(int(k))
            ids.extend(piece)
        return ids, targets

    def induction(self) -> tuple[list[int], list[int]]:
        n = int(self.rng.integers(5, 26))
        s = self.rng.choice(self.ordinary, n).tolist()
        ids = [self.bos, *s, *s]
        return ids, list(range(n + 2, 2 * n + 1))

    def batch(self, size: int, mix: float, recall_mix: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = []
        for _ in range(size):
            u = self.rng.random()
            seqs.append(self.induction() if u < mix else self.recall() if u < mix + recall_mix else self.icl())
        width = max(len(ids) for ids, _ in seqs)
        tokens = torch.zeros(size, width, dtype=torch.long)
        labels = torch.full((size, width), -100, dtype=torch.long)
        for b, (ids, targets) in enumerate(seqs):
            tokens[b, : len(ids)] = torch.tensor(ids)
            for t in targets:
                labels[b, t] = ids[t]
        return tokens, labels


def eval_episodes(
    seed: int, n: int = 400, shots: int = 4, label_words=("foo", "bar"), template: str = LAYOUTS["separator"][0]
) -> tuple[torch.Tensor, torch.Tensor, list[int], torch.Tensor]:
    """Held-out balanced binary prompts: tokens, final positions, gold ids, label-set ids."""
    sampler = EpisodeSampler(seed)
    rng = sampler.rng
    rows, finals, golds = [], [], []
    for _ in range(n):
        classes = rng.choice(len(sampler.topics), 2, replace=False)
        ys = np.resize(np.arange(2), shots)
        rng.shuffle(ys)
        q = int(rng.integers(2))
        ids = [sampler.bos]
        for y in [*ys, q]:
            text = sample_sentence(rng, sampler.topics[classes[y]], max_words=5)
            piece, at = sampler.render(template, text, label_words[y])
            ids.extend(piece)
        query_end = len(ids) - len(piece) + at
        rows.append(ids[:query_end])
        finals.append(query_end - 1)
        golds.append(sampler.ids[label_words[q]])
    width = max(map(len, rows))
    tokens = torch.zeros(n, width, dtype=torch.long)
    for b, ids in enumerate(rows):
        tokens[b, : len(ids)] = torch.tensor(ids)
    label_ids = torch.tensor([sampler.ids[w] for w in label_words])
    return tokens, torch.tensor(finals), golds, label_ids


@torch.inference_mode()
def evaluate(model, episodes) -> dict[str, float]:
    """Label-set and strict accuracy of a Hugging Face causal LM on ``eval_episodes``."""
    tokens, finals, golds, label_ids = episodes
    logits = model(tokens).logits[torch.arange(len(finals)), finals]
    gold = torch.tensor(golds)
    strict = (logits.argmax(-1) == gold).float().mean().item()
    in_set = label_ids[logits[:, label_ids].argmax(-1)]
    return {"accuracy": (in_set == gold).float().mean().item(), "strict_accuracy": strict}


def build_model(cfg: TrainConfig):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(vocabulary()),
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=cfg.n_ctx,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=vocabulary().index("<bos>"),
        eos_token_id=vocabulary().index("<eos>"),
        pad_token_id=vocabulary().index("<pad>"),
    )
    return LlamaForCausalLM(config)


def head_group_norm(model, cfg: TrainConfig) -> torch.Tensor:
    """Sum over heads of the Frobenius norm of each head's output weights (a group-lasso penalty).

    It pushes the model to write through few heads, so that in-context learning is
    carried by a handful of heads, as in large models, rather than spread over many.
    """
    d_head = cfg.d_model // cfg.n_heads
    total = torch.zeros(())
    for layer in model.model.layers:
        w = layer.self_attn.o_proj.weight.view(cfg.d_model, cfg.n_heads, d_head)
        total = total + w.pow(2).sum((0, 2)).add(1e-8).sqrt().sum()
    return total


def train(cfg: TrainConfig, out: Path) -> dict:
    """Train the organism with ``cfg`` and write the checkpoint and metrics to ``out``."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    model = build_model(cfg)
    sampler = EpisodeSampler(cfg.seed, cfg.layout)
    episodes = eval_episodes(seed=10_000 + cfg.seed, template=LAYOUTS[cfg.layout][0])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / cfg.warmup) * 0.5 * (1 + np.cos(np.pi * min(1.0, s / cfg.steps))),
    )
    curve, start = [], time.time()
    for step in range(1, cfg.steps + 1):
        model.train()
        frac = step / cfg.steps
        mix = cfg.induction_mix if frac < 0.4 else cfg.induction_mix_final
        tokens, labels = sampler.batch(cfg.batch_size, mix, cfg.recall_mix)
        loss = model(tokens, labels=labels).loss
        if cfg.head_sparsity > 0:
            loss = loss + cfg.head_sparsity * head_group_norm(model, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            model.eval()
            point = {"step": step, "loss": float(loss), "seconds": time.time() - start, **evaluate(model, episodes)}
            curve.append(point)
            logger.info(
                "step %d loss %.3f acc %.3f strict %.3f",
                step,
                point["loss"],
                point["accuracy"],
                point["strict_accuracy"],
            )
            print(json.dumps(point), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    build_tokenizer().save_pretrained(out)
    metrics = {"config": asdict(cfg), "curve": curve, "final": curve[-1], "train_seconds": time.time() - start}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _write_curve(curve, out / "training_curve.html")
    return metrics


def _write_curve(curve: list[dict], path: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    steps = [p["step"] for p in curve]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=steps, y=[p["loss"] for p in curve], name="training loss"), secondary_y=False)
    fig.add_trace(
        go.Scatter(x=steps, y=[p["accuracy"] for p in curve], name="4-shot accuracy (label set)"), secondary_y=True
    )
    fig.add_trace(
        go.Scatter(x=steps, y=[p["strict_accuracy"] for p in curve], name="4-shot accuracy (strict)"), secondary_y=True
    )
    fig.update_layout(title="Organism training curve", xaxis_title="step")
    fig.update_yaxes(title_text="loss", secondary_y=False)
    fig.update_yaxes(title_text="accuracy", range=[0, 1], secondary_y=True)
    fig.write_html(path, include_plotlyjs=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the icl_heads model organism from scratch.")
    parser.add_argument("--out", type=Path, required=True, help="folder for the checkpoint and metrics")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--threads", type=int, default=TrainConfig.threads)
    parser.add_argument("--eval-every", type=int, default=TrainConfig.eval_every)
    parser.add_argument(
        "--layout",
        choices=sorted(LAYOUTS),
        default=TrainConfig.layout,
        help="prompt layout: 'separator' ({text} : {label}) or 'slot' ({text} {label}, no separator)",
    )
    parser.add_argument("--recall-mix", type=float, default=TrainConfig.recall_mix)
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} is not empty; choose a new folder so nothing is overwritten")
    logging.basicConfig(level=logging.INFO)
    cfg = TrainConfig(
        steps=args.steps,
        seed=args.seed,
        threads=args.threads,
        eval_every=args.eval_every,
        layout=args.layout,
        recall_mix=args.recall_mix,
    )
    train(cfg, args.out)


if __name__ == "__main__":
    main()
