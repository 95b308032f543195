"""Typed config and provenance records: dict-like access, JSON round trips, old saved results, validation."""

import dataclasses
import importlib
import inspect
import json
import pkgutil

import pytest

import icl_heads as ih
from icl_heads.agreement import ScoreAgreementConfig
from icl_heads.bias import MajorityBiasConfig
from icl_heads.compare_corrections import CorrectionComparisonConfig
from icl_heads.components.protocol import ReweightingComparisonConfig
from icl_heads.components.result import DecompositionConfig
from icl_heads.components.stability import ComponentStabilityConfig
from icl_heads.faithfulness import FaithfulnessConfig
from icl_heads.head_count import HeadCountConfig
from icl_heads.head_definitions import HeadDefinitionsConfig
from icl_heads.heads import InContextHeadsConfig
from icl_heads.mechanism.flips import FlipAnalysisConfig
from icl_heads.mechanism.ov import OVLabelFeaturesConfig
from icl_heads.mechanism.qk import QKLabelAttentionConfig
from icl_heads.mechanism.towers import TwoTowerTestConfig
from icl_heads.order_bias import RecencyBiasConfig
from icl_heads.protocols import PaperTableConfig
from icl_heads.reading import ReadingRolesConfig
from icl_heads.records import UNSET, ModelIdentity, Provenance, Record, TaskIdentity
from icl_heads.results import JSON_TYPES, _decode, _jsonable, provenance
from icl_heads.tuning import BiasCorrectionConfig

# every config record of the package, each defined beside its result
CONFIGS = {
    cls
    for info in pkgutil.walk_packages(ih.__path__, "icl_heads.")
    for cls in vars(importlib.import_module(info.name)).values()
    if isinstance(cls, type)
    and issubclass(cls, Record)
    and cls.__name__.endswith("Config")
    and cls.__name__ != "PromptConfig"
}

# one valid record of each class, with values as the analyses write them
EXAMPLES = {
    InContextHeadsConfig: {"method": "dla", "fraction": 0.01, "k": 2, "also": ["dla"], "verify": True,
                                   "held_out_verification": False, "n_random": 20, "seed": 0, "rescore": None},
    HeadCountConfig: {"margin": 0.05, "max_k": None, "greedy": True, "n_random": 20, "random_for": "every",
                              "seed": 0},
    MajorityBiasConfig: {"shots": 4, "n": 10, "seed": 0, "skews": [[3, 1]], "hooked": False},
    RecencyBiasConfig: {"shots": 4, "n": 10, "seed": 0, "n_random_orders": 4, "hooked": True},
    BiasCorrectionConfig: {"headline": "excess", "shots": 4, "n": 10, "seed": 0, "tune_n": 8, "tune_seed": 1,
                                   "max_accuracy_drop": 0.01, "grid": [0.5, 1.0], "skews": [[3, 1]],
                                   "read_at_requested": "auto", "read_at": "label"},
    OVLabelFeaturesConfig: {"control_offset": 1, "top_k": 5, "top_rank": 10, "read_at": "after_label",
                                    "attention_by_role": {"label": 0.5}, "min_read_share": 0.1},
    QKLabelAttentionConfig: {"example": 0, "read_at": "slot", "share_at_read_positions": {"L0H1": 0.4}},
    FlipAnalysisConfig: {"resample_demos": True, "seed": 0, "own_flipped_prompts": True, "read_at": "label"},
    TwoTowerTestConfig: {"probe_rank": None, "probe_components": 8, "probe_ridge": 1.0, "seed": 0},
    ReadingRolesConfig: {"n_boot": 100, "seed": 0},
    DecompositionConfig: {"batch_size": 8, "padding_side": "right", "logit_soft_cap": None},
    ComponentStabilityConfig: {"n_demo_sets": 3, "shots": 4, "n": 10, "top": 5, "seed": 0},
    ReweightingComparisonConfig: {"k": 24, "k_demo": 4, "seeds": [0, 1], "n_test": 50, "reweighting": {},
                                          "icl_k_skipped": "not requested (icl_k=False)"},
    ScoreAgreementConfig: {"method": "dla", "sample": 8, "seed": 0, "k": 3, "how": "zero", "where": "final",
                                   "mean_reference": False, "rescore": None},
    FaithfulnessConfig: {"n_prompts": 2, "n_tokens": 7, "seed": 0},
    HeadDefinitionsConfig: {"n": 16, "shots": 4, "n_trials": 8, "n_seqs": 8, "k": 1, "method": "logprob_increase",
                            "probs": "labels", "n_random": 2, "seed": 0},
    CorrectionComparisonConfig: {"methods": ["batch", "contextual"], "shots": 4, "recency_shots": 8,
                                 "skews": [[3, 1]], "n": 20, "seed": 16, "tune_n": 20, "tune_seed": 17,
                                 "heads": [[1, 1]], "read_at": "label", "n_boot": 100},
    PaperTableConfig: {"paper": "Chang et al. 2024", "table": "4", "metric": "accuracy",
                       "settings": {"k": 24, "seeds": [0, 1]}},
}  # fmt: skip


