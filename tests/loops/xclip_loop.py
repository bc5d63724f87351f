"""X-CLIP's ``main.py`` in small: ``build_optimizer`` with ``FIX_TEXT`` and its name-keyword groups,
``generate_text`` of the bare class names, ``model(images, texts)``, and checkpoints through
``model.module`` with ``strict=False``."""

from __future__ import annotations

import torch

from loops.common import Cfg, load_checkpoint


def xclip_config(num_frames: int, num_classes: int, *, output="", resume=None, lr=8e-6, accumulation=1):
    cfg = Cfg({
        "DATA": {"NUM_FRAMES": num_frames, "NUM_CLASSES": num_classes, "INPUT_SIZE": 32},
        "MODEL": {"ARCH": "ViT-T/8", "RESUME": resume, "FIX_TEXT": True, "PRETRAINED": None},
        "TRAIN": {"EPOCHS": 2, "LR": lr, "WEIGHT_DECAY": 0.001, "ACCUMULATION_STEPS": accumulation,
                  "OPT_LEVEL": "O1", "AUTO_RESUME": True},
        "TEST": {"NUM_CLIP": 1, "NUM_CROP": 1, "ONLY_TEST": False},
        "OUTPUT": output, "SAVE_FREQ": 1,
    })
    cfg.freeze()
    return cfg


def _has(name, keywords):
    return any(k in name for k in keywords)


def fix_text(model):
    """FIX_TEXT: every parameter whose name holds none of these keywords stops training, silently."""
    for name, param in model.named_parameters():
        if not _has(name, ("visual.", "mit", "prompts")):
            param.requires_grad = False


def _decay_groups(model, lr, wd, skip_keywords, have=(), not_have=()):
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad or (have and not _has(name, have)) or (not_have and _has(name, not_have)):
            continue
        if param.ndim == 1 or name.endswith(".bias") or _has(name, skip_keywords):
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": wd, "lr": lr}, {"params": no_decay, "weight_decay": 0.0, "lr": lr}]


GROUPS = ("clip", "mit", "prompts", "message_")  # the order build_optimizer concatenates them in


def build_optimizer(config, model):
    """Their optimizer: the base LR for names with none of prompts/mit/message_, 10x for each keyword.
    A name in two groups makes AdamW raise."""
    model = model.module if hasattr(model, "module") else model
    if config.MODEL.FIX_TEXT:
        fix_text(model)
    skip = model.no_weight_decay_keywords() if hasattr(model, "no_weight_decay_keywords") else ()
    lr, wd = config.TRAIN.LR, config.TRAIN.WEIGHT_DECAY
    groups = (_decay_groups(model, lr, wd, skip, not_have=("prompts", "mit", "message_"))
              + _decay_groups(model, lr * 10, wd, skip, have=("mit",))
              + _decay_groups(model, lr * 10, wd, skip, have=("prompts",))
              + _decay_groups(model, lr * 10, wd, skip, have=("message_",)))
    return torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-8)


def generate_text(class_names, tokenizer):
    """Their text labels: the CLIP tokenization of each bare class name, (K, context length)."""
    return torch.cat([tokenizer([name]) for name in class_names])


def make_call(texts):
    def call(model, images):
        return model(images, texts)

    return call


def resume(config, ddp_model, optimizer, scheduler):
    inner = ddp_model.module if hasattr(ddp_model, "module") else ddp_model
    return load_checkpoint(config, inner, optimizer, scheduler)
