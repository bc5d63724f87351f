"""Hugging Face ``transformers`` hosts: ``CLIPModel``, ``SiglipModel``, ``Siglip2Model`` and ``XCLIPModel``.

All four keep their towers as ``text_model``/``vision_model`` with ``embeddings``, an ``encoder``
whose ``layers`` take the token sequence as their first argument, and final norms after the
encoder, so one description serves them; the families differ in where image tokens start, how
text is pooled and whether the text tower is causal.

This module imports without ``transformers``: a model is recognised by the modules its classes
were defined in, so that ``transformers`` (seconds to import) is never imported for other hosts.

Gradient checkpointing (``model.gradient_checkpointing_enable()``) acts only in training mode in
``transformers``. From 5 on it checkpoints inside the layer call, after the prompt hooks; 4.x
checkpoints the call, hooks included, which is exact too (the hooks are idempotent), but 4.x's
default reentrant checkpoint serves ``.backward()`` only, not ``torch.autograd.grad``: pass
``gradient_checkpointing_kwargs={"use_reentrant": False}`` for that.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from promptcouple.adapters.base import HostAdapter, TextSite, UnsupportedHostError, VisionSite
from promptcouple.errors import InvalidInputError

#: The class each adapter serves, as ``(module, name)``: matched on a model's MRO without importing.
_CLIP = ("transformers.models.clip.modeling_clip", "CLIPModel")
_SIGLIP = ("transformers.models.siglip.modeling_siglip", "SiglipModel")
_SIGLIP2 = ("transformers.models.siglip2.modeling_siglip2", "Siglip2Model")
_XCLIP = ("transformers.models.x_clip.modeling_x_clip", "XCLIPModel")
_SERVED = ", ".join(name for _, name in (_CLIP, _SIGLIP, _SIGLIP2, _XCLIP))


def _is(model: nn.Module, cls: tuple[str, str]) -> bool:
    """Whether ``model`` is an instance of the ``transformers`` class ``cls`` (subclasses included)."""
    return any((c.__module__, c.__name__) == cls for c in type(model).__mro__)


def _pooled(out: Any) -> torch.Tensor:
    """Features from a ``get_*_features`` call: a tensor (transformers 4.x), or from 5 on an output
    whose pooled item, the projected one, comes second (``last_hidden_state`` first), also when
    ``config.return_dict=False`` makes it a tuple."""
    return out if torch.is_tensor(out) else out[1]


def _text_site(text_model: nn.Module, causal: bool) -> TextSite:
    embeddings = text_model.embeddings
    return TextSite(embedding=embeddings.token_embedding, blocks=list(text_model.encoder.layers), seq_first=False,
                    width=embeddings.token_embedding.embedding_dim,
                    context_length=embeddings.position_embedding.num_embeddings, causal=causal)


def _vision_site(vision_model: nn.Module, insert: nn.Module, insert_on: str) -> VisionSite:
    """Prompts join at ``insert`` and leave where the encoder returns, before the final norm and
    any pooling (CLS token, attention-pooling head, X-CLIP's patch tokens for its prompt generator)."""
    encoder = vision_model.encoder
    return VisionSite(insert=insert, insert_on=insert_on, strip=encoder, strip_on="output", strip_seq_first=False,
                      blocks=list(encoder.layers), seq_first=False,
                      width=vision_model.post_layernorm.normalized_shape[0])


def _clip_bpe(model: nn.Module, family: str, context_length: int) -> Any:
    """open_clip's CLIP BPE, the vocabulary of OpenAI's CLIP and of ``CLIPTokenizer``."""
    from open_clip.tokenizer import SimpleTokenizer

    vocab = model.config.text_config.vocab_size
    if vocab != 49408:
        raise InvalidInputError(f"{family}: the text tower has a vocabulary of {vocab} tokens, not CLIP's 49408, so the "
                         "default CLIP tokenizer does not fit; pass tokenizer=AutoTokenizer.from_pretrained(...) "
                         "for this model")
    return SimpleTokenizer(context_length=context_length)


def _cut_states(states: Any, length: int) -> Any:
    """A tuple of hidden states ``(N, L', D)`` cut to their first ``length`` tokens; anything else as it is.

    Entries may be ``None``: transformers 5 leaves out the layers ``output_hidden_states=[i, ...]`` did not select.
    """
    if not (isinstance(states, tuple) and any(torch.is_tensor(h) for h in states)):
        return states
    if not all(h is None or (torch.is_tensor(h) and h.ndim == 3 and h.shape[1] >= length) for h in states):
        return states
    return tuple(None if h is None else h[:, :length] for h in states)


class _HFDualTower(HostAdapter):
    """What the four families share: ``text_model``/``vision_model`` and ``get_*_features``.

    Called directly while wrapped, the host returns what it returns unwrapped, in the same shapes:
    its vision hidden states (``output_hidden_states=True``) leave out the prompt tokens (see
    :meth:`_strip_hidden_states`); text prompts replace placeholder positions, so the text hidden
    states keep the length of the ids (the prompt tokens are the placeholders'
    ``[ctx_start, ctx_start + n_ctx)``). Attention maps (``output_attentions=True``) keep the vision
    prompt tokens as their last ``n_vision_ctx`` query and key positions: rows with those keys cut
    out would no longer be the distributions the layers used.
    """

    served: tuple[str, str]
    causal: bool

    @classmethod
    def claims(cls, model: nn.Module) -> bool:
        return _is(model, cls.served)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.text = _text_site(model.text_model, self.causal)
        self._host_handles: list = []

    def on_wrap(self) -> None:
        self._host_handles = [self.model.vision_model.register_forward_hook(self._strip_hidden_states)]

    def on_unwrap(self) -> None:
        for handle in self._host_handles:
            handle.remove()
        self._host_handles = []

    @staticmethod
    def _strip_hidden_states(module: nn.Module, args: tuple, out: Any) -> Any:
        """The vision tower's hidden states cut to its own sequence (the prompt tokens, last, left out).

        From transformers 5 the hidden states are recorded by hooks on the encoder layers and added
        to the tower's output after the encoder returns, so the wrapper's strip site (the encoder's
        output) never sees them; here they are cut to the length of ``last_hidden_state``, which the
        strip site has already cut. Nothing changes where they already match (prompts disabled,
        text prompts only, or transformers 4.x, whose encoder returns them to the strip site).
        """
        if isinstance(out, dict):  # a ModelOutput
            last, states = out.get("last_hidden_state"), out.get("hidden_states")
            if torch.is_tensor(last) and isinstance(states, tuple):
                out["hidden_states"] = _cut_states(states, last.shape[1])
            return out
        if isinstance(out, tuple) and out and torch.is_tensor(out[0]) and out[0].ndim == 3:  # return_dict=False
            return tuple(_cut_states(item, out[0].shape[1]) for item in out)
        return None

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_text_features(input_ids=ids))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=images))


