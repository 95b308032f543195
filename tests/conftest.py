"""Shared fixtures: tiny random models built offline, one per supported kind."""

from __future__ import annotations

import os

import pytest
import torch

from icl_heads.models import load_model, transformer_lens_major
from icl_heads.testing import tiny_gpt2_dir, tiny_llama_dir, toy_task

TL_MAJOR = transformer_lens_major()
# One torch thread per process, here and in the processes the tests start (notebook kernels, the CLI):
# tiny models gain nothing from more, and `pytest -n` runs one worker per core. Several threads per
# process on a busy machine spin against each other (benchmarks/README.md, "Torch threads").
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tl4" in item.keywords and TL_MAJOR < 4:
            item.add_marker(pytest.mark.skip(reason="needs TransformerLens 4.x; CI runs it in the 4.x environment"))
        if "tl3" in item.keywords and TL_MAJOR >= 4:
            item.add_marker(pytest.mark.skip(reason="needs TransformerLens 3.x; CI runs it in the 3.x environment"))
    # the longest files first (the notebooks, then the browser check), so that `pytest -n` workers finish together
    rank: dict = {}
    for item in items:
        first = 0 if "notebook" in item.keywords else 1 if "browser" in item.keywords else 2
        rank[item.path] = min(first, rank.get(item.path, 2))
    items.sort(key=lambda item: rank[item.path])


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"gpt2": tiny_gpt2_dir(root / "gpt2"), "llama": tiny_llama_dir(root / "llama")}


def _native(root):
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    from icl_heads.organism.vocab import build_tokenizer

    # TransformerLens re-loads tokenizers by name_or_path, so give it one saved to disk
    build_tokenizer().save_pretrained(root / "native_tokenizer")
    tok = AutoTokenizer.from_pretrained(root / "native_tokenizer")
    cfg = TransformerBridgeConfig(
        d_model=32, d_head=8, n_layers=2, n_ctx=128, n_heads=4, d_vocab=len(tok), d_mlp=64, act_fn="silu",
        normalization_type="RMS", positional_embedding_type="rotary", n_key_value_heads=2, gated_mlp=True, seed=0,
    )  # fmt: skip
    return TransformerBridge.boot_native(cfg, tokenizer=tok)


MODEL_KINDS = ["gpt2", "llama"] + (["native"] if TL_MAJOR >= 4 else [])


@pytest.fixture(scope="session")
def models(model_dirs, tmp_path_factory):
    torch.manual_seed(0)
    out = {name: load_model(path) for name, path in model_dirs.items()}
    if TL_MAJOR >= 4:
        out["native"] = _native(tmp_path_factory.mktemp("native"))
    return out


@pytest.fixture(params=MODEL_KINDS)
def any_model(request, models):
    return models[request.param]


@pytest.fixture(scope="session")
def task():
    return toy_task()


@pytest.fixture(scope="session")
def organism():
    return load_model("organism")


@pytest.fixture
def fresh():
    """Compute every result afresh in this test: runs compared for invariance must not read each other back."""
    from icl_heads.engine import no_reuse

    with no_reuse():
        yield
