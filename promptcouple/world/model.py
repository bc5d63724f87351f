"""The small video CLIP of the embedded world: a stock open_clip ``CLIP`` built from a config dict.

Videos are encoded the ViFi-CLIP way (the image tower on every frame, CLS features averaged over
time); the model itself is an unmodified ``open_clip.model.CLIP`` so any code written for
open_clip hosts works on it. The checkpoint stores its config as JSON in the safetensors
metadata, so :func:`load_world_clip` needs nothing else.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer

from promptcouple.constants import ZERO_SHOT_TEMPLATE, fill_template
from promptcouple.fileio import atomic_save_safetensors

ASSET_DIR = os.path.join(os.path.dirname(__file__), "assets")
CHECKPOINT = os.path.join(ASSET_DIR, "world_clip.safetensors")

WORLD_CLIP_CONFIG: Dict = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
    "quick_gelu": False,
}

# open_clip's OpenAI normalisation constants, so the frames look like any CLIP input.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build_world_clip(config: Optional[Dict] = None) -> CLIP:
    """Builds a randomly initialised open_clip ``CLIP`` from a config dict (default: the world's)."""
    cfg = copy.deepcopy(config or WORLD_CLIP_CONFIG)
    return CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"],
                quick_gelu=cfg.get("quick_gelu", False))


def make_tokenizer(config: Optional[Dict] = None) -> SimpleTokenizer:
    """open_clip's own BPE tokenizer with the model's context length."""
    cfg = config or WORLD_CLIP_CONFIG
    return SimpleTokenizer(context_length=cfg["text_cfg"]["context_length"])


