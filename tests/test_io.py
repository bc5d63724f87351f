"""Prompt files and reference-checkpoint conversion: exact round trips, clear errors, atomic writes."""

import types

import pytest
import torch

import promptcouple as pc
from promptcouple.cli import main as cli
from hosts import make_host

SMALL = dict(n_ctx=4, n_vision_ctx=3, text_depth=3, vision_depth=3)
CLASSES = ["archery", "yoga"]


def trained_wrapper(tokenizer, seed=0, host=None, **cfg):
    wrapper = pc.CouplingPromptWrapper(host or make_host("open_clip", seed=seed),
                                       pc.CouplingConfig(**{**SMALL, **cfg}), hard_prompts=torch.randn(cfg.get("n_ctx", 4), 32),
                                       tokenizer=tokenizer).eval()
    with torch.no_grad():
        for p in wrapper.trainable_parameters():
            p.add_(torch.randn_like(p))
    return wrapper


def test_save_load_round_trip_is_exact(tmp_path, tokenizer):
    wrapper = trained_wrapper(tokenizer)
    path = tmp_path / "p.safetensors"
    wrapper.save_prompts(path)
    pf = pc.read_prompt_file(path)
    assert pf.config == wrapper.config and pf.coupled
    assert pf.metadata["format"] == "promptcouple.prompts" and pf.metadata["text_width"] == "32"
    assert sorted(pf.tensors) == sorted(["text.ctx", "text.deep.1", "text.deep.2", "text.hard", "coupling.weight",
                                        "coupling.bias", "vision.ctx", "vision.deep.1", "vision.deep.2"])
    clone = pc.CouplingPromptWrapper.from_pretrained(make_host("open_clip"), path, tokenizer=tokenizer).eval()
    for (name, a), (_, b) in zip(wrapper.prompts.state_dict().items(), clone.prompts.state_dict().items()):
        assert torch.equal(a, b), name
    x = torch.randn(1, 2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(wrapper(x, CLASSES), clone(x, CLASSES))


def test_hard_prompt_from_a_prompt_file_is_its_effective_context(tmp_path, tokenizer):
    source = trained_wrapper(tokenizer)
    source.save_prompts(tmp_path / "k400.safetensors")
    wrapper = pc.CouplingPromptWrapper(make_host("open_clip"), pc.CouplingConfig(**SMALL),
                                       hard_prompts=tmp_path / "k400.safetensors", tokenizer=tokenizer)
    torch.testing.assert_close(wrapper.prompts.hard, source.prompts.effective_context())
    assert "prompts.hard" in wrapper.state_dict()  # a persistent buffer: a saved wrapper is self-contained


def test_wrong_shapes_and_keys_are_named(tmp_path, tokenizer):
    path = tmp_path / "p.safetensors"
    trained_wrapper(tokenizer).save_prompts(path)
    wide = pc.CouplingPromptWrapper(  # another backbone width
        __import__("open_clip").CLIP(embed_dim=32, vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=3,
                                                                    head_width=16),
                                     text_cfg=dict(context_length=32, width=64, heads=2, layers=3)),
        pc.CouplingConfig(**SMALL), hard_prompts=torch.randn(4, 64), tokenizer=tokenizer)
    before = wide.prompts.ctx.clone()
    with pytest.raises(ValueError, match=r"key 'text.ctx' has shape \(4, 32\), this wrapper expects \(4, 64\)"):
        wide.load_prompts(path)
    assert torch.equal(wide.prompts.ctx, before)  # nothing loaded halfway
    other_n = trained_wrapper(tokenizer, n_ctx=6)
    with pytest.raises(ValueError, match=r"shape \(4, 32\), this wrapper expects \(6, 32\)"):
        other_n.load_prompts(path)
    shallow = pc.CouplingPromptWrapper(make_host("open_clip"), pc.CouplingConfig(**{**SMALL, "text_depth": 2}),
                                       hard_prompts=torch.randn(4, 32), tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"unexpected keys \['text.deep.2'\]"):
        shallow.load_prompts(path)
    uncoupled = pc.CouplingPromptWrapper(make_host("open_clip"), pc.CouplingConfig(**SMALL), tokenizer=tokenizer)
    with pytest.raises(ValueError, match="trained with a hard prompt"):
        uncoupled.load_prompts(path)


