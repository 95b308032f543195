"""OV label features, QK label attention, flips and the two-tower test.

Known answers come from a hand-built one-head model (``two_tower``): its head L0H0 scores
each label position by the similarity of the query's topic and the label there, and
copies the label it reads; every other head writes nothing and attends uniformly. Exact
identities (per-position OV vectors sum to the head output; captured attention and
scores equal a plain cached forward pass) are checked on every tiny model kind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import icl_heads as ih
from icl_heads import mechanism as mech
from icl_heads.access import ModelAccess
from icl_heads.options import RunOptions
from icl_heads.organism.vocab import TOPICS
from icl_heads.plots.mechanism import plot_auc_heatmap, plot_flip, plot_label_attention, plot_ov_logit_diff

CHANCE = 0.5


def two_tower_gpt2_dir(path: str | Path, *, sharpness: float = 1.0, strength: float = 2.0) -> Path:
    """A GPT-2-style model whose head L0H0 attends to same-class labels and copies them.

    Embeddings are one-hot: sport words on dimension 0, food words on 1, ``foo`` on 2,
    ``bar`` on 3, every other token on 4 (no positional embedding). L0H0's query reads
    ``x0 - x1`` (the query word's topic), its key and value read ``x2 - x3`` (the label
    at that position), and its output writes ``+(x2 - x3)`` back on dimensions 2 and 3,
    so with tied unembeddings it raises ``foo`` and lowers ``bar`` by the same amount.
    All other weights are zero.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    from icl_heads.organism.vocab import build_tokenizer

    path = Path(path)
    tok = build_tokenizer()
    d, n_head = 16, 2
    config = GPT2Config(
        vocab_size=len(tok), n_positions=128, n_embd=d, n_layer=2, n_head=n_head,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    model = GPT2LMHeadModel(config)
    ids = tok.convert_tokens_to_ids
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.fill_(1.0)
        wte = model.transformer.wte.weight
        wte[:, 4] = 1.0
        for dim, words in ((0, TOPICS["sport"]), (1, TOPICS["food"]), (2, ("foo",)), (3, ("bar",))):
            for i in ids(list(words)):
                wte[i, 4], wte[i, dim] = 0.0, 1.0
        w = model.transformer.h[0].attn.c_attn.weight  # [d, 3d]: query, key, value columns
        w[0, 0], w[1, 0] = sharpness, -sharpness
        w[2, d], w[3, d] = 1.0, -1.0
        w[2, 2 * d], w[3, 2 * d] = 1.0, -1.0
        proj = model.transformer.h[0].attn.c_proj.weight  # [head dims, d]
        proj[0, 2], proj[0, 3] = strength, -strength
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def two_tower(tmp_path_factory):
    return ih.load_model(two_tower_gpt2_dir(tmp_path_factory.mktemp("two_tower") / "m"))


@pytest.fixture(scope="module")
def word_task():
    """Sentences of one topic word each, so the query's last token is its topic word."""
    texts = [*TOPICS["sport"], *TOPICS["food"]]
    labels = ["sport"] * 10 + ["food"] * 10
    return ih.ICLTask.from_pairs(texts, labels, classes=("sport", "food"), template="{text} {label}\n", name="words")


@pytest.fixture(scope="module")
def word_prompts(word_task):
    return word_task.prompts(12, 4, seed=0)


# ---- pure maths ------------------------------------------------------------------------


def test_roc_auc_matches_pairwise_counting():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 60).astype(float)  # many ties
    y = rng.random(60) < 0.4
    pos, neg = x[y], x[~y]
    brute = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size)
    assert mech.roc_auc(x, y) == pytest.approx(brute)
    assert mech.roc_auc([1, 2, 3, 4], [False, False, True, True]) == 1.0
    assert mech.roc_auc([0, 0, 0, 0], [False, True, False, True]) == CHANCE
    with pytest.raises(ValueError, match="both groups"):
        mech.roc_auc([1, 2], [True, True])


