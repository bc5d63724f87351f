"""What ViFi-CLIP's and X-CLIP's ``main.py`` / ``utils/`` share (the two are near twins): a yacs-like
config, the cosine scheduler's interface, checkpoint saving, loading and auto-resume, the training
epoch with gradient accumulation and loss scaling, and multi-view validation."""

from __future__ import annotations

import contextlib
import math
import os
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from promptcouple.integrations import anchor_loss


class Cfg(dict):
    """yacs ``CfgNode``'s behaviour that matters here: attribute access, freeze/defrost, and it
    is a Python object pickled into every checkpoint (``torch.load``'s safe mode refuses it)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for key, value in list(self.items()):
            if isinstance(value, dict) and not isinstance(value, Cfg):
                self[key] = Cfg(value)

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        if self.get("_frozen"):
            raise AttributeError(f"config is frozen: cannot set {name}")
        self[name] = value

    def freeze(self):
        dict.__setitem__(self, "_frozen", True)

    def defrost(self):
        dict.__setitem__(self, "_frozen", False)


class CosineScheduler:
    """timm's CosineLRScheduler as their loops use it: ``step_update(step)`` per step, a state dict."""

    def __init__(self, optimizer, total_steps: int, warmup: int = 0):
        self.optimizer, self.total, self.warmup = optimizer, max(1, total_steps), warmup
        self.base = [g["lr"] for g in optimizer.param_groups]
        self.last = -1

    def step_update(self, step: int) -> None:
        self.last = step
        frac = 0.5 * (1 + math.cos(math.pi * min(step, self.total) / self.total))
        for group, base in zip(self.optimizer.param_groups, self.base):
            group["lr"] = base * (step / self.warmup if step < self.warmup else frac)

    def state_dict(self):
        return {"last": self.last, "base": self.base}

    def load_state_dict(self, state):
        self.last, self.base = state["last"], state["base"]


def epoch_saving(config, epoch, model, max_accuracy, optimizer, lr_scheduler, working_dir, is_best):
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "lr_scheduler": lr_scheduler.state_dict(), "max_accuracy": max_accuracy, "epoch": epoch,
             "config": config}
    path = os.path.join(working_dir, f"ckpt_epoch_{epoch}.pth")
    torch.save(state, path)
    if is_best:
        torch.save(state, os.path.join(working_dir, "best.pth"))
    return path


# ViFi-CLIP's load_checkpoint deletes these (class-name dependent) keys before loading; X-CLIP's deletes none.
VIFI_DROPPED = ("module.prompt_learner.token_prefix", "module.prompt_learner.token_suffix",
                "module.prompt_learner.complete_text_embeddings")


def load_checkpoint(config, model, optimizer, lr_scheduler, dropped=()):
    """Their load: the whole pickled checkpoint (``weights_only=False``, as ``torch.load`` defaulted to
    before 2.6), a few keys deleted, ``strict=False``; the optimizer and scheduler where they fit."""
    if not os.path.isfile(config.MODEL.RESUME):
        return 0, 0.0, None
    checkpoint = torch.load(config.MODEL.RESUME, map_location="cpu", weights_only=False)
    state = checkpoint["model"]
    for key in dropped:
        state.pop(key, None)
    msg = model.load_state_dict(state, strict=False)
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
        lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        return checkpoint["epoch"] + 1, checkpoint["max_accuracy"], msg
    except Exception:  # as theirs: a checkpoint of another optimizer restarts the epochs
        return 0, 0.0, msg


def auto_resume_helper(output_dir):
    found = [os.path.join(output_dir, f) for f in os.listdir(output_dir) if f.endswith("pth")]
    return max(found, key=os.path.getmtime) if found else None


def train_one_epoch(epoch, model, criterion, optimizer, lr_scheduler, loader, config, call: Callable,
                    amp_dtype: Optional[torch.dtype] = None, scaler=None, probe: Optional[Callable] = None):
    """Their ``train_one_epoch``, with the one added anchor line; ``call(model, images)`` is
    ``model(images)`` (ViFi-CLIP) or ``model(images, texts)`` (X-CLIP); ``amp_dtype`` / ``scaler``
    stand for apex O1 (autocast and dynamic loss scaling). ``probe(step, images, output)`` lets a
    test look at each step's logits; each step's forward is seeded so the probe can replay it."""
    model.train()
    optimizer.zero_grad()
    steps, accumulate, losses = len(loader), config.TRAIN.ACCUMULATION_STEPS, []
    for idx, batch in enumerate(loader):
        images = batch["imgs"]
        label = batch["label"].reshape(-1)
        images = images.view((-1, config.DATA.NUM_FRAMES, 3) + images.size()[-2:])
        autocast = torch.autocast("cpu", dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
        torch.manual_seed(1000 * epoch + idx)
        with autocast:
            output = call(model, images)
            total_loss = criterion(output, label) + anchor_loss(model)  # <- the drop-in's one changed line
        if probe is not None:
            probe(1000 * epoch + idx, images, output)
        total_loss = total_loss / accumulate
        if accumulate == 1:
            optimizer.zero_grad()
        if scaler is not None:
            scaler.scale(total_loss).backward()
        else:
            total_loss.backward()
        if accumulate == 1 or (idx + 1) % accumulate == 0:
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad()
            lr_scheduler.step_update(epoch * steps + idx)
        losses.append(float(total_loss.detach()))
    return losses


@torch.no_grad()
def validate(loader, model, config, call: Callable, amp_dtype: Optional[torch.dtype] = None):
    """Their ``validate``: each video's views through the model, softmax summed, top-1 and top-5.
    Returns the top-1 accuracy and the summed similarities of every video (for the tests)."""
    model.eval()
    correct, count, sims = 0, 0, []
    for batch in loader:
        frames, label = batch["imgs"], batch["label"].reshape(-1)
        b, tn, c, h, w = frames.shape
        t = config.DATA.NUM_FRAMES
        n = tn // t
        frames = frames.view(b, n, t, c, h, w)
        total = torch.zeros(b, config.DATA.NUM_CLASSES)
        for i in range(n):
            autocast = torch.autocast("cpu", dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
            with autocast:
                output = call(model, frames[:, i])
            total += F.softmax(output.view(b, -1).float(), dim=-1)
        top1 = total.topk(1, dim=-1).indices[:, 0]
        total.topk(5, dim=-1)  # their top-5: needs at least 5 classes
        correct += int((top1 == label).sum())
        count += b
        sims.append(total)
    return 100.0 * correct / count, torch.cat(sims)