def test_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no prompt file"):
        pc.read_prompt_file(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        pc.read_prompt_file(junk)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a promptcouple prompt file"):
        pc.read_prompt_file(tmp_path / "other.safetensors")


def test_truncated_file_and_failed_write_leave_nothing_half_done(tmp_path, tokenizer, monkeypatch):
    wrapper = trained_wrapper(tokenizer)
    path = tmp_path / "p.safetensors"
    wrapper.save_prompts(path)
    good = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="truncated"):
        pc.read_prompt_file(tmp_path / "cut.safetensors")

    import promptcouple.fileio

    def crash(fd):  # the data is written, then the disk fills up before it reaches the platter
        raise OSError("disk full")

    monkeypatch.setattr(promptcouple.fileio.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        wrapper.save_prompts(path)
    assert path.read_bytes() == good  # the previous file is intact...
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.safetensors", "p.safetensors"]  # ...no temp left


# ------------------------------------------------------------------------------ conversion


def reference_state(wrapper, style):
    """A state dict laid out as GA2-CLIP (style 'ga2') or ViFi-CLIP ('vifi') save it."""
    p = wrapper.prompts
    enc_v, enc_t = ("visual", "") if style == "ga2" else ("image_encoder", "text_encoder.")
    state = {("prompt_learner.ctx_VPT" if style == "ga2" else "prompt_learner.ctx"): p.ctx,
             f"{enc_v}.VPT": p.vision_ctx,
             f"{enc_v}.conv1.weight": torch.zeros(1),  # backbone keys are ignored
             f"{enc_t}transformer.resblocks.0.attn.in_proj_weight": torch.zeros(1)}
    for i, t in enumerate(p.text_deep, start=1):
        state[f"{enc_t}transformer.resblocks.{i}.VPT_shallow"] = t
    for i, t in enumerate(p.vision_deep, start=1):
        state[f"{enc_v}.transformer.resblocks.{i}.VPT_shallow"] = t
    if style == "ga2":
        state["prompt_learner.proj_b2n_VPT.0.weight"] = p.coupling.weight
        state["prompt_learner.proj_b2n_VPT.0.bias"] = p.coupling.bias
    return {f"module.{k}": v.detach().clone() for k, v in state.items()}


def test_convert_ga2_checkpoint_round_trip(tmp_path, tokenizer):
    wrapper = trained_wrapper(tokenizer)
    src = tmp_path / "ga2.pth"
    torch.save({"model_state_dict": reference_state(wrapper, "ga2"), "epoch": 11}, src)
    dst = tmp_path / "ga2.safetensors"
    assert cli(["convert", str(src), str(dst)]) == 0
    pf = pc.read_prompt_file(dst)
    assert pf.config == wrapper.config and pf.coupled and "text.hard" not in pf.tensors
    with pytest.raises(ValueError, match="pass hard_prompts="):
        pc.CouplingPromptWrapper.from_pretrained(make_host("open_clip"), dst, tokenizer=tokenizer)
    clone = pc.CouplingPromptWrapper.from_pretrained(make_host("open_clip"), dst, tokenizer=tokenizer,
                                                     hard_prompts=wrapper.prompts.hard)
    for (name, a), (_, b) in zip(wrapper.prompts.state_dict().items(), clone.prompts.state_dict().items()):
        assert torch.equal(a, b), name
    # with the hard prompt stored, the file is self-contained
    complete = pc.convert_checkpoint(src, tmp_path / "full.safetensors", hard_prompts=wrapper.prompts.hard)
    assert torch.equal(complete.tensors["text.hard"], wrapper.prompts.hard)
    pc.CouplingPromptWrapper.from_pretrained(make_host("open_clip"), tmp_path / "full.safetensors", tokenizer=tokenizer)


def test_convert_vifi_checkpoint_needs_trust_for_pickles(tmp_path, tokenizer):
    wrapper = pc.CouplingPromptWrapper(make_host("open_clip"), pc.CouplingConfig(**SMALL), tokenizer=tokenizer)
    src = tmp_path / "vifi.pth"
    torch.save({"model": reference_state(wrapper, "vifi"), "config": types.SimpleNamespace(lr=1e-3)}, src)
    with pytest.raises(ValueError, match="pickled Python objects.*trust"):
        pc.convert_checkpoint(src)
    pf = pc.convert_checkpoint(src, trust=True)
    assert pf.metadata["source_format"] == "vifi-clip" and not pf.coupled
    assert pf.config.text_depth == 3 and pf.config.vision_depth == 3 and pf.config.n_vision_ctx == 3
    fresh = pc.CouplingPromptWrapper(make_host("open_clip"), pf.config, tokenizer=tokenizer)
    fresh.load_prompts(pf)
    for (name, a), (_, b) in zip(wrapper.prompts.state_dict().items(), fresh.prompts.state_dict().items()):
        assert torch.equal(a, b), name


def test_convert_rejects_unknown_formats(tmp_path):
    src = tmp_path / "x.pth"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, src)
    with pytest.raises(ValueError, match="unknown checkpoint format: none of the marker keys"):
        pc.convert_checkpoint(src)
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        pc.convert_checkpoint(tmp_path / "bad.pth")


def test_inspect_command(tmp_path, tokenizer, capsys):
    trained_wrapper(tokenizer).save_prompts(tmp_path / "p.safetensors")
    assert cli(["inspect", str(tmp_path / "p.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "coupling.weight" in out and "(32, 64)" in out and "n_ctx=4" in out
