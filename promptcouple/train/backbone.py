"""Load the CLIP backbone of a ViFi-CLIP / GA2-CLIP / OpenAI checkpoint into an open_clip (or OpenAI-layout) CLIP.

Reading, layout detection, key conversion and the strict load are the package's one checkpoint
reader (:mod:`promptcouple.adapters.checkpoints`, shared with ``promptcouple convert``); this
module adds the check a weight file cannot make by itself: that the model was built with the
activation the checkpoint was trained with. Prompt tensors (``prompt_learner.*``, ``*VPT*``) are
not backbone weights: they are reported as skipped (``promptcouple convert`` turns them into a
prompt file). Loading is strict: anything that does not fit raises :class:`BackboneLoadError`
listing every missing, unexpected and mis-shaped key, and the model is left untouched.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Union

from torch import nn

from promptcouple.adapters.base import activation_of
from promptcouple.adapters.checkpoints import BackboneLoadError, BackboneReport, load_clip_weights
from promptcouple.fileio import PathLike

__all__ = ["BackboneLoadError", "BackboneReport", "load_backbone"]


def load_backbone(model: nn.Module, source: Union[PathLike, Mapping[str, Any]], *, strict: bool = True,
                  trust: bool = False, activation: Optional[str] = "quick_gelu") -> BackboneReport:
    """Load a ViFi-CLIP / GA2-CLIP / OpenAI checkpoint's CLIP weights into ``model``.

    Args:
        model: An open_clip ``CLIP`` (or ``CustomTextCLIP``) or an OpenAI-layout CLIP, built with
            the checkpoint's architecture; for ViFi-CLIP files, with the pretrained weights the
            checkpoint started from (its token embedding is kept, see :class:`BackboneReport`).
        source: A checkpoint path, a loaded checkpoint dict, or a state dict.
        strict: Raise unless every checkpoint tensor fits a model key and every model key is
            provided (apart from those the layout does not carry). ``False`` loads what fits.
        trust: Allow unpickling arbitrary objects (``torch.load(weights_only=False)``).
        activation: The MLP activation the checkpoint was trained with: ``"quick_gelu"`` for
            OpenAI's CLIP and everything fine-tuned from it (ViFi-CLIP, GA2-CLIP, X-CLIP),
            ``"gelu"`` for e.g. LAION open_clip models, ``None`` to skip the check. A model built
            with the other activation is refused: the weights would load and give other features.

    Returns:
        The report; ``print(report)`` lists what was loaded, kept, skipped and what did not fit.

    Raises:
        BackboneLoadError: In strict mode, listing every incompatible key; the model is unchanged.
    """
    host_activation = activation_of(model)
    if activation is not None and host_activation is not None and host_activation != activation:
        fix = ("build it with QuickGELU: open_clip.create_model('ViT-B-16-quickgelu') (any '-quickgelu' name, "
               "or quick_gelu=True)" if activation == "quick_gelu" else
               "build it with GELU (an open_clip name without '-quickgelu')")
        raise BackboneLoadError(
            f"the checkpoint was trained with {activation} but {type(model).__name__} uses {host_activation}; the "
            f"weights would load and silently give other features (logits off by ~1e-2): {fix}, or pass "
            f"activation={host_activation!r} if the checkpoint really is a {host_activation} model")
    return load_clip_weights(model, source, strict=strict, trust=trust)
