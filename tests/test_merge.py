"""Merged prompts: the coupled context computed once gives the coupled wrapper's logits, in a plain file."""

import json

import pytest
import torch

import promptcouple as pc
from promptcouple import hub
from promptcouple.cli import main as cli
from promptcouple.merge import merged
from promptcouple.train.run_info import sha256_of
from hosts import make_host
from test_io import CLASSES, reference_state, trained_wrapper

HOSTS = ["open_clip", "openai"]


@pytest.mark.parametrize("host", HOSTS)
def test_merged_file_gives_the_coupled_logits_without_coupling_tensors(tmp_path, tokenizer, host, capsys):
    wrapper = trained_wrapper(tokenizer, host=make_host(host))
    src, dst = tmp_path / "coupled.safetensors", tmp_path / "merged.safetensors"
    wrapper.save_prompts(src)
    assert cli(["merge", str(src), str(dst)]) == 0
    assert "coupled context merged" in capsys.readouterr().out
    pf = pc.read_prompt_file(dst)
    assert not pf.coupled and "text.hard" not in pf.tensors and not any(k.startswith("coupling.") for k in pf.tensors)
    record = json.loads(pf.metadata["merged_from"])
    assert record == {"source": str(src), "sha256": sha256_of(src), "coupled": True}

    # Loaded into a fresh wrapper of the same backbone: IVLP-shaped (no hard prompt), same logits.
    plain = pc.CouplingPromptWrapper.from_pretrained(make_host(host), dst, tokenizer=tokenizer).eval()
    assert not plain.prompts.coupled
    x = torch.randn(2, 2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x, CLASSES), wrapper(x, CLASSES), atol=1e-6, rtol=0)
    # The same from a wrapper in memory, and from the hub module's folder layout.
    in_memory = wrapper.merged()
    assert torch.equal(merged(wrapper).tensors["text.ctx"], in_memory.tensors["text.ctx"])
    assert torch.equal(in_memory.tensors["text.ctx"], pf.tensors["text.ctx"])
    hub.save_pretrained(in_memory, tmp_path / "folder")
    again = pc.read_prompt_file(tmp_path / "folder" / "prompts.safetensors")
    assert "merged" in (tmp_path / "folder" / "README.md").read_text() and not again.coupled
    assert json.loads(again.metadata["merged_from"])["coupled"] is True


def test_a_converted_checkpoint_merges_with_its_hard_prompt(tmp_path, tokenizer):
    wrapper = trained_wrapper(tokenizer)
    torch.save({"model_state_dict": reference_state(wrapper, "ga2")}, tmp_path / "ga2.pth")
    pc.convert_checkpoint(tmp_path / "ga2.pth", tmp_path / "ga2.safetensors")
    hard = tmp_path / "hard.safetensors"
    pc.CouplingPromptWrapper(make_host("open_clip"), pc.CouplingConfig(n_ctx=4, text_depth=1, n_vision_ctx=0,
                                                                        vision_depth=0), tokenizer=tokenizer).save_prompts(hard)
    with pytest.raises(pc.PromptFileError, match="--hard-prompt"):
        cli(["--debug", "merge", str(tmp_path / "ga2.safetensors"), str(tmp_path / "m.safetensors")])
    hard_ctx = pc.read_prompt_file(hard).tensors["text.ctx"]
    wrapper.prompts.hard.copy_(hard_ctx)  # the run the checkpoint came from was coupled to this hard prompt
    assert cli(["merge", str(tmp_path / "ga2.safetensors"), str(tmp_path / "m.safetensors"),
                "--hard-prompt", str(hard)]) == 0
    plain = pc.CouplingPromptWrapper.from_pretrained(make_host("open_clip"), tmp_path / "m.safetensors",
                                                     tokenizer=tokenizer).eval()
    x = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x, CLASSES), wrapper.eval()(x, CLASSES), atol=1e-6, rtol=0)
    assert cli(["merge", str(tmp_path / "m.safetensors"), str(tmp_path / "m.safetensors")]) == 2  # would replace IN
