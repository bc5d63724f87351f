"""The methods of the tables, and the Trainer config each makes of a run.

A method is nothing but a set of overrides of a :class:`promptcouple.train.TrainConfig`: prompt
layout, hard prompt, anchor mode, text-consistency weight, the PromptSRC-style guards. Every trained number comes from
:class:`promptcouple.train.Trainer`; the zero-shot row is the frozen model with the template.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:  # setting.py imports this module for the --methods help
    from .setting import Setting


@dataclass(frozen=True)
class Method:
    """One row of a table: how a run's config differs from the shared one.

    Attributes:
        name: Key used by ``--methods`` and in the JSON.
        label: Row label of the tables.
        trained: ``False``: the frozen model with the hand-crafted template (zero-shot CLIP).
        deep: Deep prompts in both towers (IVLP); ``False``: CoOp (layer-0 text context only).
        hard: Couple the soft context to the hard prompt (GA2's coupling).
        anchors: Anchor mode (``consistency``, ``negative``, ``reference``) or ``None``.
        text_consistency: Weight of the KgCoOp-style term (0: off).
        self_reg: PromptSRC-style guards: self-regularisation against the frozen model (the
            setting's ``src_*`` weights) and Gaussian prompt aggregation over the epochs.
        descriptions: Encode each class as the mean of its descriptions (the world's paraphrase
            sets, or a data config section's ``descriptions`` file) in training and evaluation.
    """

    name: str
    label: str
    trained: bool = True
    deep: bool = True
    hard: bool = False
    anchors: Optional[str] = None
    text_consistency: float = 0.0
    self_reg: bool = False
    descriptions: bool = False


DESCRIPTION_SUFFIX = "+desc"


def with_descriptions(method: Method) -> Method:
    """The description row of a method: the same run, each class encoded as its descriptions."""
    return dataclasses.replace(method, name=method.name + DESCRIPTION_SUFFIX,
                               label=method.label + " + descriptions", descriptions=True)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("zero-shot", "zero-shot (frozen, template)", trained=False),
    Method("coop", "CoOp", deep=False),
    Method("ivlp", "IVLP (ViFi-CLIP VL prompting)"),
    Method("kgcoop", "KgCoOp-style (IVLP + text consistency)", text_consistency=8.0),
    Method("ga2-reference", "GA2, released anchor computation", hard=True, anchors="reference"),
    Method("ga2", "GA2, ours (coupling + anchor consistency)", hard=True, anchors="consistency"),
    Method("ga2-negative", "GA2, ours (coupling + negative anchors)", hard=True, anchors="negative"),
    Method("coupling", "ablation: coupling only", hard=True),
    Method("anchors", "ablation: anchors only (IVLP + consistency)", anchors="consistency"),
    Method("ivlp+src", "IVLP + PromptSRC-style (self-regularisation, GPA)", self_reg=True),
    Method("ga2+src", "GA2, ours + PromptSRC-style", hard=True, anchors="consistency", self_reg=True),
)}
# The description rows of the table; any other method gets one with --descriptions.
METHODS.update({m.name: m for m in (with_descriptions(METHODS[n]) for n in ("zero-shot", "ivlp", "ga2", "anchors"))})


def resolve_methods(names: Optional[Sequence[str]], default: Sequence[str], *,
                    descriptions: bool = False) -> list[Method]:
    """``--methods`` values (or ``default``) as :class:`Method` objects, in the registry's order,
    each description row right after its plain row. ``descriptions``: add the description row of
    every method chosen (``NAME+desc``, which ``--methods`` also takes for any method).

    Raises:
        SystemExit: An unknown method name (with the known ones).
    """
    wanted = list(names or default)
    plain = [n[:-len(DESCRIPTION_SUFFIX)] if n.endswith(DESCRIPTION_SUFFIX) else n for n in wanted]
    unknown = [n for n, p in zip(wanted, plain) if p not in METHODS or p.endswith(DESCRIPTION_SUFFIX)]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {list(METHODS)} (any method also as NAME"
                         f"{DESCRIPTION_SUFFIX})")
    if descriptions:
        wanted += [p + DESCRIPTION_SUFFIX for p in plain]
    out = []
    for m in METHODS.values():
        if m.descriptions:
            continue
        if m.name in wanted:
            out.append(m)
        if m.name + DESCRIPTION_SUFFIX in wanted:
            out.append(METHODS.get(m.name + DESCRIPTION_SUFFIX) or with_descriptions(m))
    return out


def prompt_section(method: Method, setting: Setting, hard_prompts: Optional[str]) -> dict:
    """The ``prompts`` section: CoOp (layer-0 text only), IVLP (deep, both towers) or coupled."""
    p = {"ctx_init": setting.ctx_init} if setting.ctx_init else {"n_ctx": setting.n_ctx}
    if method.deep:
        p.update(text_depth=setting.depth, vision_depth=setting.depth, n_vision_ctx=setting.n_vision_ctx)
    else:
        p.update(text_depth=1, vision_depth=0, n_vision_ctx=0)
    if method.hard:
        if hard_prompts is None:
            raise SystemExit(f"method {method.name!r} needs a hard prompt: --hard-prompts, or a "
                             "'hard_prompts' / 'hard_prompt_source' entry in --data-config")
        p["hard_prompts"] = hard_prompts
    return p


def run_config(method: Method, setting: Setting, model: dict, data: dict, out_dir: Path, *,
               seed: int, hard_prompts: Optional[str] = None, anchors: Optional[dict] = None,
               base_dir: Optional[Path] = None, eval_every: Optional[int] = None) -> dict:
    """The whole training config of one run, as the nested dict ``TrainConfig.from_dict`` takes,
    with the folder its relative paths are resolved against: ``{"config", "base_dir"}``."""
    every = setting.eval_every if eval_every is None else eval_every
    cfg = {
        "model": dict(model),
        "prompts": prompt_section(method, setting, hard_prompts),
        "data": copy.deepcopy(data),
        "optim": {"epochs": setting.epochs, "warmup_epochs": min(setting.warmup_epochs, setting.epochs),
                  "batch_size": setting.batch_size, "lr": setting.lr},
        "loss": {"text_consistency": method.text_consistency, "text_consistency_template": setting.template},
        "eval": {"batch_size": 64, "every_epochs": every},
        "run": {"output_dir": str(out_dir), "seed": seed, "precision": setting.precision,
                "device": setting.device, "progress": False},
    }
    if method.self_reg:
        cfg["loss"].update(self_reg_text=setting.src_text, self_reg_vision=setting.src_vision,
                           self_reg_kl=setting.src_kl)
        cfg["optim"]["prompt_average"] = True
    if anchors is not None:
        cfg["anchors"] = anchors
    _set_descriptions(cfg["data"], method)
    return {"config": cfg, "base_dir": str(base_dir) if base_dir is not None else None}


def _set_descriptions(data: dict, method: Method) -> None:
    """Descriptions on for a description row, off for every other: the world's paraphrase sets, or
    the ``descriptions`` file a data config section names."""
    if data.get("world") is not None:
        if method.descriptions:
            data["world"]["descriptions"] = True
        else:  # left out rather than false: the configs (and cached hard prompts' digests) stay as they were
            data["world"].pop("descriptions", None)
        return
    if not method.descriptions:
        data.pop("descriptions", None)
    elif not data.get("descriptions"):
        raise SystemExit(f"method {method.name!r} needs class descriptions: a 'descriptions' file in the dataset's "
                         "section of --data-config (CSV class,description or JSON {class: [descriptions]})")