def test_paired_auc_only_compares_within_groups():
    # each group is perfectly ordered, but group 1 is offset far above group 0
    x = np.array([0.0, 1.0, 100.0, 101.0])
    y = np.array([False, True, False, True])
    g = np.array([0, 0, 1, 1])
    assert mech.paired_auc(x, y, g) == 1.0
    assert mech.roc_auc(x, y) == 0.75
    with pytest.raises(ValueError, match="no prompt has"):
        mech.paired_auc([1.0, 2.0], [True, False], [0, 1])


def test_label_metrics_on_hand_made_logits():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    label_ids = torch.tensor([0, 2, 4])
    m = mech.label_metrics(logits, label_ids, torch.tensor([1, 0]))
    torch.testing.assert_close(m["label_logits"], torch.tensor([[3.0, 2.0, 2.0], [0.0, 0.0, 0.0]]))
    # ties count against the label: tokens 2 and 4 share rank 3; a zero vector ranks everything last
    assert m["ranks"].tolist() == [[1, 3, 3], [5, 5, 5]]
    own = torch.tensor(2.0)
    torch.testing.assert_close(m["logit_diff"][0], own - (3.0 + 2.0) / 2)
    torch.testing.assert_close(m["logprob_diff"][0], own - torch.logsumexp(torch.tensor([3.0, 2.0]), 0))
    assert m["promotes"].tolist() == [False, False]
    two = mech.own_vs_rest(torch.tensor([[1.0, -2.0]]), torch.tensor([0]))
    torch.testing.assert_close(two["logit_diff"], two["logprob_diff"])  # equal for two labels
    assert two["promotes"].item()


def test_bilinear_probe_recovers_a_low_rank_form_and_not_noise():
    gen = torch.Generator().manual_seed(0)
    n, d = 400, 12
    q, k = torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen)
    u, v = torch.randn(d, 2, generator=gen), torch.randn(d, 2, generator=gen)
    y = torch.einsum("ni,ir,jr,nj->n", q, u, v, k)
    groups = torch.arange(n) // 4
    assert mech.bilinear_probe_r2(q, k, y, groups, rank=2, n_components=d) > 0.99
    assert mech.bilinear_probe_r2(q, k, y, groups, rank=1, n_components=d) < 0.9
    noise = torch.randn(n, generator=gen)
    assert mech.bilinear_probe_r2(q, k, noise, groups, rank=2, n_components=d) < 0.1
    with pytest.raises(ValueError, match="rank"):
        mech.bilinear_probe_r2(q, k, y, groups, rank=0)
    with pytest.raises(ValueError, match="at least 4 prompts"):
        mech.bilinear_probe_r2(q, k, y, torch.zeros(n, dtype=torch.long), rank=1)


# ---- exact identities on every model kind ------------------------------------------------


def test_per_position_ov_sums_to_the_head_output(any_model, task):
    access = ModelAccess(any_model)
    tp = access.tokenize(task.prompts(3, 3, seed=1))
    batch = next(access.batches(tp, 3, "left"))
    width = batch.tokens.shape[1]
    positions = torch.arange(width).repeat(3, 1)
    heads = [(layer, h) for layer in range(access.n_layers) for h in range(access.n_heads)]
    vecs, attn, scale = mech.per_position_ov(any_model, batch, heads, positions)
    caps = [ih.access.Capture(access.hook(layer, "z")) for layer in range(access.n_layers)]
    caps += [ih.access.Capture(access.hook(layer, "attn_out")) for layer in range(access.n_layers)]
    _, got = access.run(batch, capture=caps)
    weighted = (attn[..., None] * vecs).sum(2)  # [b, head, d_model]; padding and future keys have zero weight
    for i, (layer, h) in enumerate(heads):
        z = got[access.hook(layer, "z")][:, h]
        torch.testing.assert_close(weighted[:, i], z @ access.W_O(layer)[h].float(), atol=1e-5, rtol=1e-4)
    for layer in range(access.n_layers):
        rows = [i for i, (lay, _) in enumerate(heads) if lay == layer]
        out = weighted[:, rows].sum(1) + access.b_O(layer).float()
        torch.testing.assert_close(out, got[access.hook(layer, "attn_out")], atol=1e-5, rtol=1e-4)
    assert scale.shape == (3, 1)