class _CausalCLIPText(_HFDualTower):
    """CLIP's causal text tower, pooled at the end-of-text token."""

    causal = True

    def encode_text_short(self, ids: torch.Tensor, length: Optional[int] = None) -> Optional[torch.Tensor]:
        """Exact features from ``ids[:, :L]``, ``L`` = last pooled position + 1 (``length`` where
        the caller knows it from tokenization).

        The tower is causal and takes shorter ids natively (mask and position ids follow the
        length), so nothing after the pooled token can change it. It pools the highest id when its
        ``eos_token_id`` is the legacy 2 (or absent: X-CLIP before transformers 5), the first
        ``eos_token_id`` otherwise, as the host does.
        """
        if length is None:
            eos = getattr(self.model.text_model, "eos_token_id", 2)
            pos = ids.argmax(dim=-1) if eos == 2 else (ids == eos).int().argmax(dim=-1)
            length = int(pos.max()) + 1
        return self.encode_text(ids[:, :length])

    def default_tokenizer(self) -> Any:
        return _clip_bpe(self.model, self.family, self.text.context_length)


class HFCLIPAdapter(_CausalCLIPText):
    """``transformers.CLIPModel``: prompts appended after the position embeddings, before ``pre_layrnorm``."""

    kind = "hf_clip"
    family = "transformers CLIPModel"
    served = _CLIP

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        vision = model.vision_model
        self.vision = _vision_site(vision, vision.pre_layrnorm, "input")


