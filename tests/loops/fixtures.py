"""Tiny hosts, data, a hard prompt and anchor clips for the drop-in tests, and the three methods."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import promptcouple as pc
from promptcouple.models.openai_clip import CLIP
from promptcouple.train import write_clip_file

WIDTH, IMAGE, PATCH, CONTEXT, VOCAB, LAYERS, FRAMES = 32, 32, 8, 32, 49408, 3, 2
ARCH = "ViT-T/8"  # the tiny architecture's name in the test clip package
BASE = ["archery", "bowling", "cooking", "dancing", "fencing", "juggling"]
NOVEL = ["kayaking", "rowing", "surfing", "skiing", "swimming"]
ANCHOR_LABELS = ["clapping", "waving"]
PROMPTS = dict(n_ctx=4, text_depth=2, n_vision_ctx=4, vision_depth=2)
METHODS = ("ivlp", "ga2", "ga2_anchors")


def step_atol(method: str) -> float:
    """Tolerance of the in-loop logits against the wrapper called directly on the same batch.

    Without anchors both run the same batch through the same kernels (1e-6). With anchors the
    anchor clips join the step's vision pass, so the image tower sees a larger batch and the CPU
    matmuls may block it differently: float-level differences of a few 1e-7 per feature, about
    1e-6 on logits scaled by 100. 1e-5 still catches any prompt or class mix-up (those move logits
    by more than 1e-2).
    """
    return 1e-5 if method == "ga2_anchors" else 1e-6
PKG = Path(__file__).resolve().parent / "vifi_clip_pkg"


def tiny_clip(seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(WIDTH, IMAGE, LAYERS, WIDTH, PATCH, CONTEXT, VOCAB, WIDTH, 2, LAYERS).eval()


def tiny_xclip(seed: int = 0):
    from zoo.videox import build_xclip

    return build_xclip(seed)


def tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=CONTEXT)


def their_clip_package(weights: Path):
    """Make ``from clip import clip`` find the small model of ViFi-CLIP's package, with ``ARCH`` -> ``weights``."""
    if str(PKG) not in sys.path:
        sys.path.insert(0, str(PKG))
    for name in [m for m in sys.modules if m == "clip" or m.startswith("clip.")]:
        del sys.modules[name]
    from clip import clip

    clip._MODELS[ARCH] = str(weights)
    return clip


def write_assets(d: Path) -> dict:
    """The OpenAI-layout weights file, a hard prompt (a prompt file) and anchor clips in ``d``."""
    torch.save(tiny_clip(0).state_dict(), d / "clip.pt")
    donor = pc.CouplingPromptWrapper(tiny_clip(1), pc.CouplingConfig(n_ctx=PROMPTS["n_ctx"], text_depth=1,
                                                                     n_vision_ctx=0, vision_depth=0))
    with torch.no_grad():
        donor.prompts.ctx.normal_(0, 0.05)
    donor.save_prompts(d / "hard.safetensors")
    g = torch.Generator().manual_seed(3)
    write_clip_file(d / "anchors.safetensors", torch.randn(4, FRAMES, 3, IMAGE, IMAGE, generator=g), [0, 1, 0, 1],
                    ANCHOR_LABELS)
    return {"weights": d / "clip.pt", "hard": d / "hard.safetensors", "anchors": d / "anchors.safetensors"}


def settings(method: str, assets: dict) -> dict:
    if method == "ivlp":
        return {}
    out = {"hard_prompt": str(assets["hard"])}
    if method == "ga2_anchors":
        out["anchors"] = {"clips": str(assets["anchors"]), "batch_size": 1}
    return out


def batches(n: int, batch: int, classes: int, *, views: int = 1, seed: int = 0) -> list[dict]:
    """Their loaders' batches: ``imgs`` (B, views*T, 3, H, W), ``label`` (B,)."""
    g = torch.Generator().manual_seed(seed)
    return [{"imgs": torch.randn(batch, views * FRAMES, 3, IMAGE, IMAGE, generator=g),
             "label": torch.randint(0, classes, (batch,), generator=g)} for _ in range(n)]


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}
