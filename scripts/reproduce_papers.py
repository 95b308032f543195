"""Reproduce both papers' main tables on a hub model, beside the published numbers.

Usage::

    python scripts/reproduce_papers.py --out results/papers                    # Llama-2-7B, bfloat16, a GPU
    python scripts/reproduce_papers.py --model mistralai/Mistral-7B-Instruct-v0.1 --out results/mistral
    python scripts/reproduce_papers.py --dry-run --out /tmp/dry               # offline, a downsized model

Tables (``--tables`` picks some): Chang, Thomason & Jia 2024's Table 4 (``reweighting``), Table 1
(``components``) and Table 3 (``transfer``); Yu & Ananiadou 2024's in-context heads (``heads``) and bias
corrections (``bias``), from :mod:`icl_heads.protocols`. The data comes from :func:`icl_heads.load_task`
(the hub, or the local data folder; see ``docs/reproducing.md``).

Before it starts, the command prints an estimate of the run's time and GPU memory: the protocol is run
first on a downsized random model of the same architecture, with the same tokenizer and data, at a small
scale (the ``--dry-run`` settings); its cost ledger (tokens through the model per table) is scaled to the
full settings, and to the model's size (``2 × parameters`` floating-point operations per token plus
attention) at an assumed sustained throughput (``--tflops``). Memory is parameters × dtype bytes plus
the activations of one batch at the model's full context. Both are estimates.

``--dry-run`` runs everything end to end offline: a random ``LlamaForCausalLM`` with tiny dimensions, a
Llama-style tokenizer built here (SentencePiece-like ``▁`` prefix, byte fallback, BOS) and every task
built here in its ``datasets`` layout, read back through :func:`icl_heads.load_task`, so that on a GPU only
the weights (and the data's words) differ. It prints the estimate for the model named by ``--model``.

Each table is written to ``OUT/<table>.csv`` (mean ± sd over the seed × format runs, a 95% t interval,
and the published mean and sd beside them, from ``scripts/paper_numbers.csv``), its runs to
``OUT/<table>_runs.csv``, all tables to ``OUT/tables.md``, and the estimate and cost to ``OUT/estimate.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _marked_block

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "scripts" / "paper_numbers.csv"
#: the committed dry-run estimate the README and docs/reproducing.md quote (``--update-docs`` rewrites both)
ESTIMATE = ROOT / "docs" / "data" / "reproduce_estimate.json"
PAGES = (ROOT / "README.md", ROOT / "docs" / "reproducing.md")
BEGIN, END = "<!-- reproduce-estimate:start -->", "<!-- reproduce-estimate:end -->"
DEFAULT_MODEL = "meta-llama/Llama-2-7b-hf"
#: Chang et al.'s eight tasks (their Tables 1 and 4) and Yu & Ananiadou's tasks among the named ones
CHANG_TASKS = ("sst2", "boolq", "qqp", "wic", "rte", "mnli", "agnews", "arc_easy")
TRANSFER = ("yelp", "mednli", "boolq_contrast")
YU_TASKS = ("sst2", "agnews")
TABLES = ("reweighting", "components", "transfer", "heads", "bias")
#: the paired differences written beside each table (method minus baseline, over the runs both have)
PAIRED = {"reweighting": [("CompRW 24", "Standard 24"), ("CompRW 24", "Calib+ 24"), ("CompRW 24", "Standard 3,4")],
          "components": [("Oracle-T1", "Full")], "transfer": [("Transfer-1", "Full"), ("CompRW transfer 24", "Full")],
          "heads": [("in-context heads ablated", "random heads ablated"), ("in-context heads ablated", "ICL")]}  # fmt: skip
#: the architecture of models the estimate knows offline (the hub's config.json of each)
KNOWN_CONFIGS = {
    DEFAULT_MODEL: {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                    "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
                    "max_position_embeddings": 4096},
}  # fmt: skip
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: rough word counts of each text field in the dry run's data (typical lengths, not measured)
WORDS = {"sentence": 20, "text": 40, "passage": 100, "question": 9, "premise": 20, "hypothesis": 10,
         "sentence1": 20, "sentence2": 10, "question1": 11, "question2": 11, "word": 1}  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """How many runs and prompts each table takes."""

    seeds: int = 5
    formats: int = 3
    n_test: int = 200
    k: int = 24
    yu_seeds: int = 5
    n: int = 200
    tune_n: int = 100
    n_random: int = 20

    def scale(self, table: str) -> float:
        """Prompt passes of ``table`` relative to one run of one prompt (for scaling a ledger)."""
        if table in ("reweighting", "components", "transfer"):
            return self.seeds * self.formats * (self.n_test + self.k)
        if table == "heads":
            return self.yu_seeds * self.n * (self.n_random + 4)
        return self.yu_seeds * (self.n + self.tune_n)


FULL = Settings()
DRY = Settings(seeds=2, formats=2, n_test=6, yu_seeds=2, n=12, tune_n=12, n_random=2)


# ---- the offline stand-ins: a Llama-style tokenizer, a tiny Llama, tasks in the datasets layout ----


def llama_style_tokenizer(words: list[str], vocab_size: int = 2000):
    """A fast tokenizer laid out as Llama's: ``▁`` word prefix, byte fallback for unknown characters
    (a newline is ``<0x0A>``), ``<unk>``, ``<s>``, ``</s>``; trained here on ``words``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", "isolated"), pre_tokenizers.Metaspace("▁", prepend_scheme="first")]
    )
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    special = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size + len(special), special_tokens=special, show_progress=False)
    tok.train_from_iterator([" ".join(words[i : i + 50]) for i in range(0, len(words), 50)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def tiny_model_dir(path: Path, config: dict, tokenizer) -> Path:
    """A random model of ``config``'s architecture with tiny dimensions and ``tokenizer``'s vocabulary."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kv = config.get("num_key_value_heads") or config["num_attention_heads"]
    small = {**config, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 4 if kv == config["num_attention_heads"] else 2, "vocab_size": len(tokenizer),
             "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
             "tie_word_embeddings": False}  # fmt: skip
    cfg = AutoConfig.for_model(**small)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def dry_data(folder: Path, length: float = 1.0, n_per_class: int = 40, seed: int = 0) -> list[str]:
    """Every named task as random sentences in its ``datasets`` layout, saved in ``folder``; returns the words used.

    Each text field has about its typical word count (:data:`WORDS`) times ``length``.
    """
    import datasets

    from icl_heads.named_tasks import NAMED_TASKS

    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(300)]
    words = list(vocab)
    for name, spec in NAMED_TASKS.items():
        rows = [v for v in spec.values for _ in range(n_per_class)]
        cols = {}
        for f in spec.fields:
            if f == "choices":
                cols[f] = [{"text": [" ".join(rng.choice(vocab, 3)) for _ in spec.values], "label": list(spec.classes)}
                           for _ in rows]  # fmt: skip
            else:
                cols[f] = [" ".join(rng.choice(vocab, max(1, round(length * WORDS.get(f, 10))))) for _ in rows]
        cols[spec.label] = rows
        datasets.DatasetDict({spec.split: datasets.Dataset.from_dict(cols)}).save_to_disk(str(folder / name))
        for template in spec.templates:  # the templates' and label words' words, as a corpus would have them
            words += (template.replace("{text}", "").replace("{label}", "").split() + list(spec.label_words)) * 200
    return words + ["foo", "bar"] * 200


# ---- the tables ----


def load_tasks(names, settings: Settings, folder: Path | None, **kw):
    from icl_heads.named_tasks import load_task

    out = {}
    for name in names:
        tasks = [load_task(name, template=i, folder=folder, **kw) for i in range(settings.formats)]
        out[name] = (tasks[0], tuple(t.template for t in tasks))
    return out


def run_tables(model, tables, settings: Settings, folder: Path | None, options):
    """Every asked table as a PaperTable, and the cost ledger of each."""
    import icl_heads.protocols as P
    from icl_heads.engine import count_cost

    seeds, yu_seeds = tuple(range(settings.seeds)), tuple(range(settings.yu_seeds))
    chang = load_tasks([t for t in CHANG_TASKS if {"reweighting", "components"} & set(tables)], settings, folder)
    templates = {t.name: f for t, f in chang.values()}
    results, ledgers = {}, {}
    kw = {"seeds": seeds, "k": settings.k, "n_test": settings.n_test, "options": options}
    for table in tables:
        start = time.perf_counter()
        with count_cost() as ledger:
            if table == "reweighting":
                results[table] = P.chang_reweighting(model, [t for t, _ in chang.values()], templates=templates, **kw)
            elif table == "components":
                results[table] = P.chang_components(model, [t for t, _ in chang.values()], templates=templates, **kw)
            elif table == "transfer":
                from icl_heads.named_tasks import NAMED_TASKS

                src = load_tasks([NAMED_TASKS[t].transfer_from for t in TRANSFER], settings, folder)
                tgt = load_tasks(TRANSFER, settings, folder)
                pairs = [(src[NAMED_TASKS[t].transfer_from][0], tgt[t][0]) for t in TRANSFER]
                results[table] = P.chang_transfer(model, pairs, templates={t.name: f for t, f in src.values()}, **kw)
            else:
                yu = [t for t, _ in load_tasks(YU_TASKS, replace(settings, formats=1), folder).values()]
                if table == "heads":
                    results[table] = P.yu_heads(model, yu, seeds=yu_seeds, n=settings.n, n_random=settings.n_random,
                                                options=options)  # fmt: skip
                else:
                    results[table] = P.yu_bias(model, yu, seeds=yu_seeds, n=settings.n, tune_n=settings.tune_n,
                                               options=options)  # fmt: skip
        ledgers[table] = ledger.total
        logging.getLogger("reproduce").info("%s: %.0f s, %d prompt rows", table, time.perf_counter() - start,
                                            ledger.total.rows)  # fmt: skip
    return results, ledgers


def with_published(result, model_name: str) -> pd.DataFrame:
    """The table with the published mean and sd of ``model_name`` beside it (blank where the paper has none)."""
    pub = published()
    table_name = result.config["table"]
    rows = pub[(pub.paper == result.config["paper"]) & (pub.table == table_name)
               & pub.model.isin([paper_model(model_name), "*"])]  # fmt: skip
    rows = rows.rename(columns={"mean": "published_mean", "sd": "published_sd", "source": "published_source"})
    out = result.table().merge(rows[["task", "method", "published_mean", "published_sd", "published_source"]],
                               on=["task", "method"], how="left")  # fmt: skip
    out.insert(0, "table", table_name)
    return out


def published() -> pd.DataFrame:
    """``scripts/paper_numbers.csv``: the published numbers, each with its table and caption."""
    return pd.read_csv(PUBLISHED, dtype={"mean": float, "sd": float}, keep_default_na=False, na_values=[""])


def paper_model(name: str) -> str:
    """The papers' name of a hub model (``meta-llama/Llama-2-7b-hf`` is ``Llama-2-7B``)."""
    names = {DEFAULT_MODEL: "Llama-2-7B", "meta-llama/Llama-2-13b-hf": "Llama-2-13B",
             "mistralai/Mistral-7B-Instruct-v0.1": "Mistral-7B-Instruct", "meta-llama/Meta-Llama-3-8B": "Llama-3-8B"}  # fmt: skip
    return names.get(name, name)


# ---- the estimate ----


def parameters(config: dict) -> int:
    """Parameters of a Llama-style decoder from its config (embeddings, attention, gated MLP, norms, head)."""
    d, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    heads = config["num_attention_heads"]
    kv = (config.get("num_key_value_heads") or heads) * (d // heads)
    per_layer = d * (2 * d + 2 * kv) + 3 * d * config["intermediate_size"] + 2 * d
    return 2 * vocab * d + layers * per_layer + d


def estimate(ledgers, dry: Settings, full: Settings, config: dict, dtype: str, tflops: float, batch_size: int):
    """Hours and GB of the full run on the model of ``config``, from the dry run's cost ledgers."""
    n_params, d, layers = parameters(config), config["hidden_size"], config["num_hidden_layers"]
    heads, ctx = config["num_attention_heads"], config.get("max_position_embeddings", 4096)
    tokens, flops = {}, 0.0
    for table, cost in ledgers.items():
        factor = full.scale(table) / dry.scale(table)
        tokens[table] = cost.tokens * factor
        length = cost.tokens / max(cost.rows, 1)  # mean padded prompt length
        flops += tokens[table] * (2 * n_params + 4 * layers * d * length)
    per_token = BYTES[dtype] * (layers * d + 2 * heads * ctx + 3 * config["intermediate_size"] + 4 * d)
    memory = n_params * BYTES[dtype] + batch_size * ctx * per_token
    return {"hours": flops / (tflops * 1e12) / 3600, "memory_gb": memory / 1e9, "parameters": n_params,
            "weights_gb": n_params * BYTES[dtype] / 1e9, "tokens": {k: int(v) for k, v in tokens.items()},
            "assumed_tflops": tflops, "batch_size": batch_size, "dtype": dtype, "context": ctx}  # fmt: skip


def estimate_line(est: dict, model: str) -> str:
    return (
        f"ESTIMATE for {model} ({est['parameters'] / 1e9:.1f}B parameters, {est['dtype']}): about "
        f"{est['hours']:.1f} GPU-hours at an assumed {est['assumed_tflops']:g} TFLOP/s sustained, and about "
        f"{est['memory_gb']:.0f} GB of GPU memory ({est['weights_gb']:.1f} GB of weights plus the activations of a "
        f"batch of {est['batch_size']} at {est['context']} tokens). An estimate from the cost ledger of a dry run, "
        "not a measurement."
    )


def estimate_block(est: dict) -> str:
    """The pages' generated lines: the estimate of the full run on one GPU, from a committed dry run."""
    tokens = sum(est["tokens"].values())
    return (
        f"- **{est['model']}** ({est['parameters'] / 1e9:.1f}B parameters, {est['dtype']}), all five tables: about "
        f"**{est['hours']:.1f} GPU-hours** at an assumed {est['assumed_tflops']:g} TFLOP/s sustained (one 80 GB GPU "
        f"at a fraction of its peak) and about **{est['memory_gb']:.0f} GB** of GPU memory ({est['weights_gb']:.1f} "
        f"GB of weights plus the activations of a batch of {est['batch_size']} at {est['context']:,} tokens).\n"
        f"- An estimate, not a measurement: {tokens / 1e6:.0f} million tokens through the model, scaled from the cost "
        "ledger of `python scripts/reproduce_papers.py --dry-run` (texts of typical lengths, tokens per table in "
        "`docs/data/reproduce_estimate.json`)."
    )


def current_block(text: str) -> str:
    """The generated lines between the markers of ``text``."""
    return _marked_block.current(text, BEGIN, END)


def update_docs(est: dict) -> None:
    """Commit the estimate and rewrite the pages' blocks from it."""
    ESTIMATE.write_text(json.dumps(est, indent=2) + "\n")
    for page in PAGES:
        page.write_text(_marked_block.replace(page.read_text(), BEGIN, END, estimate_block(est)))


def target_config(name: str) -> dict:
    if name in KNOWN_CONFIGS:
        return dict(KNOWN_CONFIGS[name])
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name).to_dict()


# ---- the command ----


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown(df: pd.DataFrame) -> str:
    """A Markdown table, numbers to 3 decimals, blanks for missing values."""
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.itertuples(index=False)])