class HFSiglipAdapter(_HFDualTower):
    """``transformers.SiglipModel``.

    The text tower is bidirectional (no short path) and pools the last position, padding
    included, so prompts must be padded to the full length as the model was trained. The image
    tower has no CLS token: prompts go after the patch tokens and leave before the attention-pooling
    head. Logits carry the model's ``logit_bias``.
    """

    kind = "hf_siglip"
    family = "transformers SiglipModel"
    served = _SIGLIP
    causal = False

    @classmethod
    def claims(cls, model: nn.Module) -> bool:
        if not super().claims(model):
            return False
        if not getattr(model.config.vision_config, "vision_use_head", True):
            raise UnsupportedHostError(
                f"{cls.family}: the image tower was built with vision_use_head=False, so it has no pooling head "
                "and gives no image features; use a SiglipModel with its head (vision_use_head=True)")
        return True

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        vision = model.vision_model
        self.vision = _vision_site(vision, vision.embeddings, "output")

    def default_tokenizer(self) -> Any:
        name = getattr(self.model.config, "_name_or_path", "")
        name = repr(name) if name else "<the checkpoint's name or folder>"
        raise InvalidInputError(
            f"{self.family} has no built-in tokenizer (SigLIP's SentencePiece vocabulary does not ship with "
            f"promptcouple); pass tokenizer=AutoTokenizer.from_pretrained({name}) to CouplingPromptWrapper")