def test_every_config_class_has_an_example_and_is_registered():
    assert set(CONFIGS) == set(EXAMPLES)
    for cls in [*CONFIGS, Provenance]:  # its ModelIdentity and TaskIdentity are rebuilt by Provenance itself
        assert JSON_TYPES[cls.__name__] is cls


@pytest.mark.parametrize("cls", list(EXAMPLES), ids=lambda c: c.__name__)
def test_config_reads_like_the_dict_and_round_trips(cls):
    data = EXAMPLES[cls]
    record = cls.from_dict(data)
    assert dict(record) == data and record == data and list(record) == list(data)
    key = next(iter(data))
    assert record[key] == data[key] and key in record and record.get(key) == data[key]
    assert record.get("no such key", "fallback") == "fallback" and "no such key" not in record
    with pytest.raises(KeyError):
        record["no such key"]
    assert cls.from_dict(record.to_dict()) == record
    assert json.loads(json.dumps(_jsonable(record))) == {"__type__": cls.__name__, "data": data}
    assert type(_decode(_jsonable(record))) is cls and _decode(_jsonable(record)) == record
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.seed = 1  # type: ignore[misc]


def test_unknown_keys_go_to_extra_and_missing_keys_take_the_defaults():
    record = ReadingRolesConfig.from_dict({"seed": 3, "from_a_newer_version": [1, 2]})
    assert record.extra == {"from_a_newer_version": [1, 2]} and record["from_a_newer_version"] == [1, 2]
    assert record.n_boot == 1000 and record.to_dict() == {"n_boot": 1000, "seed": 3, "from_a_newer_version": [1, 2]}
    assert ReadingRolesConfig() == {"n_boot": 1000, "seed": 0}
    where = QKLabelAttentionConfig.from_dict({"example": 0})  # where it read: recorded only when known
    assert where.read_at is UNSET and "read_at" not in where and where.get("read_at", "label") == "label"


@pytest.mark.parametrize(
    "cls, analysis",
    [(ReadingRolesConfig, ih.reading_roles), (FaithfulnessConfig, ih.check_faithfulness),
     (ComponentStabilityConfig, ih.component_stability), (MajorityBiasConfig, ih.majority_bias),
     (RecencyBiasConfig, ih.recency_bias)],
)  # fmt: skip
def test_config_defaults_are_the_analysis_defaults(cls, analysis):
    params = inspect.signature(analysis).parameters
    shared = {k: v for k, v in cls().items() if k in params}
    assert len(shared) >= 2
    for key, value in shared.items():
        default = params[key].default
        assert value == ([list(s) for s in default] if key == "skews" else default), (cls.__name__, key)


def test_records_of_a_run_need_their_keys():
    with pytest.raises(ValueError, match=r"missing the keys \['reference', 'architecture'\]"):
        ModelIdentity.from_dict({"class": "HookedTransformer"})
    with pytest.raises(TypeError):  # the runtime type checker or from_dict itself
        ModelIdentity.from_dict([("class", "x")])


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (OVLabelFeaturesConfig, {"read_at": "query"}, r"read_at must be one of \['label', 'after_label', 'slot'\]"),
        (InContextHeadsConfig, {"fraction": 1.5}, r"fraction must be in \(0, 1\]"),
        (MajorityBiasConfig, {"shots": 0}, "shots must be at least 1, got 0"),
        (HeadCountConfig, {"random_for": "first"}, r"random_for must be one of \['every', 'last'\]"),
        (DecompositionConfig, {"padding_side": "middle"}, "padding_side must be one of"),
    ],
)  # fmt: skip
def test_invalid_values_raise_a_clear_error(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)
    with pytest.raises(ValueError, match=match):
        cls.from_dict(kwargs)