def write(results, model_name: str, out: Path, est: dict, ledgers, title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"# Paper tables on {title}\n", estimate_line(est, model_name) + "\n"]
    for key, result in results.items():
        table = with_published(result, model_name)
        table.to_csv(out / f"{key}.csv", index=False)
        result.df.to_csv(out / f"{key}_runs.csv", index=False)
        parts.append(f"## {result.config['paper']}: {result.config['table']} ({result.config['metric']})\n")
        parts.append(markdown(table.drop(columns=["published_source"])) + "\n")
        paired = [result.paired(m, b).assign(difference=f"{m} - {b}") for m, b in PAIRED.get(key, [])
                  if {m, b} <= set(result.df.dropna(subset=["value"]).method)]  # fmt: skip
        if paired:
            paired = pd.concat(paired)[["difference", "task", "mean", "sd", "n", "ci_low", "ci_high"]]
            paired.to_csv(out / f"{key}_paired.csv", index=False)
            parts.append("Paired differences (95% t interval over the runs both methods have):\n")
            parts.append(markdown(paired) + "\n")
    (out / "tables.md").write_text("\n".join(parts))
    cost = {k: asdict(v) for k, v in ledgers.items()}
    (out / "estimate.json").write_text(
        json.dumps({"model": model_name, "run": title, **est, "dry_run_cost": cost}, indent=2)
    )


