"""XCLIPStyle: an X-CLIP style video model around a tiny open_clip CLIP.

Part 1 checks the model on its own (shapes, the exact no-op initialisation, message tokens that
never leak, both block layouts, gradient checkpointing); part 2 checks it inside the prompt wrapper.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hosts import make_open_clip
from torch import nn

from promptcouple.models.xclip import CrossFrameBlock, XCLIPStyle, _message_mask

B, T, K = 2, 3, 5
PATCHES = (32 // 8) ** 2  # tokens per frame besides CLS in the tiny tower
LAYOUTS = ["batch_first", "seq_first"]


def make_clip(layout: str = "batch_first", pool: str = "tok") -> nn.Module:
    return make_open_clip(seq_first=layout == "seq_first", pool=pool, layers=2)


def frames(b: int = B, t: int = T, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, t, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def class_ids(tokenizer, k: int = K) -> torch.Tensor:
    return tokenizer([f"class number {i}" for i in range(k)])


def perturb_head(model: XCLIPStyle, std: float = 0.2, seed: int = 3) -> None:
    """Move every head parameter away from its (partly zero) initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.head_parameters():
            p.add_(std * torch.randn(p.shape, generator=g))


def frame_wise(clip: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The ViFi-CLIP video feature: mean over time of per-frame image features."""
    return clip.encode_image(x.flatten(0, 1)).view(x.shape[0], x.shape[1], -1).mean(1)


# ----------------------------------------------------------------------------------- part 1


@pytest.mark.parametrize("layout", LAYOUTS)
def test_shapes(layout, tokenizer):
    model = XCLIPStyle(make_clip(layout), T).eval()
    x, ids = frames(), class_ids(tokenizer)
    with torch.no_grad():
        video, tokens = model.encode_video(x, return_tokens=True)
        assert video.shape == (B, 32)
        assert tokens.shape == (B, 1 + T * PATCHES, 32)
        torch.testing.assert_close(tokens[:, 0], video)  # the video feature rides along as token 0
        assert model.encode_video(x).shape == (B, 32)
        assert model.encode_frames(x).shape == (B, T, 32)
        text = model.encode_text(ids)
        assert text.shape == (K, 32)
        assert model.specialize_text(text, tokens).shape == (B, K, 32)
        assert model(x, ids).shape == (B, K)
    assert torch.allclose(model.encode_video(x, normalize=True).norm(dim=-1), torch.ones(B))
    assert model.logit_scale is model.clip.logit_scale


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("pool", ["tok", "avg"])
def test_zero_init_is_exactly_the_frame_wise_clip(layout, pool, tokenizer):
    clip = make_clip(layout, pool)
    reference = copy.deepcopy(clip)
    model = XCLIPStyle(clip, T).eval()
    x, ids = frames(), class_ids(tokenizer)
    with torch.no_grad():
        expected_video = frame_wise(reference, x)
        expected_text = reference.encode_text(ids)
        video, tokens = model.encode_video(x, return_tokens=True)
        # Message tokens ARE appended (see test_message_token_is_appended_and_dropped); they change
        # nothing because each starts as a clone of its frame's CLS token sharing its attention mass.
        torch.testing.assert_close(video, expected_video, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.encode_frames(x), reference.encode_image(x.flatten(0, 1)).view(B, T, -1),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(model.specialize_text(model.encode_text(ids), tokens),
                                   expected_text.expand(B, -1, -1), atol=1e-6, rtol=0)
        expected_logits = reference.logit_scale.exp() * F.normalize(expected_video, dim=-1) @ \
            F.normalize(expected_text, dim=-1).t()
        torch.testing.assert_close(model(x, ids), expected_logits, atol=1e-4, rtol=0)


def test_paper_init_and_a_trained_head_differ_from_the_frame_wise_clip(tokenizer):
    # The counterpart of the exactness test: the comparison above can fail.
    x = frames()
    clip = make_clip()
    expected = frame_wise(copy.deepcopy(clip), x).detach()
    with torch.no_grad():
        paper = XCLIPStyle(clip, T, init="xclip").eval()
        assert (paper.encode_video(x) - expected).abs().max() > 1e-3
    model = XCLIPStyle(make_clip(), T).eval()
    perturb_head(model)
    with torch.no_grad():
        video, tokens = model.encode_video(x, return_tokens=True)
        text = model.encode_text(class_ids(tokenizer))
        assert (video - expected).abs().max() > 1e-2
        assert (model.specialize_text(text, tokens) - text).abs().max() > 1e-3


def test_message_token_is_appended_and_dropped():
    model = XCLIPStyle(make_clip(), T).eval()
    perturb_head(model)
    seen = []
    for block in model.clip.visual.transformer.resblocks:
        assert isinstance(block, CrossFrameBlock)
        block.block.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    with torch.no_grad():
        per_frame, tokens = model._run_frames(frames())
    assert seen == [(B * T, 1 + PATCHES + 1, 32)] * 2  # the inner block sees CLS, patches, message
    assert tokens.shape == (B * T, PATCHES, 32)  # ...and nothing of it leaves the tower

    block = model.clip.visual.transformer.resblocks[0]
    for shape in [(B * T, 7, 32), (B * T, 1 + PATCHES, 32)]:
        x = torch.randn(shape)
        with torch.no_grad():
            assert block(x).shape == shape
            assert block(x, attn_mask=None).shape == shape
            assert block(x, None, None, None).shape == shape  # open_clip's checkpoint() call


def test_frames_communicate_within_a_video_only():
    model = XCLIPStyle(make_clip(), T).eval()
    perturb_head(model)
    x = frames()
    y = x.clone()
    y[0, 2] = torch.randn(3, 32, 32)  # change the last frame of video 0
    with torch.no_grad():
        a, b = model.encode_frames(x), model.encode_frames(y)
    assert (a[0, :2] - b[0, :2]).abs().max() > 1e-4  # other frames of video 0 heard about it
    torch.testing.assert_close(a[1], b[1], atol=1e-6, rtol=0)  # video 1 did not

    frame_wise_model = XCLIPStyle(make_clip(), T, cross_frame_layers=[]).eval()
    with torch.no_grad():
        a, b = frame_wise_model.encode_frames(x), frame_wise_model.encode_frames(y)
    torch.testing.assert_close(a[0, :2], b[0, :2], atol=1e-6, rtol=0)  # without messages: independent


def test_sequence_first_equals_batch_first(tokenizer):
    model = XCLIPStyle(make_clip(), T).eval()
    perturb_head(model)
    seq_first = copy.deepcopy(model)
    seq_first.clip.visual.transformer.batch_first = False
    for block in seq_first.clip.visual.transformer.resblocks:
        block.attn.batch_first = False  # reaches the original block through CrossFrameBlock
    assert not seq_first.clip.visual.transformer.resblocks[0].block.attn.batch_first
    x, ids = frames(), class_ids(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(seq_first(x, ids), model(x, ids), atol=1e-5, rtol=0)
        torch.testing.assert_close(seq_first.encode_video(x, return_tokens=True)[1],
                                   model.encode_video(x, return_tokens=True)[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradient_checkpointing_gives_the_same_outputs_and_gradients(layout, tokenizer):
    model = XCLIPStyle(make_clip(layout), T)
    perturb_head(model)
    model.train()
    checkpointed = copy.deepcopy(model)
    checkpointed.clip.set_grad_checkpointing(True)
    x, ids = frames(), class_ids(tokenizer)
    labels = torch.tensor([1, 3])
    results = []
    for m in (model, checkpointed):
        logits = m(x, ids)
        F.cross_entropy(logits, labels).backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    (ref_logits, ref_grads), (ck_logits, ck_grads) = results
    torch.testing.assert_close(ck_logits, ref_logits, atol=1e-6, rtol=0)
    assert ref_grads.keys() == ck_grads.keys()
    assert any(".message." in n for n in ref_grads)
    for name in ref_grads:
        torch.testing.assert_close(ck_grads[name], ref_grads[name], atol=1e-6, rtol=1e-5, msg=name)


def test_zero_initialised_head_still_learns(tokenizer):
    """Zero init must not mean zero gradient: every zero-initialised branch gets one."""
    model = XCLIPStyle(make_clip(), T)
    model.clip.requires_grad_(False)
    for _, p in model.head_parameters():
        p.requires_grad_(True)
    logits = model(frames(), class_ids(tokenizer))
    F.cross_entropy(logits, torch.tensor([0, 4])).backward()
    grads = {n: p.grad for n, p in model.head_parameters()}
    for name in ["clip.visual.transformer.resblocks.0.message.fc.weight",
                 "clip.visual.transformer.resblocks.1.message.attn.out_proj.weight",
                 "mit.proj.weight",
                 "prompt_generator.layers.0.cross_attn.out_proj.weight",
                 "prompt_generator.layers.1.mlp.3.weight"]:
        assert grads[name] is not None and grads[name].abs().max() > 0, name
    assert all(p.grad is None for p in model.clip.parameters() if not p.requires_grad)


def test_head_parameters_are_exactly_the_new_weights():
    clip = make_clip()
    original = set(dict(clip.named_parameters()))
    model = XCLIPStyle(clip, T)
    head = dict(model.head_parameters())
    renamed = {n.replace(".block.", ".") for n, _ in model.named_parameters() if n not in head}
    assert renamed == {f"clip.{n}" for n in original}  # everything else is the CLIP, reused
    assert {n.split(".")[0] for n in head} == {"clip", "mit", "prompt_generator", "token_proj"}
    assert sum(".message." in n for n in head) == 2 * len(list(model.clip.visual.transformer.resblocks[0]
                                                                 .message.parameters()))
    assert model.num_head_parameters() == sum(p.numel() for p in head.values())
    torch.testing.assert_close(model.token_proj, model.clip.visual.proj)  # starts from CLIP's projection
    assert model.token_proj.data_ptr() != model.clip.visual.proj.data_ptr()


def test_state_dict_round_trip(tokenizer):
    model = XCLIPStyle(make_clip(), T).eval()
    perturb_head(model)
    fresh = XCLIPStyle(make_open_clip(layers=2, seed=5), T).eval()
    fresh.load_state_dict(model.state_dict(), strict=True)
    x, ids = frames(), class_ids(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, ids), model(x, ids), atol=0, rtol=0)


def test_options():
    model = XCLIPStyle(make_clip(), T, mit_layers=0, prompt_layers=0, cross_frame_layers=[-1])
    blocks = model.clip.visual.transformer.resblocks
    assert not isinstance(blocks[0], CrossFrameBlock) and isinstance(blocks[1], CrossFrameBlock)
    assert model.prompt_generator is None and len(model.mit.blocks) == 0
    text, tokens = torch.randn(K, 32), torch.randn(B, 1 + T * PATCHES, 32)
    assert torch.equal(model.specialize_text(text, tokens), text.expand(B, -1, -1))


def test_message_mask_inherits_the_cls_entries():
    causal = torch.full((4, 4), float("-inf")).triu(1)
    out = _message_mask(causal, 4, torch.float32, torch.device("cpu"))
    half = torch.log(torch.tensor(0.5))
    assert out.shape == (5, 5)
    torch.testing.assert_close(out[:4, 1:4], causal[:, 1:])  # other columns untouched
    torch.testing.assert_close(out[:4, 0], causal[:, 0] + half)
    torch.testing.assert_close(out[:4, 4], causal[:, 0] + half)  # the message is masked like CLS
    torch.testing.assert_close(out[4], out[0])
    as_bool = _message_mask(torch.ones(4, 4).triu(1).bool(), 4, torch.float32, torch.device("cpu"))
    torch.testing.assert_close(as_bool, out)
    with pytest.raises(ValueError, match="does not match the 3 tokens"):
        _message_mask(causal, 3, torch.float32, torch.device("cpu"))


def test_bf16(tokenizer):
    model = XCLIPStyle(make_clip(), T).eval()
    perturb_head(model)
    x, ids = frames(), class_ids(tokenizer)
    with torch.no_grad():
        expected = model(x, ids)
        logits = model.to(torch.bfloat16)(x.bfloat16(), ids)
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), expected, atol=1.0, rtol=0.1)


def test_errors():
    model = XCLIPStyle(make_clip(), T)
    with pytest.raises(ValueError, match="not a multiple of num_frames=3"):
        model.clip.encode_image(torch.randn(4, 3, 32, 32))
    with pytest.raises(ValueError, match="built for num_frames=3, got clips of 2 frames"):
        model.encode_video(frames(t=2))
    with pytest.raises(ValueError, match=r"frames must be a tensor \(B, T, 3, H, W\)"):
        model.encode_video(torch.randn(B * T, 3, 32, 32))
    with pytest.raises(ValueError, match="tokens must be"):
        model.specialize_text(torch.randn(K, 32), torch.randn(B, 32))
    with pytest.raises(ValueError, match="text must be"):
        model.specialize_text(torch.randn(K, 16), torch.randn(B, 7, 32))
    with pytest.raises(ValueError, match="already has cross-frame blocks"):
        XCLIPStyle(model.clip, T)
    with pytest.raises(ValueError, match="num_frames must be a positive int"):
        XCLIPStyle(make_clip(), 0)
    with pytest.raises(ValueError, match="init must be"):
        XCLIPStyle(make_clip(), T, init="random")
    with pytest.raises(ValueError, match="not a block index of the 2-layer"):
        XCLIPStyle(make_clip(), T, cross_frame_layers=[2])
    with pytest.raises(TypeError, match="needs an open_clip CLIP"):
        XCLIPStyle(nn.Linear(2, 2), T)

    class NoMask(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(8)

        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="takes no attn_mask"):
        CrossFrameBlock(NoMask(), T)


# ----------------------------------------------------------------------------------- part 2
# Inside the prompt wrapper: deep vision prompts are appended at ln_pre, replaced before every
# block and stripped after the tower; message tokens are appended after them and dropped inside.

pc = pytest.importorskip("promptcouple")
CLASSES = ["archery", "bowling", "juggling balls", "rowing", "surfing"]
N_VIS = 2


def prompt_config(**kwargs):
    values = dict(n_ctx=4, n_vision_ctx=N_VIS, text_depth=2, vision_depth=2, dropout=0.0)
    values.update(kwargs)
    return pc.CouplingConfig(**values)


def randomise_prompts(wrapper, std: float = 0.5, seed: int = 4) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in wrapper.trainable_parameters():
            p.add_(std * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_wrap_and_unwrap_are_exact(layout, tokenizer):
    model = XCLIPStyle(make_clip(layout), T).eval()
    perturb_head(model)
    x, ids = frames(), tokenizer(CLASSES)
    model.requires_grad_(False)  # compare on the same attention kernel (INTEGRATION.md, numerics)
    with torch.no_grad():
        original = model(x, ids)
    model.requires_grad_(True)

    wrapper = pc.CouplingPromptWrapper(model, prompt_config(), tokenizer=tokenizer).eval()
    randomise_prompts(wrapper)
    assert wrapper.video_specific
    assert all(not p.requires_grad for _, p in model.head_parameters())  # the host, head included, is frozen
    with torch.no_grad():
        assert wrapper(x, CLASSES).shape == (B, len(CLASSES))
        assert (model(x, ids) - original).abs().max() > 1e-3  # the hooks act on the host's own forward

    assert wrapper.unwrap() is model
    assert all(p.requires_grad for p in model.parameters())
    model.requires_grad_(False)
    with torch.no_grad():
        torch.testing.assert_close(model(x, ids), original, atol=1e-6, rtol=0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_zero_init_xclip_with_prompts_equals_prompted_frame_wise_clip(layout, tokenizer):
    """Prompts and message tokens coexist: with an untouched head, the prompted X-CLIP model
    computes exactly what the same prompts give on the plain CLIP (frame-wise ViFi-CLIP pipeline)."""
    clip = make_clip(layout)
    plain = pc.CouplingPromptWrapper(copy.deepcopy(clip), prompt_config(), tokenizer=tokenizer).eval()
    xclip = pc.CouplingPromptWrapper(XCLIPStyle(clip, T), prompt_config(), tokenizer=tokenizer).eval()
    randomise_prompts(plain)
    xclip.prompts.load_state_dict(plain.prompts.state_dict())
    x = frames()
    with torch.no_grad():
        torch.testing.assert_close(xclip.encode_video(x), plain.encode_video(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(xclip(x, CLASSES), plain(x, CLASSES), atol=1e-4, rtol=0)
        with xclip.prompts_disabled():  # the prompts matter, so the equality above is not vacuous
            assert (xclip.encode_video(x) - plain.encode_video(x)).abs().max() > 1e-3


def test_prompt_tokens_sit_before_the_message_token(tokenizer):
    model = XCLIPStyle(make_clip(), T).eval()
    perturb_head(model)
    wrapper = pc.CouplingPromptWrapper(model, prompt_config(), tokenizer=tokenizer).eval()
    randomise_prompts(wrapper)
    inner_in, inner_out, outer_out = [], [], []

    def record_inner(module, args, out):
        inner_in.append(args[0])
        inner_out.append(out)

    for block in model.clip.visual.transformer.resblocks:
        block.block.register_forward_hook(record_inner)
        block.register_forward_hook(lambda m, args, out: outer_out.append(out))
    with torch.no_grad():
        wrapper.encode_video(frames())
    length = 1 + PATCHES + N_VIS
    for layer in range(2):
        assert inner_in[layer].shape == (B * T, length + 1, 32)  # CLS, patches, prompts, message
        assert outer_out[layer].shape == (B * T, length, 32)
        torch.testing.assert_close(outer_out[layer], inner_out[layer][:, :length], atol=0, rtol=0)
        assert (inner_in[layer][:, -1] - inner_in[layer][:, 0]).abs().max() > 1e-3  # a real message, not CLS
    deep = wrapper.prompts.vision_deep[0]  # layer 1's own prompt tokens, right before the message
    torch.testing.assert_close(inner_in[1][:, -1 - N_VIS:-1], deep.expand(B * T, -1, -1), atol=0, rtol=0)


def test_prompt_generator_never_sees_prompt_tokens(tokenizer):
    model = XCLIPStyle(make_clip(), T)
    wrapper = pc.CouplingPromptWrapper(model, prompt_config(), tokenizer=tokenizer)
    counts = []
    model.prompt_generator.register_forward_hook(lambda m, args, out: counts.append(args[1].shape[1]))
    wrapper(frames(), CLASSES)
    video, tokens = wrapper.encode_video(frames(), return_tokens=True)
    assert counts == [T * PATCHES]
    assert tokens.shape == (B, 1 + T * PATCHES, 32)


@pytest.mark.parametrize("train_head", [False, True])
def test_training_prompts_and_optionally_the_head(train_head, tokenizer):
    model = XCLIPStyle(make_clip(), T)
    wrapper = pc.CouplingPromptWrapper(model, prompt_config(), tokenizer=tokenizer).train()
    params = wrapper.trainable_parameters()
    if train_head:
        for _, p in model.head_parameters():
            p.requires_grad_(True)
        params += [p for _, p in model.head_parameters()]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(params, lr=0.1)
    loss = F.cross_entropy(wrapper(frames(), CLASSES), torch.tensor([0, 3]))
    loss.backward()
    optimizer.step()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in wrapper.trainable_parameters())
    head = dict(model.head_parameters())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= set(head)  # the CLIP's own weights never move
    assert bool(changed) == train_head
    if train_head:
        assert "mit.proj.weight" in changed and "clip.visual.transformer.resblocks.1.message.fc.weight" in changed


def test_wrapper_gradient_checkpointing_matches(tokenizer):
    grads = []
    for checkpointing in (False, True):
        model = XCLIPStyle(make_clip(), T)
        perturb_head(model)
        model.clip.set_grad_checkpointing(checkpointing)
        wrapper = pc.CouplingPromptWrapper(model, prompt_config(), tokenizer=tokenizer).train()
        randomise_prompts(wrapper)
        F.cross_entropy(wrapper(frames(), CLASSES), torch.tensor([0, 3])).backward()
        grads.append({n: p.grad.clone() for n, p in wrapper.named_trainable_parameters()})
    assert grads[0].keys() == grads[1].keys() and any("vision" in n for n in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


def test_anchor_regulariser_accepts_video_specific_text(tokenizer):
    model = XCLIPStyle(make_clip(), T)
    perturb_head(model)
    wrapper = pc.CouplingPromptWrapper(model, prompt_config(), tokenizer=tokenizer).train()
    randomise_prompts(wrapper)
    for mode, kwargs in [("consistency", {}), ("negative", {"labels": torch.tensor([0, 1])})]:
        reg = pc.AnchorRegularizer(wrapper, ["knitting", "whistling"], mode=mode, classnames=CLASSES)
        loss = reg(frames(seed=7), **kwargs)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
    assert wrapper.prompts.vision_ctx.grad.abs().max() > 0


def test_example_runs_and_saves_prompts(tmp_path):
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "xclip_style.py")
    spec = importlib.util.spec_from_file_location("xclip_style_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "prompts.safetensors"
    accuracy = example.main(["--steps", "2", "--batch", "2", "--eval-clips", "4", "--save", str(out),
                             "--threads", str(torch.get_num_threads())])
    assert 0.0 <= accuracy <= 1.0
    loaded = pc.read_prompt_file(out)
    assert loaded.config.n_vision_ctx == 4
