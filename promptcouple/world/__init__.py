"""The embedded default world: procedurally rendered video clips and a small pretrained video CLIP.

Nobody can download CLIP or Kinetics here, so the package ships a small world in which the
problem prompt tuning solves is real: a contrastively pretrained video-text model that
recognises unseen classes zero-shot, and downstream datasets shifted from its pretraining
data, on which tuning prompts on base classes raises base accuracy and narrows generalisation.

API:

- ``dataset_names() -> list[str]``: the evaluated datasets ``wk400`` (Kinetics-400 role, 64
  classes), ``whmdb`` (HMDB role, 20), ``wucf`` (UCF role, 30), ``wssv2`` (Something-Something
  role, 48 classes that come in pairs differing only in temporal order; rendered without
  motion trails, so a frame average cannot separate a pair).
- ``dataset_info(name) -> dict``: role, ``classnames``, fixed ``base`` / ``novel`` halves.
- ``class_descriptions(name) -> dict``: each class's description set, the class name and its
  motion paraphrases (for the description rows of the benchmarks; never a clip's caption).
- ``get_dataset(name, split="base_train", shots=16, split_seed=1, world_seed=0, shift=None,
  context=None, test_per_class=None) -> WorldDataset``: splits ``base_train``, ``novel_train``,
  ``train`` (K-shot, s1/s2/s3 via ``split_seed``; K = 2, 4, 8 are prefixes of K = 16),
  ``base_test``, ``novel_test``, ``test``. Items are ``(frames (T, 3, H, W) float
  CLIP-normalised, label int)``; ``.classnames``, ``.labels``, ``.videos()`` (all clips).
- ``hard_prompt_source(split="train", shots=16, split_seed=1, ...) -> WorldDataset``: the disjoint
  (texture, motion) class set that supplies hard prompts.
- ``anchor_set(per_class=8, world_seed=0, shift=None) -> (WorldDataset, list[str])``: clips of
  the irrelevant (size, texture) class set and the anchor label strings (negative prompts).
- ``load_world_clip(device="cpu") -> (model, tokenizer)``: the shipped open_clip ``CLIP`` (built
  from the config in the checkpoint metadata, loaded strictly) and open_clip's
  ``SimpleTokenizer(context_length=32)``. ``encode_video(model, frames)`` averages per-frame
  features; ``zero_shot_accuracy(...)`` evaluates a template.

Knobs (see ``assets/MODEL_CARD.md``): ``shift`` (0 = the pretraining rendering style, 1 = the
strongest shift: textured backgrounds, clutter, camera pan, hue/contrast changes, outline
drawing, weaker trails, more noise; default ``DEFAULT_SHIFT`` = 0.25) and ``context`` (probability that a clip shows its class's own
scene, a cue that tuning on base classes can learn and that does not transfer to novel classes).
"""

from .datasets import (DEFAULT_CONTEXT, DEFAULT_SHIFT, DEFAULT_TEST_PER_CLASS, SPLITS, WorldDataset, anchor_set,
                       class_descriptions, dataset_info, dataset_names, get_dataset, hard_prompt_source)
from .model import (CHECKPOINT, WORLD_CLIP_CONFIG, build_world_clip, encode_video, load_world_clip, make_tokenizer,
                    normalize_frames, save_world_clip, zero_shot_accuracy)

__all__ = [
    "DEFAULT_CONTEXT", "DEFAULT_SHIFT", "DEFAULT_TEST_PER_CLASS", "SPLITS", "WorldDataset", "anchor_set",
    "class_descriptions", "dataset_info", "dataset_names", "get_dataset", "hard_prompt_source", "CHECKPOINT",
    "WORLD_CLIP_CONFIG", "build_world_clip", "encode_video", "load_world_clip", "make_tokenizer", "normalize_frames",
    "save_world_clip", "zero_shot_accuracy",
]
