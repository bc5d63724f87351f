"""Generic attribute anchors (GAA): irrelevant videos and their labels keep the semantic space open.

Prompt tuning on a few base classes narrows CLIP's space to those classes. Clips of *irrelevant*
classes and their labels as negative prompts ("a video of a person {label}.", encoded by the
frozen text tower) anchor the generic attributes of the pre-trained space. docs/METHOD.md section 2
shows that the released computation has no effect with its single anchor label, so this module
offers two terms that act, and the released one for comparison:

* ``"consistency"`` (default): on anchor clips, the prompted model's distribution over the anchor
  labels stays close (KL) to the frozen model's; optionally also its features (cosine distance).
* ``"negative"``: anchor clips must be classified into their own labels over the joint label set
  [training classes + anchor labels], so the class prompts cannot absorb generic attributes.
* ``"reference"``: ``logit[b, k] += alpha * scale * (a . u)`` exactly as released; see
  ``adjust_logits``. With one anchor label this adds a constant to every logit: zero gradient.
"""

from __future__ import annotations

import warnings
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from promptcouple.constants import HAND_CRAFTED_TEMPLATE, class_key, fill_template
from promptcouple.errors import AnchorOverlapError, InvalidInputError, RunError

MODES = ("consistency", "negative", "reference")


def check_anchor_overlap(anchor_labels: Sequence[str], classes: Mapping[str, Sequence[str]], *,
                         allow: bool = False) -> dict[str, list[str]]:
    """The one check that anchor labels stay disjoint from the trained and evaluated classes.

    An anchor label that is also a class leaks that class into the anchor term: the term then
    pulls its clips towards the frozen model (or, in ``"negative"`` mode, away from the class),
    and base or novel accuracy no longer measures what the protocol says (docs/METHOD.md section 3).
    That silently invalidates a result, so it is an error, not a warning; ``allow=True`` is the
    explicit way to run such an experiment anyway.

    Args:
        anchor_labels: The anchor class names.
        classes: Class names by role, e.g. ``{"training": base, "novel evaluation": novel}``.
        allow: Return the overlaps instead of raising.

    Returns:
        The overlapping labels (compared ignoring case and underscores) by role; empty if none.

    Raises:
        AnchorOverlapError: Some label overlaps and ``allow`` is false.
    """
    anchors = {class_key(a) for a in anchor_labels}
    found = {}
    for role, names in classes.items():
        overlap = sorted(anchors & {class_key(n) for n in names})
        if overlap:
            found[role] = overlap
    if found and not allow:
        role, overlap = next(iter(found.items()))
        raise AnchorOverlapError(
            f"{len(overlap)} anchor class(es) are also {role} classes, which leaks them into the anchors: "
            f"{overlap[:10]}; use a disjoint anchor set, or allow the overlap explicitly "
            "(AnchorRegularizer(allow_overlap=True); config: anchors.allow_overlap: true)")
    return found


