"""What the ViFi-CLIP and X-CLIP drop-ins share: a wrapper bound to its class names, the anchor
term drawn inside ``forward``, and checkpoints of their loops.

Their loops call ``model(images)`` (or ``model(images, texts)``) through DistributedDataParallel
and add nothing but the cross-entropy. The anchor term therefore runs inside the training
forward: the anchor clips join the batch's vision pass and the anchor labels the class text pass,
the term is kept, and ``anchor_loss(model)`` (one added line in their loop) hands it to their
loss. Everything stays inside DDP's forward, so every prompt tensor gets its gradient in the same
backward and ``find_unused_parameters=False`` holds.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from promptcouple.anchors import AnchorRegularizer
from promptcouple.config import CouplingConfig
from promptcouple.errors import CheckpointError, InvalidInputError
from promptcouple.integrations.settings import AnchorSettings, IntegrationSettings
from promptcouple.wrapper import CouplingPromptWrapper, check_classnames

# Keys of the wrapper's own state dict: the host under "model.", the prompt tensors under "prompts.".
HOST_KEY, PROMPT_KEY = "model.", "prompts."


class BoundPromptWrapper(CouplingPromptWrapper):
    """A :class:`CouplingPromptWrapper` bound to the class names of one run, with the anchor term.

    The state dict is the wrapper's (``model.*`` host weights, ``prompts.*`` prompt tensors and the
    hard prompt): nothing in it depends on the class names, so a checkpoint trained on base classes
    loads into a model bound to novel ones.
    """

    def __init__(self, model: nn.Module, class_names: Sequence[str], config: CouplingConfig, *,
                 settings: IntegrationSettings, num_frames: int, hard_prompts: Any = None,
                 train_host: Sequence[str] = (), tokenizer: Any = None):
        super().__init__(model, config, hard_prompts=hard_prompts, tokenizer=tokenizer, train_host=train_host)
        self.class_names = check_classnames(class_names, distinct=True)
        self.num_frames = int(num_frames)
        self.settings = settings
        object.__setattr__(self, "_anchor_term", None)  # outside the module tree: not in the state dict
        self._pending_anchor_loss: Optional[torch.Tensor] = None
        self._warned_unused_anchor = False
        if settings.anchors is not None:
            object.__setattr__(self, "_anchor_term", AnchorTerm(self, settings.anchors, self.class_names))
        self.register_load_state_dict_pre_hook(_accept_host_layouts)
        self.register_load_state_dict_post_hook(_refuse_other_prompt_layouts)

    # ------------------------------------------------------------------------------- forward

    def bound_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` over the bound class names; in training with anchors, the anchor term
        is computed in the same passes and kept for :func:`anchor_loss`."""
        term = self._anchor_term
        if term is None or not (self.training and torch.is_grad_enabled()):
            return CouplingPromptWrapper.forward(self, images, self.class_names)
        if self._pending_anchor_loss is not None and not self._warned_unused_anchor:
            warnings.warn("anchors are configured but the previous step's anchor term was never taken: add "
                          "`+ anchor_loss(model)` to the loss in the training loop (docs/INTEGRATIONS.md)",
                          stacklevel=3)
            self._warned_unused_anchor = True
        logits, self._pending_anchor_loss = term.step(images)
        return logits

    def take_anchor_loss(self) -> torch.Tensor:
        """The anchor term of the last training forward (zero when there is none), then forgotten."""
        loss, self._pending_anchor_loss = self._pending_anchor_loss, None
        if loss is None:
            return torch.zeros((), device=self.device)
        return loss


