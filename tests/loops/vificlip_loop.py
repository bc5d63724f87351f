"""ViFi-CLIP's ``main.py`` in small: its config keys, ``returnCLIP``, AdamW over ``model.parameters()``,
DDP, checkpoints (its ``load_checkpoint`` deletes the class-name dependent prompt keys) and the
``model(images)`` call."""

from __future__ import annotations

import torch

from loops.common import VIFI_DROPPED, Cfg, load_checkpoint


def vifi_config(arch: str, num_frames: int, num_classes: int, *, n_ctx=4, text_depth=2, n_vision=4,
                vision_depth=2, ctx_init="a photo of a", output="", resume=None, zs_eval=False,
                prompt_model=True, lr=4e-2, accumulation=1):
    """Their config's keys (defaults of utils/config.py, overridden as a prompting YAML does)."""
    cfg = Cfg({
        "DATA": {"NUM_FRAMES": num_frames, "NUM_CLASSES": num_classes, "INPUT_SIZE": 32},
        "MODEL": {"ARCH": arch, "RESUME": resume, "FIX_TEXT": True, "PRETRAINED": None},
        "TRAINER": {"ViFi_CLIP": {"PROMPT_MODEL": prompt_model, "N_CTX_VISION": n_vision, "N_CTX_TEXT": n_ctx,
                                  "CTX_INIT": ctx_init, "PROMPT_DEPTH_VISION": vision_depth,
                                  "PROMPT_DEPTH_TEXT": text_depth, "USE": "both", "ZS_EVAL": zs_eval}},
        "TRAIN": {"EPOCHS": 2, "LR": lr, "WEIGHT_DECAY": 0.001, "ACCUMULATION_STEPS": accumulation,
                  "OPT_LEVEL": "O1", "AUTO_RESUME": True},
        "TEST": {"NUM_CLIP": 1, "NUM_CROP": 1, "ONLY_TEST": False},
        "OUTPUT": output, "SAVE_FREQ": 1,
    })
    cfg.freeze()
    return cfg


def build_optimizer(config, model):
    model = model.module if hasattr(model, "module") else model
    return torch.optim.AdamW(model.parameters(), lr=config.TRAIN.LR, weight_decay=config.TRAIN.WEIGHT_DECAY,
                             betas=(0.9, 0.98), eps=1e-8)


def call(model, images):
    return model(images)


def resume(config, ddp_model, optimizer, scheduler):
    """Their resume: into the DDP model (keys with ``module.``); epochs restart after a pre-trained load."""
    start, best, msg = load_checkpoint(config, ddp_model, optimizer, scheduler, dropped=VIFI_DROPPED)
    if start > 1:
        start, best = 0, 0.0
    return start, best, msg
