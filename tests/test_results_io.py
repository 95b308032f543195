"""Saved results come back exactly, and a damaged folder gets an error naming the file at fault."""

import json

import pandas as pd
import pytest
import torch

import icl_heads as ih


@pytest.fixture(scope="module")
def mechanism_results(models, task):
    prompts = task.prompts(8, 4, seed=0)
    model = models["llama"]
    return {
        "ov": ih.ov_label_features(model, prompts, [(0, 1), (1, 2)]),
        "qk": ih.qk_label_attention(model, prompts, [(0, 1), (1, 2)]),
    }


@pytest.mark.parametrize("name", ["ov", "qk"])
def test_round_trip_keeps_dtypes_values_and_summary(mechanism_results, name, tmp_path):
    result = mechanism_results[name]
    float32 = [c for c, t in result.df.dtypes.items() if str(t) == "float32"]
    assert float32, "the result should hold float32 columns for this test to mean something"
    loaded = type(result).load(result.save(tmp_path / name))
    for field in ("df", "positions"):
        pd.testing.assert_frame_equal(getattr(loaded, field), getattr(result, field), check_exact=True)
    assert loaded.summary() == result.summary()
    assert loaded.heads == result.heads


@pytest.fixture
def saved(mechanism_results, tmp_path):
    return mechanism_results["qk"].save(tmp_path / "qk")


def _corrupt_meta(path):
    (path / "meta.json").write_text("{not json")


def _meta_not_a_result(path):
    (path / "meta.json").write_text("[1, 2]")


def _drop_table(path):
    (path / "df.csv").unlink()


def _garbage_table(path):
    (path / "df.csv").write_text("garbage\n1\n2\n")


def _wrong_values(path):
    df = pd.read_csv(path / "df.csv")
    df["attention_same"] = "high"
    df.to_csv(path / "df.csv", index=False)


def _truncate_tensors(path):
    data = (path / "tensors.safetensors").read_bytes()
    (path / "tensors.safetensors").write_bytes(data[: len(data) // 2])


def _drop_tensors(path):
    (path / "tensors.safetensors").unlink()


def _drop_field(path):
    meta = json.loads((path / "meta.json").read_text())
    del meta["fields"]["provenance"]
    (path / "meta.json").write_text(json.dumps(meta))


def _drop_last_row(path):
    lines = (path / "df.csv").read_text().splitlines(keepends=True)
    (path / "df.csv").write_text("".join(lines[:-1]))


def _edit_a_number(path):
    df = pd.read_csv(path / "df.csv")
    df.loc[0, "attention_same"] = df.loc[0, "attention_same"] + 0.5
    df.to_csv(path / "df.csv", index=False)


def _older_format(path):
    meta = json.loads((path / "meta.json").read_text())
    del meta["format"]
    (path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "damage, error, match",
    [
        (_corrupt_meta, ValueError, r"meta\.json is corrupt"),
        (_meta_not_a_result, ValueError, r"meta\.json is not the metadata of a saved result"),
        (_drop_table, FileNotFoundError, r"df\.csv is missing"),
        (_garbage_table, ValueError, r"df\.csv has columns \['garbage'\] but meta\.json records"),
        (
            _wrong_values,
            ValueError,
            r"df\.csv: column 'attention_same' does not hold the float\d+ values meta\.json records",
        ),
        (_truncate_tensors, ValueError, r"tensors\.safetensors is corrupt"),
        (
            _drop_tensors,
            FileNotFoundError,
            r"tensors\.safetensors is missing; meta\.json records the tensors \['example_pattern'\]",
        ),
        (_drop_field, ValueError, r"meta\.json was changed after the result was saved"),
        (_drop_last_row, ValueError, r"df\.csv has \d+ rows but meta\.json records \d+"),
        (_edit_a_number, ValueError, r"df\.csv was changed after the result was saved"),
        (_older_format, ValueError, r"meta\.json: this result was saved in an older format .*re-run the analysis"),
    ],
)
def test_damaged_folder_names_the_file(saved, damage, error, match):
    damage(saved)
    with pytest.raises(error, match=match):
        ih.mechanism.QKLabelAttention.load(saved)


def test_string_cells_that_look_missing_stay_strings(tmp_path):
    df = pd.DataFrame({"label": ["NA", "null", "foo"], "accuracy": torch.tensor([0.5, 0.25, 1.0]).numpy()})
    from icl_heads.results import _read_table

    df.to_csv(tmp_path / "t.csv", index=False)
    back = _read_table(tmp_path / "t.csv", {c: str(t) for c, t in df.dtypes.items()})
    pd.testing.assert_frame_equal(back, df, check_exact=True)