class AnchorTerm:
    """Anchor clips drawn from the configured list, their term computed beside the batch."""

    def __init__(self, wrapper: BoundPromptWrapper, settings: AnchorSettings, class_names: Sequence[str]):
        self.wrapper, self.settings = wrapper, settings
        self.dataset = _anchor_dataset(settings, wrapper)
        self.regularizer = AnchorRegularizer(wrapper, self.dataset.classnames, mode=settings.mode,
                                             weight=settings.weight, classnames=list(class_names),
                                             template=settings.template, allow_overlap=settings.allow_overlap)
        self._stream = None

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._stream is None:  # built at the first step: after the process group exists, on every rank
            from promptcouple.data import anchor_loader

            self._stream = anchor_loader(self.dataset, self.settings.batch_size, seed=self.settings.seed)
        return next(self._stream)

    def step(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w, reg = self.wrapper, self.regularizer
        clips, labels = self.draw()
        if tuple(clips.shape[1:]) != tuple(images.shape[1:]):
            raise InvalidInputError(f"anchor clips of shape {tuple(clips.shape[1:])} do not match the training clips "
                                    f"{tuple(images.shape[1:])}: sample the anchors with the same number of frames and "
                                    "image size (anchors.clips / the anchor list's decoding)")
        clips = clips.to(images.device, images.dtype)
        names = w.class_names
        k, b = len(names), images.shape[0]
        fold = reg.folds_anchor_text()
        # One text pass for the classes and the prompted anchor labels, one vision pass for both batches.
        text = w.encode_text(tuple(names) + tuple(reg.anchor_labels) if fold else names)
        video, context = w.encode_video(torch.cat([images, clips]), return_tokens=True)
        class_text = text[:k]
        split = (lambda t: (t[:b], t[b:])) if context is not None else (lambda t: (None, None))
        context_batch, context_anchor = split(context)
        logits = w.logits(video[:b], class_text, context_batch)
        loss = reg(clips, labels.to(images.device), class_features=class_text, video=video[b:],
                   context=context_anchor, anchor_text=text[k:] if fold else None)
        return logits, loss


def _anchor_dataset(settings: AnchorSettings, wrapper: CouplingPromptWrapper):
    if settings.clips is not None:
        from promptcouple.train.data import ClipTensorDataset

        return ClipTensorDataset(settings.clips, settings.labels, train=True)
    from promptcouple.adapters.capabilities import frame_format
    from promptcouple.data import VideoListDataset

    size = (frame_format(wrapper.model)[1] or (224, 224))[0]
    return VideoListDataset(settings.list, settings.labels, root=settings.root, train=True,
                            num_frames=wrapper.num_frames, size=size)


def anchor_loss(model: nn.Module) -> torch.Tensor:
    """The anchor term of the last training forward of ``model`` (a drop-in model, bare or inside
    DDP / DataParallel): ``loss = criterion(output, label) + anchor_loss(model)``. Zero where no
    anchors are configured, so the line can stay in every config."""
    inner = model
    while not isinstance(inner, BoundPromptWrapper):
        if not hasattr(inner, "module"):
            raise InvalidInputError(f"anchor_loss: {type(model).__name__} is not a promptcouple drop-in model "
                                    "(vificlip.returnCLIP / xclip.wrap), nor one inside DistributedDataParallel")
        inner = inner.module
    return inner.take_anchor_loss()


# ----------------------------------------------------------------------------- checkpoints

def _refuse_other_prompt_layouts(module: BoundPromptWrapper, incompatible: Any) -> None:
    """Their loops load with ``strict=False``: a GA2 checkpoint loaded into a model built without the
    hard prompt (or an IVLP one into a coupled model) would otherwise evaluate uncoupled, or with a
    random mapping layer, silently. A checkpoint without any prompt tensor (the host's own weights)
    still loads."""
    def prompt_keys(keys):
        return [k for k in keys if "prompts" in k.split(".")]

    missing, unexpected = prompt_keys(incompatible.missing_keys), prompt_keys(incompatible.unexpected_keys)
    if unexpected or (missing and len(missing) < len(module.prompts.state_dict())):  # all missing: host weights
        raise CheckpointError(f"this checkpoint's prompt tensors do not fit the model built (missing {missing[:4]}, "
                       f"unexpected {unexpected[:4]}); fix: build with the same prompt settings it was trained "
                       "with (PROMPTCOUPLE_CONFIG with its hard prompt for a GA2 checkpoint, none for IVLP)")


def _accept_host_layouts(module: BoundPromptWrapper, state_dict: dict, prefix: str, *args: Any) -> None:
    """Rename, in place, the keys of checkpoints written without the wrapper to the wrapper's keys.

    Both loops load with ``strict=False``, which silently skips a key it does not know. A
    checkpoint of the unwrapped host (X-CLIP: ``visual.*``, ``mit.*``; ViFi-CLIP:
    ``image_encoder.*``, ``text_encoder.*``, ``prompt_learner.ctx`` and its ``VPT`` prompts)
    would load nothing; renamed, its weights (and ViFi-CLIP's IVLP prompts) load.
    """
    own = [k for k in state_dict if k.startswith(prefix)]
    if not own or any(k.startswith(prefix + HOST_KEY) or k.startswith(prefix + PROMPT_KEY) for k in own):
        return
    from promptcouple.adapters.checkpoints import PROMPT_MARKERS, backbone_state_dict, reference_prompt_tensors

    local = {k[len(prefix):]: state_dict.pop(k) for k in own}
    host_keys = set(module.model.state_dict())
    prompts = {}
    if any(marker in local for marker in PROMPT_MARKERS):
        prompts = _prompt_keys(reference_prompt_tensors(local)[1])
    converted, _, _ = backbone_state_dict(local)
    for key, value in converted.items():
        state_dict[prefix + (HOST_KEY + key if key in host_keys else key)] = value
    for key, value in prompts.items():
        state_dict[prefix + key] = value


def _prompt_keys(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Prompt-file keys -> the wrapper's ``prompts.*`` state-dict keys."""
    out = {}
    for key, value in tensors.items():
        kind, _, index = key.rpartition(".")
        if key == "text.ctx":
            out["prompts.ctx"] = value
        elif key == "vision.ctx":
            out["prompts.vision_ctx"] = value
        elif kind in ("text.deep", "vision.deep"):
            out[f"prompts.{kind.replace('.', '_')}.{int(index) - 1}"] = value
        elif key.startswith("coupling."):
            out["prompts." + key] = value
        elif key == "text.hard":
            out["prompts.hard"] = value
    return out


def checkpoint_prompt_tensors(state: Mapping[str, Any], *, dropout: float = 0.5
                              ) -> tuple[dict[str, torch.Tensor], CouplingConfig, list[str]]:
    """A drop-in model's state dict (``prompts.*``, ``model.*``; DDP prefixes stripped) as prompt-file
    tensors, the config their shapes imply and the ``train_host`` modules found (X-CLIP's ``mit``
    and ``prompts_generator``): what ``promptcouple convert`` writes from a checkpoint of their loop.

    Raises:
        CheckpointError: No ``prompts.ctx``, or deep prompts at layers that are not consecutive.
    """
    from promptcouple.io import HOST_PREFIX

    if "prompts.ctx" not in state:
        raise CheckpointError(f"no 'prompts.ctx' in the state dict (first keys: {sorted(state)[:8]}); expected a "
                              "checkpoint written by a promptcouple drop-in model (promptcouple.integrations)")
    tensors = {"text.ctx": state["prompts.ctx"]}

    def layers(name: str) -> list[torch.Tensor]:
        found = {int(k.rsplit(".", 1)[1]): v for k, v in state.items() if k.startswith(f"prompts.{name}.")}
        if sorted(found) != list(range(len(found))):
            raise CheckpointError(f"prompts.{name} at layers {sorted(found)}: expected 0..{len(found) - 1}")
        return [found[i] for i in range(len(found))]

    tensors.update({f"text.deep.{i}": v for i, v in enumerate(layers("text_deep"), start=1)})
    vision = state.get("prompts.vision_ctx")
    if vision is not None:
        tensors["vision.ctx"] = vision
        tensors.update({f"vision.deep.{i}": v for i, v in enumerate(layers("vision_deep"), start=1)})
    for key, file_key in (("prompts.hard", "text.hard"), ("prompts.coupling.weight", "coupling.weight"),
                          ("prompts.coupling.bias", "coupling.bias")):
        if key in state:
            tensors[file_key] = state[key]
    train_host = [m for m in ("mit", "prompts_generator") if any(k.startswith(f"{HOST_KEY}{m}.") for k in state)]
    for key, value in state.items():
        if any(key.startswith(f"{HOST_KEY}{m}.") for m in train_host):
            tensors[HOST_PREFIX + key[len(HOST_KEY):]] = value
    ctx = tensors["text.ctx"]
    config = CouplingConfig(n_ctx=ctx.shape[0], text_depth=1 + len(layers("text_deep")),
                            n_vision_ctx=vision.shape[0] if vision is not None else 0,
                            vision_depth=1 + len(layers("vision_deep")) if vision is not None else 0, dropout=dropout)
    return {k: v.float() for k, v in tensors.items()}, config, train_host