class AnchorRegularizer(nn.Module):
    """The anchor term of GA2-CLIP, in a form whose gradient is not zero.

    Args:
        wrapper: The ``CouplingPromptWrapper`` being trained.
        anchor_labels: Names of the irrelevant anchor classes (the negative prompts).
        mode: ``"consistency"``, ``"negative"`` or ``"reference"`` (see the module docstring).
        weight: Multiplies the returned loss (consistency/negative modes).
        classnames: Training classes; needed by ``"negative"`` when no ``class_features`` are
            passed, and checked for overlap with the anchor labels (see :func:`check_anchor_overlap`).
        template: Hand-crafted template of the negative prompts.
        anchor_text: In ``"consistency"`` mode, which text the prompted side compares against:
            ``"prompted"`` (anchor labels through the prompted text tower: constrains both towers)
            or ``"frozen"`` (the negative prompts themselves: constrains the vision prompts only).
        feature_weight: Weight of ``1 - cos(prompted, frozen)`` anchor video features (consistency).
        alpha: Scale of the released term (reference mode).
        allow_overlap: Accept anchor labels that are also class names (they leak those classes).
        cache_frozen: Keep the frozen model's view of each anchor clip (its target logits and
            features, a few hundred numbers a clip) by the ``clip_ids`` the caller passes, so the
            frozen vision pass runs once per clip instead of every step (consistency mode). Right
            only when an anchor clip is the same tensor every time it is drawn (anchors not
            augmented) and the host does not train (no ``train_host``): that is the trade.

    Raises:
        AnchorOverlapError: An anchor label is also a training class (unless ``allow_overlap``).
    """

    def __init__(self, wrapper: nn.Module, anchor_labels: Sequence[str], *, mode: str = "consistency",
                 weight: float = 1.0, classnames: Optional[Sequence[str]] = None,
                 template: str = HAND_CRAFTED_TEMPLATE, anchor_text: str = "prompted",
                 feature_weight: float = 0.0, alpha: float = 1.0, allow_overlap: bool = False,
                 cache_frozen: bool = False):
        super().__init__()
        if mode not in MODES:
            raise InvalidInputError(f"mode={mode!r}: expected one of {MODES}")
        if anchor_text not in ("prompted", "frozen"):
            raise InvalidInputError(f"anchor_text={anchor_text!r}: expected 'prompted' or 'frozen'")
        labels = list(anchor_labels)
        if not labels or not all(isinstance(x, str) and x.strip() for x in labels):
            raise InvalidInputError("anchor_labels must be a non-empty list of non-empty strings")
        if "{}" not in template:
            raise InvalidInputError(f"template {template!r} has no '{{}}' for the label")
        # Not a submodule: the regulariser must not own (or save) the model it regularises.
        object.__setattr__(self, "wrapper", wrapper)
        self.anchor_labels = labels
        self.mode, self.weight, self.template = mode, float(weight), template
        self.anchor_text, self.feature_weight, self.alpha = anchor_text, float(feature_weight), float(alpha)
        self.classnames = list(classnames) if classnames is not None else None
        self.allow_overlap = allow_overlap
        if cache_frozen and getattr(wrapper, "train_host", ()):
            raise InvalidInputError(f"cache_frozen=True with train_host={list(wrapper.train_host)}: the host trains, so its "
                             "view of an anchor clip changes every step; leave cache_frozen off")
        self.cache_frozen = bool(cache_frozen)
        self._frozen_views: dict = {}  # clip id -> (frozen video feature, target logits)
        self.register_buffer("_frozen_text", None, persistent=False)
        if self.classnames is not None:
            self.check_leakage(self.classnames, "training")
        if mode == "reference":
            if len(labels) == 1:
                warnings.warn("AnchorRegularizer(mode='reference') with one anchor label adds the same number "
                              "to every logit: under cross-entropy its gradient is exactly zero and it has "
                              "no effect (as in the released GA2-CLIP code). Use mode='consistency' or "
                              "'negative' for a term that acts.", stacklevel=2)
            elif self.classnames is not None and len(labels) != len(self.classnames):
                raise InvalidInputError(f"reference mode broadcasts {len(labels)} anchor labels over "
                                 f"{len(self.classnames)} classes: the released code crashes here; "
                                 "it runs only with 1 label or as many labels as classes")

    def check_leakage(self, names: Sequence[str], role: str = "evaluation") -> list[str]:
        """Anchor labels that are also ``role`` class names: an error unless ``allow_overlap``.

        Returns:
            The overlapping labels (only ever non-empty with ``allow_overlap=True``).
        """
        found = check_anchor_overlap(self.anchor_labels, {role: names}, allow=self.allow_overlap)
        return found.get(role, [])

    # ----------------------------------------------------------------------------------------

    def frozen_text_features(self) -> torch.Tensor:
        """Negative prompts through the frozen, un-prompted text tower: computed once, then cached."""
        device = self.wrapper.device
        if self._frozen_text is None or self._frozen_text.device != device:
            self._frozen_text = self.wrapper.encode_frozen_text(fill_template(self.template, self.anchor_labels))
        return self._frozen_text

    def _video(self, clips: torch.Tensor):
        return self.wrapper.encode_video(clips, return_tokens=True)

    def _specialize(self, text: torch.Tensor, context) -> torch.Tensor:
        return self.wrapper.host.specialize_text(text, context) if context is not None else text

    def folds_anchor_text(self) -> bool:
        """Whether the prompted anchor labels can join the step's class text pass (consistency mode)."""
        return self.mode == "consistency" and self.anchor_text == "prompted"

    def _frozen_view(self, anchor_clips: torch.Tensor, clip_ids: Optional[Sequence]) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen model's anchor video features and target logits, from the cache where allowed."""
        w = self.wrapper
        use_cache = self.cache_frozen and clip_ids is not None
        if use_cache:
            keys = [int(i) for i in clip_ids]
            if all(k in self._frozen_views for k in keys):
                video, target = zip(*(self._frozen_views[k] for k in keys))
                return torch.stack(video), torch.stack(target)
        frozen_text = self.frozen_text_features()
        with torch.no_grad(), w.prompts_disabled():
            frozen_video, frozen_tokens = self._video(anchor_clips)
            target = w.logits(frozen_video, self._specialize(frozen_text.to(frozen_video.dtype), frozen_tokens))
        if use_cache:
            self._frozen_views.update({k: (v, t) for k, v, t in zip(keys, frozen_video, target)})
        return frozen_video, target

    def forward(self, anchor_clips: torch.Tensor, labels: Optional[torch.Tensor] = None,
                class_features: Optional[torch.Tensor] = None, *, video: Optional[torch.Tensor] = None,
                context=None, anchor_text: Optional[torch.Tensor] = None,
                clip_ids: Optional[Sequence] = None) -> torch.Tensor:
        """The weighted loss term for a batch of anchor clips ``(B, T, C, H, W)``.

        Args:
            anchor_clips: Clips of the irrelevant anchor classes.
            labels: Their indices into ``anchor_labels`` (``"negative"`` mode only).
            class_features: The step's prompted class features ``(K, D)`` or ``(B, K, D)``
                (``"negative"`` mode; saves re-encoding the training classes).
            video, context: The prompted anchor video features (and video context) when the step
                computed them in its own vision pass, batched with the training clips.
            anchor_text: The prompted anchor-label features when the step encoded them in its own
                text pass, batched with the class prompts (consistency mode, see
                :meth:`folds_anchor_text`).
            clip_ids: Stable ids of the anchor clips (dataset indices), for ``cache_frozen``.
        """
        if self.mode == "reference":
            raise RunError("reference mode acts on the classification logits: use "
                               "logits = regularizer.adjust_logits(logits, anchor_clips)")
        w = self.wrapper
        frozen_text = self.frozen_text_features()
        video, tokens = (video, context) if video is not None else self._video(anchor_clips)
        if self.mode == "negative":
            if labels is None:
                raise InvalidInputError("negative mode needs the anchor clips' labels (indices into anchor_labels)")
            labels = torch.as_tensor(labels, device=video.device)
            if labels.min() < 0 or labels.max() >= len(self.anchor_labels):
                raise InvalidInputError(f"anchor labels must lie in [0, {len(self.anchor_labels)}), "
                                 f"got {labels.min().item()}..{labels.max().item()}")
            if class_features is None:
                if self.classnames is None:
                    raise InvalidInputError("negative mode needs class_features= or classnames= at construction")
                class_features = w.encode_text(self.classnames)
            classes = self._specialize(class_features, tokens) if class_features.ndim == 2 else class_features
            negatives = self._specialize(frozen_text.to(classes.dtype), tokens)
            joint = torch.cat([classes, negatives], dim=-2)
            logits = w.logits(video, joint)
            return self.weight * F.cross_entropy(logits.float(), labels + classes.shape[-2])

        # consistency: the frozen model's view of the anchors is the target
        frozen_video, target = self._frozen_view(anchor_clips, clip_ids)
        if anchor_text is not None:
            text = anchor_text
        else:
            text = w.encode_text(self.anchor_labels) if self.anchor_text == "prompted" else frozen_text
        logits = w.logits(video, self._specialize(text.to(video.dtype), tokens))
        loss = F.kl_div(F.log_softmax(logits.float(), -1), F.log_softmax(target.float(), -1),
                        log_target=True, reduction="batchmean")
        if self.feature_weight:
            loss = loss + self.feature_weight * (1 - F.cosine_similarity(video.float(), frozen_video.float(), -1)).mean()
        return self.weight * loss

    def adjust_logits(self, logits: torch.Tensor, anchor_clips: torch.Tensor) -> torch.Tensor:
        """The released computation: ``logits + scale * alpha * (a . u)`` for one anchor clip.

        ``logits`` are the wrapper's scaled logits ``(B, K)`` of the training clips; ``a`` is the
        prompted feature of the single anchor clip, ``u`` the frozen features of the anchor labels
        (both normalised). The ``(1, M)`` term is broadcast over ``(B, K)`` as in the original.
        """
        if self.mode != "reference":
            raise RunError(f"adjust_logits is the reference mode's form; this regulariser is mode={self.mode!r}")
        if anchor_clips.shape[0] != 1:
            raise InvalidInputError(f"the released code appends exactly one anchor clip per batch, got {anchor_clips.shape[0]}")
        m, k = len(self.anchor_labels), logits.shape[-1]
        if m not in (1, k):
            raise InvalidInputError(f"{m} anchor labels cannot broadcast over {k} classes (the released code crashes here)")
        video = F.normalize(self.wrapper.encode_video(anchor_clips), dim=-1)
        neg = video @ F.normalize(self.frozen_text_features().to(video.dtype), dim=-1).t()  # (1, M)
        return logits + self.wrapper.logit_scale_exp * self.alpha * neg