def test_captured_attention_scores_and_ov_logits_match_a_cached_pass(any_model, task):
    access = ModelAccess(any_model)
    prompts = task.prompts(4, 3, seed=2)
    heads = [(0, 1), (access.n_layers - 1, access.n_heads - 1)]
    qk = mech.qk_label_attention(any_model, prompts, heads, options=RunOptions(batch_size=3), read_at="label")
    ov = mech.ov_label_features(any_model, prompts, heads, options=RunOptions(batch_size=3), read_at="label")
    tp = access.tokenize(prompts)
    for i in (0, 3):
        tokens = torch.tensor([tp.tokens[i]])
        with torch.inference_mode():
            _, cache = any_model.run_with_cache(tokens)
        t, lp = len(tp.tokens[i]) - 1, list(tp.label_positions[i])
        scale = cache["ln_final.hook_scale"][0, t]
        for layer, h in heads:
            rows = qk.positions[
                (qk.positions.prompt == i) & (qk.positions.layer == layer) & (qk.positions["head"] == h)
            ]
            pattern = cache[access.hook(layer, "pattern")][0, h, t, lp]
            scores = cache[access.hook(layer, "attn_scores")][0, h, t, lp]
            np.testing.assert_allclose(rows.attention, pattern.numpy(), atol=1e-6)
            np.testing.assert_allclose(rows.score, scores.numpy(), atol=1e-5)
            v = cache[access.hook(layer, "v")][0, lp]
            kv = h // (access.n_heads // v.shape[1])
            logits = access.unembed(access.final_norm(v[:, kv] @ access.W_O(layer)[h], scale))
            part = ov.positions[
                (ov.positions.prompt == i)
                & (ov.positions.layer == layer)
                & (ov.positions["head"] == h)
                & (ov.positions.kind == "label")
            ]
            for c, word in enumerate(task.label_words):
                np.testing.assert_allclose(part[f"logit_{word}"], logits[:, tp.label_token_ids[c]].numpy(), atol=1e-5)
            np.testing.assert_allclose(part.attention, pattern.numpy(), atol=1e-6)
            assert part.position.tolist() == lp


