"""``from clip import clip`` as ViFi-CLIP has it: the architecture name maps to a file (here a local
path the test sets), ``build_model`` reads the sizes from the state dict and takes ``design_details``."""

from __future__ import annotations

import os

import torch

from promptcouple.models.openai_clip import CLIP

_MODELS: dict[str, str] = {}


def _download(url: str) -> str:
    if not os.path.isfile(url):
        raise RuntimeError(f"test clip package: no file {url}")
    return url


def build_model(state_dict: dict, design_details: dict) -> CLIP:
    if design_details["vision_depth"] or design_details["language_depth"]:
        raise AssertionError("the drop-in must build the CLIP without prompts of its own")
    width = state_dict["visual.conv1.weight"].shape[0]
    patch = state_dict["visual.conv1.weight"].shape[-1]
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    layers = len({k.split(".")[3] for k in state_dict if k.startswith("visual.transformer.resblocks.")})
    text_layers = len({k.split(".")[2] for k in state_dict if k.startswith("transformer.resblocks.")})
    model = CLIP(state_dict["text_projection"].shape[1], patch * grid, layers, width, patch,
                 state_dict["positional_embedding"].shape[0], state_dict["token_embedding.weight"].shape[0],
                 state_dict["ln_final.weight"].shape[0], 2, text_layers)
    model.load_state_dict(state_dict)
    return model.half()  # their convert_weights: the caller makes it fp32 again