class HFSiglip2Adapter(HFSiglipAdapter):
    """``transformers.Siglip2Model`` (NaFlex): images are cut into patches here, as its processor does.

    Frames are whole images ``(C, H, W)`` with ``H`` and ``W`` multiples of the patch size; the
    position embeddings are resized to that grid by the model, and no padding mask is needed (every
    patch is real). Called directly while wrapped, the model takes its processor's padded batches
    too: the ``pixel_attention_mask`` it builds for the encoder gains entries that let every token
    attend to the prompt tokens (:meth:`_mask_prompt_tokens`), while the pooling head, after the
    prompts have left, keeps the mask as given.
    """

    kind = "hf_siglip2"
    family = "transformers Siglip2Model"
    served = _SIGLIP2

    def on_wrap(self) -> None:
        super().on_wrap()
        encoder = self.model.vision_model.encoder
        self._host_handles.append(encoder.register_forward_pre_hook(self._mask_prompt_tokens, with_kwargs=True))

    @staticmethod
    def _mask_prompt_tokens(module: nn.Module, args: tuple, kwargs: dict) -> Optional[tuple[tuple, dict]]:
        """The encoder's attention mask widened to the prompt tokens appended to ``inputs_embeds``.

        The model builds the mask from ``pixel_attention_mask`` after the embeddings, where the prompt
        tokens have already joined: its keys then cover the patches only (transformers 5 gives
        ``(N, 1, L + n, L)``, 4.x ``(N, 1, L, L)``; an all-ones mask gives ``None``, nothing to do).
        The prompt keys are marked as attended (``True``, or 0 in an additive mask) and missing
        query rows copy the last row: a padding mask's rows are all the same.
        """
        x = kwargs.get("inputs_embeds", args[0] if args else None)
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if not (torch.is_tensor(x) and torch.is_tensor(mask)) or mask.shape[-1] >= x.shape[1]:
            return None
        n = x.shape[1] - mask.shape[-1]
        attend = torch.ones((), dtype=mask.dtype, device=mask.device) if mask.dtype in (torch.bool, torch.long) \
            else torch.zeros((), dtype=mask.dtype, device=mask.device)
        mask = torch.cat([mask, attend.expand(*mask.shape[:-1], n)], dim=-1)
        if mask.ndim == 4 and mask.shape[-2] < x.shape[1]:
            rows = x.shape[1] - mask.shape[-2]
            mask = torch.cat([mask, mask[..., -1:, :].expand(-1, -1, rows, -1)], dim=-2)
        if "attention_mask" in kwargs or len(args) < 2:
            return args, {**kwargs, "attention_mask": mask}
        return (args[0], mask, *args[2:]), kwargs

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        patches, shapes = self.patchify(images)
        return _pooled(self.model.get_image_features(pixel_values=patches, spatial_shapes=shapes,
                                                     pixel_attention_mask=None))

    def patchify(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(N, C, H, W)`` as patches ``(N, h*w, p*p*C)`` (row by row, channels last within a
        patch, as ``Siglip2ImageProcessor``) and their grid ``(N, 2)`` = ``(h, w)``."""
        p = self.model.config.vision_config.patch_size
        n, c, height, width = images.shape
        if height % p or width % p:
            raise InvalidInputError(f"{self.family}: images of {height}x{width} pixels, expected multiples of the "
                             f"patch size {p}; resize or crop the frames")
        h, w = height // p, width // p
        patches = images.reshape(n, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(n, h * w, p * p * c)
        shapes = torch.tensor([[h, w]], device=images.device).expand(n, 2)
        return patches, shapes


class HFXCLIPAdapter(_CausalCLIPText):
    """``transformers.XCLIPModel``: cross-frame message tokens, a multi-frame integration transformer
    (MIT) and a video-specific prompt generator.

    Each vision layer appends its message token after the sequence it is given and removes it
    before the MLP, so the prompt tokens, appended before ``pre_layernorm``, sit before the message
    token and keep their place. They are stripped where the encoder returns, before the CLS feature
    goes to the MIT and the patch tokens to the prompt generator.
    """

    kind = "hf_xclip"
    family = "transformers XCLIPModel"
    served = _XCLIP
    video_specific = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        vision = model.vision_model
        self.vision = _vision_site(vision, vision.pre_layernorm, "input")

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        raise InvalidInputError(f"{self.family} has no features of single images: its vision layers exchange messages "
                         f"across the {self.model.config.vision_config.num_frames} frames of a clip; encode clips "
                         "(B, num_frames, C, H, W) with encode_video")

    def encode_video(self, frames: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Video features ``(B, D)`` from the MIT, and the frame-averaged projected patch tokens
        ``(B, N, D)`` that the prompt generator attends to (what ``XCLIPModel.forward`` computes)."""
        m = self.model
        b, t = frames.shape[:2]
        expected = m.config.vision_config.num_frames
        if t != expected:
            raise InvalidInputError(f"{self.family}: clips of {t} frames, but the model was built for num_frames={expected} "
                             "(its message attention groups that many frames); sample that many frames per clip")
        # Items by index, as XCLIPModel.forward reads them: outputs and tuples (return_dict=False) alike.
        hidden, pooled = m.vision_model(pixel_values=frames.flatten(0, 1))[:2]
        video = m.mit(m.visual_projection(pooled).view(b, t, -1))[1]
        tokens = m.prompts_visual_layernorm(hidden[:, 1:]) @ m.prompts_visual_projection
        return video, tokens.view(b, t, -1, video.shape[-1]).mean(dim=1)

    def specialize_text(self, text: torch.Tensor, context: Any) -> torch.Tensor:
        """``(K, D)`` class features shifted per video by the prompt generator: ``(B, K, D)``."""
        text = text.unsqueeze(0).expand(context.shape[0], -1, -1)
        return text + self.model.prompts_generator(text, context)


class HFUnservedAdapter(HostAdapter):
    """Any other ``transformers`` model: refused with the list of what is served."""

    kind = "hf_unserved"
    family = "transformers (other models)"

    @classmethod
    def claims(cls, model: nn.Module) -> bool:
        if not type(model).__module__.startswith("transformers."):
            return False
        raise UnsupportedHostError(
            f"{type(model).__name__}: promptcouple serves the transformers classes {_SERVED} (two towers with "
            "text_model/vision_model); a single tower or another family needs its own HostAdapter subclass, "
            "registered with pc.register_host(...)")


# Registered in order, each before the previous: the catch-all refusal is tried last.
ADAPTERS = [HFUnservedAdapter, HFCLIPAdapter, HFSiglipAdapter, HFSiglip2Adapter, HFXCLIPAdapter]