def normalize_frames(frames_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float CLIP-normalised."""
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (frames_uint8.float() / 255.0 - mean) / std


def encode_video(model: CLIP, frames: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Per-frame image features averaged over time.

    Args:
        model: The CLIP.
        frames: (B, T, 3, H, W) CLIP-normalised frames.
        normalize: L2-normalise the video features.

    Returns:
        (B, D) video features.
    """
    b, t = frames.shape[:2]
    f = model.encode_image(frames.flatten(0, 1)).view(b, t, -1).mean(1)
    return F.normalize(f, dim=-1) if normalize else f


def save_world_clip(model: CLIP, path: str, config: Optional[Dict] = None, metadata: Optional[Dict[str, str]] = None,
                    half: bool = True) -> None:
    """Saves weights as safetensors (fp16 by default) with the config as JSON metadata."""
    sd = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    meta = {"config": json.dumps(config or WORLD_CLIP_CONFIG), "format": "open_clip.CLIP"}
    meta.update(metadata or {})
    atomic_save_safetensors(path, sd, metadata=meta)  # an interrupted save keeps the previous checkpoint


def load_world_clip(device: str = "cpu", path: Optional[str] = None) -> Tuple[CLIP, SimpleTokenizer]:
    """Loads the shipped pretrained world CLIP.

    Builds the model from the config stored in the checkpoint metadata, loads the weights
    strictly (float32) and returns it in eval mode.

    Args:
        device: Torch device.
        path: Checkpoint path (default: the shipped ``assets/world_clip.safetensors``).

    Returns:
        ``(model, tokenizer)``.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file
    path = path or CHECKPOINT
    with safe_open(path, framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    model = build_world_clip(config)
    sd = {k: v.float() for k, v in load_file(path).items()}
    model.load_state_dict(sd, strict=True)
    return model.to(device).eval(), make_tokenizer(config)


class ZeroShotClassifier(torch.nn.Module):
    """Zero-shot CLIP: videos scored against the frozen text tower's features of a hand-crafted prompt.

    The package's one zero-shot evaluation. It is called like the prompted wrapper,
    ``classifier(frames, classnames) -> (B, K)`` scores, so an evaluation loop
    (:func:`promptcouple.train.evaluate_sets`) scores it like any prompted model. Class features
    are computed once per class list. Build it with :meth:`from_wrapper` (any host, prompts
    switched off) or :meth:`from_clip` (a plain world CLIP and its tokenizer).

    Args:
        model: The module evaluated (held so that ``.eval()`` and ``.to()`` reach it).
        encode_texts: Texts -> ``(K, D)`` features of the frozen text tower.
        score: ``(frames, normalised class features) -> (B, K)`` scores.
        template: The hand-crafted prompt, with ``{}`` for the class name.
        descriptions: ``{class: [description, ...]}``: such a class is the mean of the normalised
            features of the template filled with each description (renormalised), as the prompted
            wrapper averages them; the other classes keep their name.
    """

    def __init__(self, model: torch.nn.Module, encode_texts: Callable[[list], torch.Tensor],
                 score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], template: str = ZERO_SHOT_TEMPLATE,
                 descriptions: Optional[Dict[str, Sequence[str]]] = None):
        super().__init__()
        self.model = model
        self.template = template
        self._encode_texts, self._score = encode_texts, score
        self._class_features: Dict[tuple, torch.Tensor] = {}
        self.descriptions = descriptions

    @classmethod
    def from_wrapper(cls, wrapper: torch.nn.Module, template: str = ZERO_SHOT_TEMPLATE,
                     descriptions: Optional[Dict[str, Sequence[str]]] = None) -> "ZeroShotClassifier":
        """The host inside a :class:`promptcouple.CouplingPromptWrapper`, its prompts switched off:
        logits as the wrapper computes them (logit scale and bias included)."""
        def score(frames: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            with wrapper.prompts_disabled():
                return wrapper.logits(wrapper.encode_video(frames), text)

        return cls(wrapper, wrapper.encode_frozen_text, score, template, descriptions)

    @classmethod
    def from_clip(cls, model: CLIP, tokenizer, template: str = ZERO_SHOT_TEMPLATE) -> "ZeroShotClassifier":
        """A plain world CLIP (no wrapper): plain cosine similarities, which rank the classes as the
        scaled logits do."""
        def encode_texts(texts: list) -> torch.Tensor:
            return model.encode_text(tokenizer(texts))

        def score(frames: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            return encode_video(model, frames) @ text.t()

        return cls(model, encode_texts, score, template)

    @torch.no_grad()
    def class_features(self, classnames: Sequence[str]) -> torch.Tensor:
        """L2-normalised ``(K, D)`` features of the template filled with each class name (or the
        renormalised mean over the class's descriptions)."""
        d = self.descriptions or {}
        phrases = [tuple(d[n]) if n in d else (n,) for n in classnames]
        key = (tuple(classnames), tuple(phrases))
        if key not in self._class_features:
            flat = [p for ps in phrases for p in ps]  # one text pass over every description
            feats = F.normalize(self._encode_texts(fill_template(self.template, flat)).float(), dim=-1)
            owner = torch.repeat_interleave(torch.arange(len(phrases)), torch.tensor([len(p) for p in phrases]))
            mean = torch.zeros(len(phrases), feats.shape[1], device=feats.device).index_add_(0, owner.to(feats.device),
                                                                                           feats)
            self._class_features[key] = F.normalize(mean, dim=-1)
        return self._class_features[key]

    @torch.no_grad()
    def forward(self, frames: torch.Tensor, classnames: Sequence[str]) -> torch.Tensor:
        return self._score(frames, self.class_features(classnames))


@torch.no_grad()
def zero_shot_accuracy(model: CLIP, tokenizer, frames: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str],
                       template: str = ZERO_SHOT_TEMPLATE, batch_size: int = 256) -> float:
    """Top-1 zero-shot accuracy (%) of the frozen world CLIP with a hand-crafted template."""
    model.eval()
    classifier = ZeroShotClassifier.from_clip(model, tokenizer, template)
    correct = 0
    for i in range(0, len(frames), batch_size):
        scores = classifier(frames[i:i + batch_size], classnames)
        correct += scores.argmax(-1).eq(labels[i:i + batch_size]).sum().item()
    return 100.0 * correct / max(len(frames), 1)
