"""The settings file of the drop-ins (``PROMPTCOUPLE_CONFIG``): the example in docs/INTEGRATIONS.md
loads, paths resolve against the file, and mistakes are errors that name the file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import promptcouple as pc
from promptcouple.errors import ConfigError, MissingFileError
from promptcouple.integrations import ENV_VAR, load_settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "INTEGRATIONS.md"


def test_the_documented_settings_file_loads(tmp_path):
    block = re.search(r"^```\n(# ga2_hmdb\.yaml\n.*?)^```", DOC.read_text(), re.M | re.S).group(1)
    path = tmp_path / "ga2_hmdb.yaml"
    path.write_text(block)
    s = load_settings(path)
    assert s.coupled and s.hard_prompt == str(tmp_path / "k400_base.safetensors")
    assert s.anchors.mode == "consistency" and s.anchors.batch_size == 1 and s.dropout == 0.5
    assert s.anchors.root == str(tmp_path / "gaa" / "video")
    # the X-CLIP-only prompts: line, uncommented
    path.write_text(block.replace("# prompts:", "prompts:"))
    config = load_settings(path).coupling_config(pc.CouplingConfig())
    assert (config.n_ctx, config.text_depth, config.n_vision_ctx, config.vision_depth) == (16, 9, 16, 9)


def test_settings_mistakes_name_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert load_settings(None).hard_prompt is None and load_settings(None).anchors is None
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "absent.yaml"))
    with pytest.raises(MissingFileError, match="absent.yaml"):
        load_settings(None)
    bad = tmp_path / "bad.yaml"
    for text, match in [("anchors: {list: a.txt}\n", "anchors.labels"),
                        ("anchors: {clips: a.safetensors, mode: reference}\n", "no gradient"),
                        ("anchors: {clips: a.safetensors, size: 3}\n", "unknown keys"),
                        ("dropout: 1.5\n", "dropout"),
                        ("prompts: {n_ctxx: 3}\n", None)]:
        bad.write_text(text)
        if match is None:
            with pytest.raises(ConfigError, match="n_ctxx"):
                load_settings(bad).coupling_config(pc.CouplingConfig())
            continue
        with pytest.raises(ConfigError, match=match) as err:
            load_settings(bad)
        assert "bad.yaml" in str(err.value)
