"""The paper's own protocol: a K400-fine-tuned backbone under every method (``--protocol k400-first``).

GA2-CLIP's HMDB, UCF and SSv2 base-to-novel runs start from a CLIP fine-tuned on all of K400
(ViFi-CLIP style: the whole model, with the hand-crafted prompt) and couple to hard prompts
learned on K400's base classes. Here the world CLIP is fine-tuned the same way on all classes of
``wk400``: both towers, cross-entropy of the template's class features against the clips' video
features, AdamW with a cosine decay, a few epochs. The checkpoint (open_clip layout, fp32) is
cached in ``OUT/cache`` under a hash of everything it depends on (the world's code and weights,
the world seed and knobs, the recipe), as the hard prompts are; every method then runs on
``whmdb``, ``wucf`` and ``wssv2`` with ``model.backbone_checkpoint`` set to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from promptcouple.constants import fill_template
from promptcouple.fileio import atomic_save_safetensors, atomic_write_text

from .setting import Setting

SOURCE = "wk400"
TARGETS = ("whmdb", "wucf", "wssv2")


@dataclass(frozen=True)
class FinetuneRecipe:
    """ViFi-CLIP-style full fine-tuning of the world CLIP on every class of ``wk400``.

    Attributes:
        shots: Training clips per class (all 64 classes).
        epochs: Passes over them.
        batch_size: Clips per step.
        lr: Peak AdamW learning rate (cosine decay to 0, no warm-up).
        weight_decay: AdamW weight decay.
        seed: Seed of the order of the clips.
    """

    shots: int = 32
    epochs: int = 3
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 1e-2
    seed: int = 0


def _test_accuracy(model, tokenizer, dataset: str, setting: Setting, world_seed: int) -> float:
    """Zero-shot top-1 (template) on all classes of a world dataset's test clips."""
    from promptcouple import world

    ds = world.get_dataset(dataset, "test", world_seed=world_seed, frames=setting.num_frames, res=setting.image_size,
                           shift=setting.world_shift, context=setting.world_context,
                           test_per_class=setting.test_per_class)
    with torch.no_grad():
        return world.zero_shot_accuracy(model, tokenizer, ds.videos(), ds.labels, ds.classnames,
                                        template=setting.template)


def finetune(setting: Setting, world_seed: int, recipe: FinetuneRecipe, path: Path, threads: int = 1) -> dict:
    """Fine-tune the world CLIP on all of ``wk400`` and write it to ``path``; returns the notes
    (seconds, losses, zero-shot accuracy before and after on wk400 and the targets)."""
    from promptcouple import world

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model, tokenizer = world.load_world_clip()
    before = {d: _test_accuracy(model, tokenizer, d, setting, world_seed) for d in (SOURCE, *TARGETS)}
    train = world.get_dataset(SOURCE, "train", shots=recipe.shots, split_seed=1, world_seed=world_seed,
                              frames=setting.num_frames, res=setting.image_size, shift=setting.world_shift,
                              context=setting.world_context)
    texts = tokenizer(fill_template(setting.template, train.classnames))
    frames, labels = train.videos(), train.labels
    steps_per_epoch = math.ceil(len(labels) / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    generator = torch.Generator().manual_seed(recipe.seed)
    model.train()
    losses = []
    for _ in range(recipe.epochs):
        order = torch.randperm(len(labels), generator=generator)
        running = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * recipe.batch_size:(i + 1) * recipe.batch_size]
            video = world.encode_video(model, frames[idx], normalize=True)
            text = F.normalize(model.encode_text(texts), dim=-1)
            loss = F.cross_entropy(model.logit_scale.exp() * video @ text.t(), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item()
        losses.append(running / steps_per_epoch)
    model.eval()
    after = {d: _test_accuracy(model, tokenizer, d, setting, world_seed) for d in (SOURCE, *TARGETS)}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_save_safetensors(path, state, metadata={"format": "open_clip.CLIP",
                                                   "recipe": json.dumps(dataclasses.asdict(recipe))})
    notes = {"seconds": time.perf_counter() - t0, "epoch_losses": losses, "train_clips": len(labels),
             "zero_shot_top1_before": before, "zero_shot_top1_after": after, "recipe": dataclasses.asdict(recipe)}
    atomic_write_text(path.with_suffix(".json"), json.dumps(notes, indent=1) + "\n")
    return notes


def k400_backbone(setting: Setting, world_seed: int, out: Path, identity: dict,
                  recipe: Optional[FinetuneRecipe] = None, threads: int = 1) -> tuple[str, dict]:
    """The fine-tuned backbone's path, trained once and cached by hash; and its notes."""
    recipe = recipe or FinetuneRecipe()
    key = {"recipe": dataclasses.asdict(recipe), "world_seed": world_seed, "identity": identity,
           "frames": setting.num_frames, "image_size": setting.image_size, "shift": setting.world_shift,
           "context": setting.world_context, "template": setting.template}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    path = out / "cache" / f"k400_first_backbone_world{world_seed}_{digest}.safetensors"
    if path.exists():
        notes = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").exists() else {}
        return str(path), {"cached": str(path), **{k: v for k, v in notes.items() if k != "seconds"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path), finetune(setting, world_seed, recipe, path, threads=threads)
