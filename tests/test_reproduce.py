"""scripts/reproduce_papers.py: the dry run on a downsized Llama makes every table, beside the published numbers."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("datasets")

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("reproduce_papers", ROOT / "scripts" / "reproduce_papers.py")
R = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = R  # its dataclasses look their module up
spec.loader.exec_module(R)


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    out = tmp_path_factory.mktemp("dry")
    assert R.main(["--dry-run", "--words", "0.1", "--out", str(out), "--threads", "1"]) == 0
    return out


@pytest.mark.slow
def test_the_dry_run_writes_every_table_with_the_published_numbers_of_the_data_file(dry):
    published = R.published()
    model = R.paper_model(R.DEFAULT_MODEL)
    for key in R.TABLES:
        table, runs = pd.read_csv(dry / f"{key}.csv"), pd.read_csv(dry / f"{key}_runs.csv")
        assert {"mean", "sd", "n", "ci_low", "ci_high", "published_mean", "published_sd"} <= set(table.columns)
        assert len(runs) and (table.n > 0).any(), key
        rows = published[(published.table == table.table.iloc[0]) & published.model.isin([model, "*"])]
        merged = table.merge(rows, on=["task", "method"], how="left")
        np.testing.assert_array_equal(merged.published_mean.to_numpy(), merged["mean_y"].to_numpy())
        np.testing.assert_array_equal(merged.published_sd.to_numpy(), merged["sd_y"].to_numpy())
        assert table.published_mean.notna().any(), f"{key}: no published number beside the table"
    for key, pairs in R.PAIRED.items():
        paired = pd.read_csv(dry / f"{key}_paired.csv")
        assert set(paired.difference) == {f"{m} - {b}" for m, b in pairs} and (paired.n > 0).all()
    md = (dry / "tables.md").read_text()
    assert md.count("## ") == len(R.TABLES) and "published_mean" in md
    est = json.loads((dry / "estimate.json").read_text())
    assert est["hours"] > 0 and est["memory_gb"] > est["weights_gb"] > 13  # Llama-2-7B in bfloat16
    assert set(est["dry_run_cost"]) == set(R.TABLES) and all(c["rows"] > 0 for c in est["dry_run_cost"].values())


def test_the_llama_style_tokenizer_has_llamas_layout():
    tok = R.llama_style_tokenizer(["alpha", "beta", "gamma"] * 50)
    ids = tok("alpha beta\ngamma é", add_special_tokens=False).input_ids
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[:2] == ["▁alpha", "▁beta"] and "<0x0A>" in pieces  # word prefix; a newline falls back to bytes
    assert {"<0xC3>", "<0xA9>"} <= set(pieces)  # an unseen character: its UTF-8 bytes
    assert tok.decode(ids) == "alpha beta\ngamma é" and tok.bos_token == "<s>"


def test_parameter_count_of_llama_2_7b_and_of_a_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM

    from icl_heads.testing import tiny_llama_dir

    assert abs(R.parameters(R.KNOWN_CONFIGS[R.DEFAULT_MODEL]) - 6.74e9) < 0.01e9
    path = tiny_llama_dir(tmp_path / "llama")  # grouped-query attention
    assert R.parameters(R.target_config(str(path))) == AutoModelForCausalLM.from_pretrained(path).num_parameters()


def test_estimate_scales_the_ledger_to_the_full_run():
    from icl_heads.engine import Cost

    ledgers = {"reweighting": Cost(passes=10, rows=100, tokens=10_000, layer_tokens=20_000)}
    config = R.KNOWN_CONFIGS[R.DEFAULT_MODEL]
    one = R.estimate(ledgers, R.DRY, R.FULL, config, "bfloat16", 50.0, 8)
    assert one["tokens"]["reweighting"] == round(10_000 * R.FULL.scale("reweighting") / R.DRY.scale("reweighting"))
    half = R.estimate(ledgers, R.DRY, R.FULL, config, "bfloat16", 100.0, 8)
    assert np.isclose(half["hours"], one["hours"] / 2) and half["memory_gb"] == one["memory_gb"]
    assert np.isclose(R.estimate(ledgers, R.DRY, R.FULL, config, "float32", 50.0, 8)["weights_gb"],
                      2 * one["weights_gb"])  # fmt: skip


@pytest.mark.parametrize("page", R.PAGES, ids=lambda p: p.name)
def test_the_pages_estimate_is_rendered_from_the_committed_dry_run(page):
    est = json.loads(R.ESTIMATE.read_text())
    assert R.current_block(page.read_text()) == R.estimate_block(est), (
        f"{page.name}'s estimate is stale: run scripts/reproduce_papers.py --dry-run --update-docs --out DIR"
    )