def test_results_do_not_depend_on_batch_size_or_padding(any_model, task, fresh):
    prompts = task.prompts(7, 3, seed=4)
    heads = [(0, 0), (1, 2)]
    ref_ov = mech.ov_label_features(any_model, prompts, heads, options=RunOptions(batch_size=7))
    ref_qk = mech.qk_label_attention(any_model, prompts, heads, options=RunOptions(batch_size=7), example=5)
    ref_tt = mech.two_tower_test(any_model, prompts, heads, options=RunOptions(batch_size=7))
    for bs, side in [(2, "left"), (3, "right")]:
        ov = mech.ov_label_features(any_model, prompts, heads, options=RunOptions(batch_size=bs, padding_side=side))
        qk = mech.qk_label_attention(
            any_model, prompts, heads, options=RunOptions(batch_size=bs, padding_side=side), example=5
        )
        tt = mech.two_tower_test(any_model, prompts, heads, options=RunOptions(batch_size=bs, padding_side=side))
        for got, ref in (
            (ov.positions, ref_ov.positions),
            (qk.positions, ref_qk.positions),
            (tt.positions, ref_tt.positions),
        ):
            assert got[["prompt", "demo", "layer", "head"]].equals(ref[["prompt", "demo", "layer", "head"]])
            num = ref.select_dtypes("number").columns
            np.testing.assert_allclose(got[num].to_numpy(float), ref[num].to_numpy(float), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(qk.example_pattern, ref_qk.example_pattern, atol=1e-5, rtol=1e-4)


# ---- known answers on the hand-built two-tower model -------------------------------------


def test_hand_built_model_solves_the_task(two_tower, word_prompts):
    assert ih.icl_accuracy(two_tower, word_prompts).accuracy == 1.0


def test_ov_features_on_hand_built_model(two_tower, word_prompts):
    ov = mech.ov_label_features(two_tower, word_prompts, heads=None, read_at="label")
    assert ov.config["read_at"] == "label"
    copier = ov.positions[(ov.positions.name == "L0H0") & (ov.positions.kind == "label")]
    # at every label position the copier's vector promotes that label, ranked first in the vocabulary
    assert copier.promotes.all() and (copier.own_rank == 1).all()
    assert (copier.top_tokens.str.split("|").str[0].str.strip() == copier.label).all()
    foo = copier[copier.label == "foo"]
    assert (foo.logit_foo > 0).all() and (foo.logit_bar < 0).all()
    np.testing.assert_allclose(copier.weighted_logit_diff, copier.attention * copier.logit_diff, rtol=1e-5)
    share = ov.share("label")
    assert share["L0H0"] == 1.0
    # control positions (the demonstration's topic word) and the heads that write nothing promote nothing
    assert ov.share("control")["L0H0"] == 0.0
    assert (share.drop("L0H0") == 0.0).all()
    silent = ov.positions[ov.positions.name != "L0H0"]
    assert (silent.logit_diff == 0).all() and (silent.own_rank == ModelAccess(two_tower).W_U.shape[1]).all()
    row = ov.df[(ov.df.name == "L0H0") & (ov.df.kind == "label") & (ov.df.label == "bar")].iloc[0]
    assert row.top_rank_share == 1.0 and row.median_own_rank == 1 and row.top_tokens.split("|")[0].strip() == "bar"


def test_qk_attention_on_hand_built_model(two_tower, word_prompts):
    qk = mech.qk_label_attention(two_tower, word_prompts, read_at="label")
    df = qk.df.set_index("name")
    copier = df.loc["L0H0"]
    assert copier.attention_same > 10 * copier.attention_other
    assert copier.score_same > 0 > copier.score_other
    assert copier.auc_score == 1.0 and copier.auc_score_within == 1.0 and copier.auc_attention == 1.0
    # the model is always right here, so "same as gold" and "same as prediction" coincide
    assert copier.attention_predicted == pytest.approx(copier.attention_same)
    assert copier.label_share > copier.uniform_share
    # zero query weights: uniform attention, every score 0, chance AUC
    rest = df.drop("L0H0")
    assert (rest.auc_score == CHANCE).all() and (rest.score_same == 0).all()
    np.testing.assert_allclose(rest.label_share, rest.uniform_share, rtol=1e-5)
    fig = qk.plot([(0, 0), (1, 1)])
    assert fig.data[0].z.shape == (2, len(qk.example_tokens)) and list(fig.data[0].y) == ["L0H0", "L1H1"]
    assert any("<b>" in t for t in fig.layout.xaxis.ticktext) and fig.layout.title.text


def test_two_tower_on_hand_built_model(two_tower, word_prompts):
    tt = mech.two_tower_test(two_tower, word_prompts, probe_rank=1, probe_components=4)
    df = tt.df.set_index("name")
    assert df.loc["L0H0", "auc_score"] == 1.0
    # the score is exactly bilinear in the normalised residual streams
    assert df.loc["L0H0", "probe_r2"] > 0.99
    assert np.isnan(df.drop("L0H0").probe_r2).all()
    # one-hot embeddings: every (query word, label) pair has the same cosine, so the baseline cannot separate
    cos = tt.positions[tt.positions.layer == 0].cosine
    assert cos.max() - cos.min() < 1e-5
    fig = tt.heatmap()
    assert fig.data[0].zmid == CHANCE and fig.data[0].z[0][0] == 1.0 and "L0H0" in fig.data[0].text[0][0]
    with pytest.raises(KeyError, match="available"):
        tt.heatmap("nope")


def test_flip_on_hand_built_model(two_tower, word_prompts):
    flip = mech.flip_analysis(two_tower, word_prompts)
    assert flip.pairs.flipped.all()
    copier = flip.df.set_index("name").loc["L0H0"]
    assert copier.n_pairs == len(word_prompts)
    assert copier.old_label_before > copier.old_label_after
    assert copier.new_label_after > copier.new_label_before
    # identical demonstrations: the vectors at label positions cannot change (causality); attention does
    assert copier.ov_rel_change < 1e-5
    assert copier.attention_rel_change > 0.5
    assert copier.weighted_ov_rel_change > 0.5
    silent = flip.df[flip.df.name != "L0H0"]
    assert (silent.attention_rel_change < 1e-5).all() and (silent.ov_rel_change == 0).all()
    resampled = mech.flip_analysis(two_tower, word_prompts, heads=[(0, 0)], resample_demos=True)
    assert resampled.df.attention_rel_change.iloc[0] > 0.5
    fig = flip.plot([(0, 0)])
    assert len(fig.data) == 4 and list(fig.data[0].x) == ["L0H0"] and fig.layout.barmode == "group"


def test_flip_prompts_keep_demo_labels_and_change_the_query(word_task, word_prompts):
    for resample in (False, True):
        twin = mech.flip_prompts(word_prompts, resample_demos=resample, seed=3)
        for a, b in zip(word_prompts.prompts, twin.prompts, strict=True):
            assert [y for _, y in a.demos] == [y for _, y in b.demos]
            assert b.gold != a.gold
            assert b.query not in {t for t, _ in b.demos}
            assert (a.demos == b.demos) != resample
    assert mech.flip_prompts(word_prompts, seed=1).prompts == mech.flip_prompts(word_prompts, seed=1).prompts


# ---- errors, results, figures --------------------------------------------------------------


def test_bad_inputs_are_refused(two_tower, word_task, word_prompts):
    with pytest.raises(ValueError, match="control_offset"):
        mech.ov_label_features(two_tower, word_prompts, control_offset=0)
    with pytest.raises(ValueError, match="outside the model"):
        mech.ov_label_features(two_tower, word_prompts, [(5, 0)])
    with pytest.raises(ValueError, match="example"):
        mech.qk_label_attention(two_tower, word_prompts, example=99)
    one_class = word_task.prompts(4, 2, seed=1, counts=(2, 0), gold=0)
    with pytest.raises(ValueError, match="classes"):
        mech.qk_label_attention(two_tower, one_class, [(0, 0)])
    with pytest.raises(ValueError, match="align"):
        mech.flip_analysis(two_tower, word_prompts, word_prompts[:3])
    # a query of the same class cannot flip anything
    with pytest.raises(ValueError, match="no prediction flipped"):
        mech.flip_analysis(two_tower, word_prompts, word_prompts)
    with pytest.raises(TypeError, match="TransformerLens model"):
        mech.ov_label_features(object(), word_prompts)


def test_results_round_trip(two_tower, word_prompts, tmp_path):
    ov = mech.ov_label_features(two_tower, word_prompts, [(0, 0), (1, 0)])
    qk = mech.qk_label_attention(two_tower, word_prompts, [(0, 0)])
    tt = mech.two_tower_test(two_tower, word_prompts, [(0, 0)])
    flip = mech.flip_analysis(two_tower, word_prompts, heads=[(0, 0)])
    for result in (ov, qk, tt, flip):
        back = type(result).load(result.save(tmp_path / type(result).__name__))
        assert back.heads == result.heads
        np.testing.assert_allclose(back.df.select_dtypes("number"), result.df.select_dtypes("number"))
        assert "<table>" in result._repr_html_() and repr(result).startswith(type(result).__name__)
    back = mech.QKLabelAttention.load(tmp_path / "QKLabelAttention")
    torch.testing.assert_close(back.example_pattern, qk.example_pattern)
    assert plot_label_attention(back).data[0].z.shape == qk.example_pattern.shape
    assert plot_ov_logit_diff(mech.OVLabelFeatures.load(tmp_path / "OVLabelFeatures")).data
    assert plot_auc_heatmap(mech.TwoTowerTest.load(tmp_path / "TwoTowerTest")).data
    assert plot_flip(mech.FlipAnalysis.load(tmp_path / "FlipAnalysis")).data


def test_ov_figure(two_tower, word_prompts):
    ov = mech.ov_label_features(two_tower, word_prompts, [(0, 0)])
    fig = ov.plot()
    names = [t.name for t in fig.data]
    assert names == ["foo position", "bar position", "control (foo demo)", "control (bar demo)"]
    assert min(fig.data[0].y) > 0 > max(fig.data[1].y)  # foo - bar: above zero at foo, below at bar
    assert "foo" in fig.layout.yaxis.title.text and fig.layout.xaxis.title.text == "demonstration slot (1 = first)"
    slots = list(fig.layout.xaxis.categoryarray)  # slots in order, numbered from 1, whatever order the traces hold
    assert slots == sorted(slots, key=lambda s: int(s.split()[1])) and slots[0] == "demo 1"
    with pytest.raises(ValueError, match="not analysed"):
        ov.plot((1, 1))


# ---- the organism ----------------------------------------------------------------------------


@pytest.mark.slow
def test_organism_in_context_heads_copy_labels_and_look_at_same_class_demos(organism):
    from icl_heads.organism import organism_task

    prompts = organism_task(seed=11).prompts(80, 4, seed=12)
    found = ih.find_in_context_heads(organism, prompts, k=3, verify=False)
    scores = found.score_table()
    order = torch.argsort(scores.flatten())
    bottom = [divmod(int(i), scores.shape[1]) for i in order[:3]]
    ov = mech.ov_label_features(organism, prompts, [*found.heads, *bottom])
    label, control = ov.share("label"), ov.share("control")
    names = [f"L{a}H{b}" for a, b in found.heads]
    rows = ov.df[(ov.df.kind == "label") & (ov.df.label == "all")].set_index("name")
    for name in names:
        assert label[name] >= 0.9, name
        assert rows.loc[name, "median_own_rank"] <= 5, name
        assert abs(control[name] - CHANCE) <= 0.2, name  # the separator before a label carries no label
    for a, b in bottom:
        assert label[f"L{a}H{b}"] <= label[names].min() - 0.3
    qk = mech.qk_label_attention(organism, prompts, found.heads).df.set_index("name")
    assert (qk.attention_same > 5 * qk.attention_other).all()
    assert (qk.auc_score_within > 0.85).all()
    flip = mech.flip_analysis(organism, prompts, heads=found.heads, resample_demos=True).df
    assert (flip.attention_rel_change > 2 * flip.ov_rel_change).all()
    assert (flip.new_label_after > flip.new_label_before).all() and (flip.old_label_after < flip.old_label_before).all()


# ---- reading position: auto choice and the loud warning -------------------------------------


def test_auto_reads_at_the_label_for_a_label_reading_head(two_tower, word_prompts):
    ov = mech.ov_label_features(two_tower, word_prompts, [(0, 0)])
    assert ov.config["read_at_requested"] == "auto" and ov.config["read_at"] == "label"
    assert ov.warnings == () and ov.share("label")["L0H0"] == 1.0


def test_analyses_warn_loudly_where_the_head_does_not_read(two_tower, word_prompts, caplog):
    # L0H0 reads label tokens only; the newline after each label gets (almost) none of its attention
    with caplog.at_level("WARNING"):
        ov = mech.ov_label_features(two_tower, word_prompts, [(0, 0)], read_at="after_label")
    assert ov.config["read_at"] == "after_label"
    assert len(ov.warnings) == 1 and ov.warnings[0].startswith("NOT READ") and "'label'" in ov.warnings[0]
    assert any("NOT READ" in r.message for r in caplog.records)
    assert ov.summary()["NOT READ by L0H0"] in ov.warnings[0]  # scoped to the head it concerns
    assert "NOT READ" in ov._repr_html_() and "NOT READ" in repr(ov)
    share = ov.config["share_at_read_positions"]["L0H0"]
    assert share < ov.config["min_read_share"]
    assert (ov.positions[ov.positions.kind == "label"].role == "after_label").all()
    qk = mech.qk_label_attention(two_tower, word_prompts, [(0, 0)], read_at="after_label")
    assert qk.warnings and qk.df.set_index("name").loc["L0H0", "label_share"] == pytest.approx(share, abs=0.05)
    flips = mech.flip_analysis(two_tower, word_prompts, heads=[(0, 0)], read_at="after_label")
    assert flips.warnings and flips.config["read_at"] == "after_label"
    # the same head analysed where it reads carries no warning
    assert mech.qk_label_attention(two_tower, word_prompts, [(0, 0)], read_at="label").warnings == ()


def test_two_tower_test_follows_read_at_and_warns_where_the_head_does_not_read(
    two_tower, word_prompts, caplog, tmp_path
):
    # L0H0 reads label tokens only; the newline after each label carries no label and gets no attention
    auto = mech.two_tower_test(two_tower, word_prompts, [(0, 0)])
    assert auto.config["read_at_requested"] == "auto" and auto.config["read_at"] == "label" and auto.warnings == ()
    lab = mech.two_tower_test(two_tower, word_prompts, [(0, 0)], read_at="label")
    assert lab.warnings == () and lab.df.auc_score.item() == 1.0
    with caplog.at_level("WARNING"):
        after = mech.two_tower_test(two_tower, word_prompts, [(0, 0)], read_at="after_label")
    assert after.config["read_at"] == "after_label"
    assert len(after.warnings) == 1 and after.warnings[0].startswith("NOT READ") and "'label'" in after.warnings[0]
    assert any("NOT READ" in r.message for r in caplog.records)
    assert after.summary()["NOT READ by L0H0"] in after.warnings[0] and "NOT READ" in after._repr_html_()
    assert "L0H0 " in after.warnings[0] and "mostly on 'label'" in after.warnings[0]  # where this head reads
    assert after.config["share_at_read_positions"]["L0H0"] < after.config["min_read_share"]
    assert mech.TwoTowerTest.load(after.save(tmp_path / "tt")).warnings == after.warnings
    # the newline's key holds no label, so its score cannot separate the classes
    assert after.df.auc_score.item() == CHANCE
    # a slot's score is the log-sum-exp of its tokens' scores, its cosine their mean
    slot = mech.two_tower_test(two_tower, word_prompts, [(0, 0)], read_at="slot")
    lab_s, after_s = lab.positions.score.to_numpy(), after.positions.score.to_numpy()
    np.testing.assert_allclose(slot.positions.score, np.logaddexp(lab_s, after_s), rtol=1e-5, atol=1e-5)
    mean_cos = (lab.positions.cosine.to_numpy() + after.positions.cosine.to_numpy()) / 2
    np.testing.assert_allclose(slot.positions.cosine, mean_cos, atol=1e-6)


def test_slot_reading_sums_attention_over_the_slot(two_tower, word_prompts):
    qk = mech.qk_label_attention(two_tower, word_prompts, [(0, 0)], read_at="slot")
    lab = mech.qk_label_attention(two_tower, word_prompts, [(0, 0)], read_at="label")
    after = mech.qk_label_attention(two_tower, word_prompts, [(0, 0)], read_at="after_label")
    np.testing.assert_allclose(
        qk.positions.attention.to_numpy(),
        lab.positions.attention.to_numpy() + after.positions.attention.to_numpy(),
        rtol=1e-5,
        atol=1e-7,
    )
    # the slot's score is the log-sum-exp of its tokens' scores
    both = np.logaddexp(lab.positions.score.to_numpy(), after.positions.score.to_numpy())
    np.testing.assert_allclose(qk.positions.score.to_numpy(), both, rtol=1e-5, atol=1e-5)
