"""Class descriptions: the description file reader and its errors, the world's description sets,
class features averaged over descriptions (against the computation written out by hand on a causal
and a bidirectional host), their cache and short text path, prompt files, eval and predict."""

from __future__ import annotations

import json

import pytest
import torch

from promptcouple.data.descriptions import check_descriptions, read_descriptions
from promptcouple.errors import InvalidInputError, InvalidTypeError, MissingFileError

CLASSES = ["archery", "riding_a_bike", "playing the violin"]


# ------------------------------------------------------------------------------ the file reader

def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_and_json_read_alike(tmp_path):
    csv_file = write(tmp_path, "d.csv", "class,description\n"
                     "archery,a person shooting arrows at a target\n"
                     "Riding a bike,\"someone pedalling a bicycle, outdoors\"\n"
                     "archery,a bow drawn and released\n"
                     "playing the violin,a bow moving over strings, held under the chin\n")
    expected = {"archery": ("a person shooting arrows at a target", "a bow drawn and released"),
                "riding_a_bike": ("someone pedalling a bicycle, outdoors",),
                "playing the violin": ("a bow moving over strings, held under the chin",)}
    got = read_descriptions(csv_file, CLASSES)
    assert got == expected and list(got) == CLASSES  # keyed by the dataset's spelling, in its order
    json_file = write(tmp_path, "d.json", json.dumps({
        "archery": ["a person shooting arrows at a target", "a bow drawn and released"],
        "riding a bike": "someone pedalling a bicycle, outdoors",
        "playing the violin": ["a bow moving over strings, held under the chin"]}, indent=1))
    assert read_descriptions(json_file, CLASSES) == expected
    assert set(read_descriptions(csv_file)) == {"archery", "Riding a bike", "playing the violin"}


@pytest.mark.parametrize("fmt", ["csv", "json"])
@pytest.mark.parametrize("fault", ["unknown", "empty", "missing"])
def test_errors_name_the_file_and_line(tmp_path, fmt, fault):
    rows = [("archery", "shooting arrows"), ("riding a bike", "pedalling"), ("playing the violin", "bowing")]
    if fault == "unknown":
        rows[1] = ("riding a horse", "galloping")
    elif fault == "empty":
        rows[2] = ("playing the violin", "  ")
    else:
        rows = rows[:2]
    if fmt == "csv":
        path = write(tmp_path, "d.csv", "".join(f"{c},{d}\n" for c, d in rows))
    else:
        path = write(tmp_path, "d.json", "{\n" + ",\n".join(f'  "{c}": ["{d}"]' for c, d in rows) + "\n}\n")
    with pytest.raises(InvalidInputError) as err:
        read_descriptions(path, CLASSES)
    message = str(err.value)
    if fault == "unknown":
        assert f"{path}:{2 if fmt == 'csv' else 3}:" in message and "'riding a horse'" in message
        assert "not a class of this dataset" in message
    elif fault == "empty":
        assert f"{path}:{3 if fmt == 'csv' else 4}:" in message and "empty description" in message
    else:
        assert str(path) in message and "'playing the violin'" in message and "no description" in message


def test_malformed_files(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        read_descriptions(tmp_path / "none.csv")
    with pytest.raises(InvalidInputError, match=r"d\.csv:2: 'riding a bike' has no description"):
        read_descriptions(write(tmp_path, "d.csv", "archery,arrows\nriding a bike\n"))
    with pytest.raises(InvalidInputError, match=r"d\.json:3: not valid JSON"):
        read_descriptions(write(tmp_path, "d.json", '{\n "archery": ["arrows"],\n}\n'))
    with pytest.raises(InvalidInputError, match=r"d\.json:2: class 'archery' has no description"):
        read_descriptions(write(tmp_path, "d.json", '{\n "archery": []\n}\n'))
    with pytest.raises(InvalidInputError, match="no descriptions"):
        read_descriptions(write(tmp_path, "e.csv", "class,description\n"))


def test_check_descriptions_refuses_silent_mistakes():
    assert check_descriptions({"a": ["x", "y"]}) == {"a": ("x", "y")}
    with pytest.raises(InvalidInputError, match="is the string"):
        check_descriptions({"a": "one description"})
    with pytest.raises(InvalidInputError, match="is empty"):
        check_descriptions({"a": []})
    with pytest.raises(InvalidInputError, match=r"\['a'\]\[1\]"):
        check_descriptions({"a": ["x", ""]})
    with pytest.raises(InvalidTypeError, match="mapping"):
        check_descriptions(["a", "b"])


# ----------------------------------------------------------------------------------- the world

def test_world_descriptions_are_the_names_paraphrases():
    from promptcouple.world import class_descriptions, dataset_info, dataset_names
    from promptcouple.world.vocab import MOTIONS

    for name in dataset_names():
        sets = class_descriptions(name)
        assert list(sets) == dataset_info(name)["classnames"]
        for cls, texts in sets.items():
            assert texts[0] == cls and len(set(texts)) == len(texts)
    whmdb = class_descriptions("whmdb")
    assert whmdb["red thing orbiting"] == ["red thing orbiting"] + [f"red thing {p}" for p in MOTIONS["orbit"][1]]
    assert class_descriptions("wk400")["square moving left"][1:] == [
        "square moving to the left", "square going left", "square sliding left"]
    assert all(len(t) == 1 for t in class_descriptions("wucf").values())  # no motion in the name