def test_provenance_keeps_the_keys_of_the_old_dict(task, models):
    prompts = task.prompts(6, 4, seed=0).tokenize(models["gpt2"].tokenizer)
    prov = provenance("tiny", prompts, heads=[[0, 1]], n_queries=5)
    assert isinstance(prov, Provenance)
    assert prov["n_prompts"] == 6 and prov["label_words"] == list(task.label_words) and prov["heads"] == [[0, 1]]
    assert prov.extra == {"n_queries": 5} and prov["prompt_config"]["shots"] == 4
    assert list(prov)[:5] == ["model", "icl_heads", "transformer_lens", "torch", "created"]
    bare = provenance("tiny")
    assert "n_prompts" not in bare and "task" not in bare
    assert Provenance.from_dict(json.loads(json.dumps(prov.to_dict()))) == prov


def test_run_provenance_nests_typed_identities(task, tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("text,label\n")
    from icl_heads._provenance import run_provenance

    prov = run_provenance(argv=["analyze"], model=_Model(), reference="r",
                          architecture=None, task=task, data=data, seeds={"s": 1}, threads=1)  # fmt: skip
    assert isinstance(prov.model, ModelIdentity) and prov.model["class"] == "_Model"
    assert prov["task"]["data_sha256"] and "cost" not in prov
    out = json.loads(json.dumps(Provenance.from_dict({**prov.to_dict(), "cost": {"total seconds": 1.0}}).to_dict()))
    assert list(out) == ["command", "versions", "model", "task", "seeds", "torch_threads", "platform",
                         "python_executable", "cost"]  # fmt: skip
    assert "class_" not in out["model"] and out["model"]["class"] == "_Model"
    back = Provenance.from_dict(out)
    assert isinstance(back.task, TaskIdentity) and back.to_dict() == out


class _Model:
    """The least a model needs for its identity: parameters (none) and no ``cfg``."""

    def parameters(self):
        return iter(())


def test_result_save_load_keeps_typed_records(task, models, tmp_path):
    result = ih.reading_roles(models["gpt2"], task.prompts(6, 4, seed=0), n_boot=50)
    assert isinstance(result.config, ReadingRolesConfig) and isinstance(result.provenance, Provenance)
    meta = json.loads((result.save(tmp_path / "r") / "meta.json").read_text())
    assert meta["fields"]["config"] == {"__type__": "ReadingRolesConfig", "data": {"n_boot": 50, "seed": 0}}
    loaded = type(result).load(tmp_path / "r")
    assert type(loaded.config) is ReadingRolesConfig and loaded.config == result.config
    assert type(loaded.provenance) is Provenance and loaded.provenance == result.provenance


def test_prompt_sets_carry_a_typed_config_that_reads_like_the_old_dict():
    import icl_heads as ih
    from icl_heads.prompts import ICLPrompts, PromptConfig
    from icl_heads.prompts.designs import fixed_demo_prompts

    task = ih.organism_task()
    prompts = task.prompts(6, 2, seed=4, counts=(1, 1))
    assert isinstance(prompts.config, PromptConfig)
    assert dict(prompts.config) == {"n": 6, "shots": 2, "seed": 4, "counts": (1, 1), "order": "random", "gold": None}
    assert prompts[:2].config is prompts.config and prompts.config["shots"] == 2
    fixed = fixed_demo_prompts(task, [0, 1], [2, 3])
    assert list(fixed.config) == ["n", "shots", "demos", "fixed_demos"] and fixed.config["fixed_demos"] is True
    tagged = prompts.config.updated(condition="balanced", shots=3)
    assert list(tagged) == ["n", "shots", "seed", "counts", "order", "gold", "condition"] and tagged["shots"] == 3
    given = ICLPrompts(prompts.prompts, task, config={"n": 6, "note": "mine"})  # a plain dict is converted
    assert isinstance(given.config, PromptConfig) and given.config["note"] == "mine"
    with pytest.raises(TypeError, match="config must be a PromptConfig or a dict|parameter 'config'"):
        ICLPrompts(prompts.prompts, task, config=[1, 2])