class LoadError(SystemExit):
    """The model named by --model cannot be read: one line saying why and what to do."""


def _loading(name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, with a failure to read ``--model`` turned into a one-line exit."""
    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LoadError(
            f"reproduce_papers: cannot read --model {name} ({first}); pass a local Hugging Face folder with "
            "--model PATH (gated models such as meta-llama/* need `huggingface-cli login` and accepted terms), "
            "or run --dry-run to check the pipeline offline"
        ) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="hub name or local folder (default %(default)s)")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(BYTES), help="weights' dtype (default %(default)s)")
    p.add_argument("--device", default=None, help="e.g. cuda (default: cuda when there is one)")
    p.add_argument("--device-map", default=None, help="'auto' splits the model over GPUs (default: when it does "
                   "not fit one GPU by the memory estimate)")  # fmt: skip
    p.add_argument(
        "--tables",
        nargs="+",
        default=list(TABLES),
        choices=TABLES,
        help="the tables to run (default: all); see docs/reproducing.md for the data sets each needs",
    )
    p.add_argument("--data", default=None, help="the local data folder (default $ICL_HEADS_DATA or the cache)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (default %(default)s)")
    p.add_argument("--tflops", type=float, default=50.0, help="assumed sustained TFLOP/s for the estimate")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="offline, a downsized random model and data built here (a few minutes on a CPU)",
    )
    p.add_argument("--words", type=float, default=1.0, help="dry run: scale of its texts' typical lengths")
    p.add_argument("--update-docs", action="store_true", help="dry run: write its estimate into the README and docs")
    p.add_argument("--out", required=True, type=Path, help="folder for the tables, tables.md and estimate.json")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("reproduce")
    if args.threads:
        torch.set_num_threads(args.threads)
    import icl_heads as ih

    options = ih.RunOptions(batch_size=args.batch_size)
    config = _loading(args.model, target_config, args.model)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.dry_run:
            folder = Path(tmp) / "data"
            tok = llama_style_tokenizer(dry_data(folder, args.words))
        else:
            from transformers import AutoTokenizer

            folder = Path(args.data) if args.data else None
            tok = _loading(args.model, AutoTokenizer.from_pretrained, args.model)
        log.info(
            "estimating: the protocol on a downsized random %s model first, at a small scale", config["model_type"]
        )
        tiny = ih.load_model(tiny_model_dir(Path(tmp) / "tiny", config, tok))
        dry_results, ledgers = run_tables(tiny, args.tables, DRY, folder, options)
        est = estimate(ledgers, DRY, FULL, config, args.dtype, args.tflops, args.batch_size)
        log.info(estimate_line(est, args.model))
        if args.dry_run:
            title = f"a random tiny {config['model_type']} model, data built here (dry run for {args.model})"
            write(dry_results, args.model, args.out, est, ledgers, title)
            if args.update_docs:
                update_docs({"model": args.model, **est, "dry_run_words": args.words})
            log.info("dry run done in %.0f s; tables in %s", time.perf_counter() - start, args.out)
            return 0
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device_map = args.device_map
    if device_map is None and device == "cuda" and torch.cuda.device_count() > 1:
        fits = est["memory_gb"] * 1e9 < torch.cuda.get_device_properties(0).total_memory
        device_map = None if fits else "auto"
    model = _loading(
        args.model,
        ih.load_model,
        args.model,
        dtype=args.dtype,
        device=None if device_map else device,
        device_map=device_map,
    )
    results, _ = run_tables(model, args.tables, FULL, folder, ih.RunOptions(batch_size=args.batch_size, progress=True))
    write(results, args.model, args.out, est, ledgers, args.model)
    log.info("done in %.1f h; tables in %s", (time.perf_counter() - start) / 3600, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
