"""Validation models: GPT-2-style checkpoints with hand-set weights whose in-context mechanism is known.

Loaded like any model (``load_model("validation:sparse")``); :func:`ground_truth` gives the planted mechanism,
:mod:`icl_heads.recovery` scores every analysis against it, and ``docs/validation.md`` explains the construction.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from icl_heads.organism.vocab import TOPICS
from icl_heads.prompts import ICLTask

__all__ = ["FEATURES", "MODELS", "GroundTruth", "ground_truth", "validation_dir", "validation_task"]

D_MODEL, N_HEADS, N_POS = 128, 32, 256
D_HEAD = D_MODEL // N_HEADS
#: Named directions of the residual stream (each mean zero, orthonormal).
FEATURES = (
    "const", "pad", "word", "label", "newline", "cls_k", "cls_q", "cls_qc", "pol", "pos", "pos_c",
    "m_k", "m_q", "m_qc", "m_pol", "answer", "relay",
)  # fmt: skip
WORDS = (TOPICS["sport"], TOPICS["food"])
#: Word strength of a *weak* word (the first WEAK words of each class in the bias models).
WEAK, WEAK_STRENGTH = 4, 0.015
MATCH, BONUS, RECENCY, TOKEN_NORM, KAPPA = 20.0, 60.0, 0.1, 2.0, 7.0
_MOVER = (
    ((None, "word", 20.0), (None, "pos", 3.0 * N_POS)),
    tuple((f"cls_{f}", f"m_{f}", 0.5) for f in ("k", "q", "qc")),
)
_LABEL_MOVER = (((None, "label", 20.0), (None, "pos", 3.0 * N_POS)), (("pol", "m_pol", 0.5),))


def _icl(read: str = "label", out: str = "answer", recency: float = 0.0) -> tuple:
    qk = [("m_q", "m_k", MATCH), (None, "label" if read == "label" else "newline", BONUS)]
    if recency:
        qk.append((None, "pos", recency * N_POS))
    return tuple(qk), (("pol" if read == "label" else "m_pol", out, 1.0),)


@dataclass(frozen=True)
class GroundTruth:
    """What a validation model does, by construction.

    Attributes:
        name: the model (``load_model(f"validation:{name}")``).
        heads: the planted in-context heads: each necessary, or (``redundant``) each sufficient.
        read_at: where the planted heads read: ``"label"`` or ``"after_label"``.
        n_layers: layers of the model (32 heads each).
        supporting: heads the mechanism also uses but that no single ablation removes
            (the redundant movers) or, for ``deep``, the later head its effect passes through.
        majority_bias: the true value of :func:`~icl_heads.bias.majority_bias`'s ``bias``
            (default skews and shots), or ``None`` when the model has none by construction.
        recency_bias: the true ``block_gap`` of :func:`~icl_heads.bias.recency_bias`, or ``None``.
        corrections: bias -> the correction method that inverts the planted mechanism.
        needed: the fewest heads whose ablation brings accuracy to chance (all of them
            are planted heads): 2 for ``redundant``, else 1.
        weak_words: the words whose class feature the query side barely sees.
        description: one line on the mechanism.
    """

    name: str
    heads: tuple[tuple[int, int], ...]
    read_at: str
    n_layers: int
    supporting: tuple[tuple[int, int], ...]
    majority_bias: float | None = None
    recency_bias: float | None = None
    corrections: dict[str, str] = field(default_factory=dict)
    needed: int = 1
    weak_words: tuple[str, ...] = ()
    description: str = ""


_WEAK = tuple(w for ws in WORDS for w in ws[:WEAK])
_P_WEAK = WEAK / len(WORDS[0])
_MOVERS = ((0, 0), (0, 1))
#: name -> (ground truth, {(layer, head): (qk pairs, ov pairs)}).
MODELS: dict[str, tuple[GroundTruth, dict]] = {
    "sparse": (
        GroundTruth("sparse", ((1, 17),), "label", 2, _MOVERS,
                    description="one in-context head among 64 reads each label and copies the matching one"),
        {(1, 17): _icl()},
    ),
    "redundant": (
        GroundTruth("redundant", ((1, 5), (1, 22)), "label", 2, _MOVERS, needed=2,
                    description="two identical in-context heads, each sufficient alone"),
        {(1, 5): _icl(), (1, 22): _icl()},
    ),
    "after_label": (
        GroundTruth("after_label", ((1, 9),), "after_label", 2, (*_MOVERS, (0, 2), (0, 3)),
                    description="the in-context head reads the newline after each label, where label movers put it"),
        {(1, 9): _icl("after_label"), (0, 2): _LABEL_MOVER, (0, 3): _LABEL_MOVER},
    ),
    "deep": (
        GroundTruth("deep", ((1, 12), (2, 3)), "label", 3, _MOVERS,
                    description="the in-context head L1H12 writes no logit: its label steers the query of L2H3"),
        {(1, 12): _icl(out="relay"), (2, 3): (((("relay", "pol", MATCH), (None, "label", BONUS))), (("pol", "answer", 1.0),))},
    ),
    "majority": (
        GroundTruth("majority", ((1, 17),), "label", 2, _MOVERS, majority_bias=_P_WEAK / 2,
                    corrections={"majority": "count"}, weak_words=_WEAK,
                    description="weak query words leave the head's attention to label counts: a majority bias"),
        {(1, 17): _icl()},
    ),
    "recency": (
        GroundTruth("recency", ((1, 17),), "label", 2, _MOVERS, recency_bias=_P_WEAK,
                    corrections={"recency": "prior"}, weak_words=_WEAK,
                    description="a linear positional prior on the head's attention decides weak queries: recency"),
        {(1, 17): _icl(recency=RECENCY)},
    ),
}  # fmt: skip


def _check_name(name: str) -> str:
    name = name.removeprefix("validation:")
    if name not in MODELS:
        raise ValueError(f"unknown validation model {name!r}; choose from {sorted(MODELS)} (as 'validation:NAME')")
    return name


def ground_truth(name: str) -> GroundTruth:
    """The planted mechanism of validation model ``name`` (e.g. ``"sparse"``).

    Raises:
        ValueError: an unknown name (lists the valid ones).
    """
    return MODELS[_check_name(name)][0]


def validation_task(name: str = "sparse", *, label_words: tuple[str, str] = ("foo", "bar")) -> ICLTask:
    """The task a validation model was built for: one-word sport or food texts.

    Raises:
        ValueError: an unknown model name.

    >>> validation_task("sparse").texts[:2]
    ('goal', 'match')
    """
    _check_name(name)
    labels = [c for c, ws in zip(("sport", "food"), WORDS, strict=True) for _ in ws]
    texts = [w for ws in WORDS for w in ws]
    return ICLTask.from_pairs(
        texts, labels, label_words=label_words, classes=("sport", "food"), name=f"validation:{name}"
    )


def _direction(name: str) -> torch.Tensor:
    v = torch.zeros(D_MODEL)
    k = FEATURES.index(name)
    v[2 * k], v[2 * k + 1] = 2**-0.5, -(2**-0.5)
    return v


def _state(name: str, tok) -> tuple[dict[str, torch.Tensor], int]:
    """The hand-set Hugging Face GPT-2 state dict of model ``name`` and its number of layers."""
    truth, heads = MODELS[name]
    weak = set(truth.weak_words)
    e = {f: _direction(f) for f in FEATURES}
    sd: dict[str, torch.Tensor] = {}
    wte = torch.zeros(len(tok), D_MODEL)
    for t in range(len(tok)):
        word = tok.convert_ids_to_tokens(t)
        vec = e["const"].clone()
        for c, ws in enumerate(WORDS):
            if word in ws:
                sign = 1.0 - 2 * c
                q = WEAK_STRENGTH if word in weak else 1.0
                # the complement cls_qc keeps every word's norm, so layer norm scales all positions alike
                vec += e["word"] + sign * e["cls_k"] + sign * q * e["cls_q"] + (1 - q**2) ** 0.5 * e["cls_qc"]
        if word in ("foo", "bar"):
            vec += e["label"] + (1.0 if word == "foo" else -1.0) * e["pol"]
        if word == "\n":
            vec += e["newline"]
        wte[t] = vec + (TOKEN_NORM**2 - vec.norm() ** 2).sqrt() * e["pad"]
    p = torch.arange(N_POS, dtype=torch.float32)[:, None] / N_POS
    sd["transformer.wte.weight"] = wte
    sd["transformer.wpe.weight"] = p * e["pos"] + (1 - p**2).sqrt() * e["pos_c"]
    gain = (TOKEN_NORM**2 + 1) ** 0.5 / D_MODEL**0.5  # layer norm is the identity on layer-0 inputs
    for layer in range(truth.n_layers):
        pre = f"transformer.h.{layer}."
        sd[pre + "ln_1.weight"] = sd[pre + "ln_2.weight"] = torch.full((D_MODEL,), gain)
        w_attn, b_attn, w_o = torch.zeros(D_MODEL, 3 * D_MODEL), torch.zeros(3 * D_MODEL), torch.zeros(D_MODEL, D_MODEL)
        spec = {(0, h): _MOVER for h in (0, 1)} | heads
        for (lay, h), (qk, ov) in spec.items():
            if lay != layer:
                continue
            col = h * D_HEAD
            for i, (qf, kf, weight) in enumerate(qk):
                weight *= D_HEAD**0.5  # GPT-2 divides scores by sqrt(d_head)
                if qf is None:
                    b_attn[col + i] = weight
                else:
                    w_attn[:, col + i] = weight * e[qf]
                w_attn[:, D_MODEL + col + i] = e[kf]
            for i, (vf, of, weight) in enumerate(ov):
                w_attn[:, 2 * D_MODEL + col + i] = e[vf]
                w_o[col + i] = weight * e[of]
        sd[pre + "attn.c_attn.weight"], sd[pre + "attn.c_attn.bias"] = w_attn, b_attn
        sd[pre + "attn.c_proj.weight"] = w_o
    sd["transformer.ln_f.weight"] = torch.full((D_MODEL,), gain)
    w_u = -10.0 * e["const"].repeat(len(tok), 1)
    foo, bar = tok.convert_tokens_to_ids(["foo", "bar"])
    w_u[foo], w_u[bar] = KAPPA * e["answer"], -KAPPA * e["answer"]
    sd["lm_head.weight"] = w_u
    return sd, truth.n_layers


def validation_dir(name: str, root: str | Path | None = None) -> Path:
    """Write validation model ``name`` as a Hugging Face GPT-2 folder (once; reused after) and return it.

    Args:
        name: a key of :data:`MODELS`, with or without the ``validation:`` prefix.
        root: where to write (default: ``icl_heads_validation`` in the temporary directory).

    Raises:
        ValueError: an unknown name.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    from icl_heads.organism.vocab import build_tokenizer

    name = _check_name(name)
    spec = json.dumps([asdict(MODELS[name][0]), repr(MODELS[name][1]), D_MODEL, WEAK_STRENGTH, RECENCY, KAPPA])
    key = hashlib.sha256(spec.encode()).hexdigest()[:12]
    folder = Path(root or Path(tempfile.gettempdir()) / "icl_heads_validation") / f"{name}-{key}"
    if (folder / "config.json").exists():
        return folder
    tok = build_tokenizer()
    sd, n_layers = _state(name, tok)
    config = GPT2Config(
        vocab_size=len(tok), n_positions=N_POS, n_embd=D_MODEL, n_layer=n_layers, n_head=N_HEADS, n_inner=8,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for pname, param in model.named_parameters():
            param.copy_(sd.get(pname, torch.zeros_like(param)))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, folder)
    except OSError:  # written meanwhile by another process
        shutil.rmtree(tmp)
    return folder
