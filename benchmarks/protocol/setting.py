"""What the runs of one benchmark invocation share: the :class:`Setting`, its presets, the options.

The defaults are the library's: prompt layout from :class:`promptcouple.CouplingConfig`, optimiser,
frames, anchors and run from the sections of :class:`promptcouple.train.TrainConfig` (all of them
the paper's protocol), so a benchmark and a training config cannot drift apart. The presets only
say where a benchmark differs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

from promptcouple import CouplingConfig
from promptcouple.config import DEFAULT_N_CTX
from promptcouple.constants import HAND_CRAFTED_TEMPLATE, ZERO_SHOT_TEMPLATE
from promptcouple.train.config import AnchorConfig, DataConfig, OptimConfig, RunConfig, WorldDataConfig

from .methods import METHODS

_PROMPTS, _OPTIM, _DATA, _ANCHORS, _RUN = CouplingConfig(), OptimConfig(), DataConfig(), AnchorConfig(), RunConfig()
_WORLD_DATA = WorldDataConfig()


@dataclass
class Setting:
    """Everything shared by the runs of one benchmark invocation.

    Attributes:
        epochs, warmup_epochs, batch_size, lr: The optimiser section.
        shots: K, training clips per class.
        num_frames: Frames per clip.
        image_size: Frame side.
        test_per_class: World test clips per class (``None``: the world's default).
        anchor_per_class: World anchor clips per anchor class.
        anchor_weight: Weight of the anchor term.
        n_ctx, n_vision_ctx, depth: Prompt layout (``depth`` layers in each tower for deep methods).
        ctx_init: Phrase initialising the soft text context (its token count sets ``n_ctx``);
            ``None``: ``n_ctx`` random tokens.
        hard_epochs: Epochs of the hard-prompt run on the hard-prompt source.
        eval_every: Evaluate every N epochs for the curves (0: only at the end).
        seed: Base seed; split ``s`` runs with ``seed + s``.
        precision, device: The run section.
        world_shift, world_context: The world's knobs for the downstream clips (``None``: the
            world's defaults); ignored for real data.
        template: The hand-crafted prompt: the zero-shot row, the KgCoOp-style target and the
            anchors' negative prompts.
        src_text, src_vision, src_kl: Weights of the PromptSRC-style self-regularisation of the
            ``+src`` methods (PromptSRC's 25, 10, 1 for images).
    """

    epochs: int = _OPTIM.epochs
    warmup_epochs: float = _OPTIM.warmup_epochs
    batch_size: int = _OPTIM.batch_size
    lr: float = _OPTIM.lr
    shots: int = _WORLD_DATA.shots
    num_frames: int = _DATA.num_frames
    image_size: int = _DATA.image_size
    test_per_class: Optional[int] = None
    anchor_per_class: int = _ANCHORS.per_class
    anchor_weight: float = _ANCHORS.weight
    n_ctx: int = DEFAULT_N_CTX
    ctx_init: Optional[str] = _PROMPTS.ctx_init
    n_vision_ctx: int = _PROMPTS.n_vision_ctx
    depth: int = _PROMPTS.text_depth
    hard_epochs: int = _OPTIM.epochs
    eval_every: int = 1
    seed: int = _RUN.seed
    precision: str = _RUN.precision
    device: str = _RUN.device
    world_shift: Optional[float] = None
    world_context: Optional[float] = None
    template: str = ZERO_SHOT_TEMPLATE
    src_text: float = 25.0
    src_vision: float = 10.0
    src_kl: float = 1.0


# The world presets, measured on this project's shared 2-core CPU machine (1 thread per run, 2 runs
# side by side), world CLIP sha1 64c8f819d133 (promptcouple/world/assets/MODEL_CARD.md), default shift 0.25:
# - 4 frames of 32x32, 4 vision tokens (appended to only 16 patch tokens, more dominate the
#   tower), the soft context initialised from the template "a video of a" (so training starts from
#   the zero-shot classifier), prompts in all 4 layers of both towers;
# - context 1.0 (every downstream clip in its class's own scene: a cue tuning can learn on base
#   classes and that does not transfer to novel ones; the world's default is 0.5), lr 1e-2, 8
#   epochs: IVLP over zero-shot, 3 splits, average base gain / base-novel gap widening:
#   context 0.5, lr 5e-3, 5 epochs +1.8 / +3.0; lr 1e-2 +3.6 / -; context 1.0, lr 5e-3, 5 epochs
#   +8.5 / +9.8; context 1.0, lr 1e-2, 8 epochs +10.8 / +12.6 (benchmarks/results/);
# - full: all 50 test clips per class of the world (so that a 1-point HM difference is readable
#   against the bootstrap over clips), and to pay for them evaluation for the curves every 4
#   epochs only; quick: 8 test clips per class, evaluation after every epoch.
# Wall times of base2novel.py: see the README (full) and the script's docstring (quick).
WORLD_PRESETS = {
    "quick": dict(epochs=3, warmup_epochs=0.5, batch_size=16, lr=1e-2, num_frames=4, image_size=32,
                  test_per_class=8, anchor_per_class=4, ctx_init="a video of a", n_vision_ctx=4, depth=4,
                  hard_epochs=3, world_context=1.0, eval_every=1),
    "full": dict(epochs=8, warmup_epochs=1.0, batch_size=16, lr=1e-2, num_frames=4, image_size=32,
                 test_per_class=50, anchor_per_class=8, ctx_init="a video of a", n_vision_ctx=4, depth=4,
                 hard_epochs=5, world_context=1.0, eval_every=4),
}
# Real backbones: the paper's protocol (docs/METHOD.md section 1), i.e. the Setting's defaults (prompts
# at the effective lr 4e-3), with the paper's 32 frames, bf16 and its hand-crafted prompt.
REAL_PRESET = dict(num_frames=32, precision="bf16", template=HAND_CRAFTED_TEMPLATE)
# Splits of a run without --splits.
SPLITS = {"quick": 1, "full": 3}


def quick_differences(args: argparse.Namespace) -> str:
    """The line under a quick run's table: how its preset differs from the full one."""
    changed = [("splits", SPLITS["quick"], SPLITS["full"])]
    if args.data_config is None:  # the world's presets; real data has one, and --quick only runs fewer splits
        quick, full = WORLD_PRESETS["quick"], WORLD_PRESETS["full"]
        changed += [(key.replace("_", " "), quick[key], full[key]) for key in quick if quick[key] != full[key]]
    return ("Quick setting: " + ", ".join(f"{name} {q}" for name, q, _ in changed)
            + "; the full one (without --quick): " + ", ".join(f"{name} {f}" for name, _, f in changed) + ".")


def make_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark script's parser: its docstring's first paragraph as the description, the rest
    as the epilog, and the options every benchmark script takes."""
    description, _, rest = doc.strip().partition("\n\n")
    parser = argparse.ArgumentParser(description=description, epilog=rest,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    return parser


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark script takes."""
    g = parser.add_argument_group("backbone and data")
    g.add_argument("--model", default="world", help="'world' (embedded world CLIP), an open_clip name, or 'tiny'")
    g.add_argument("--pretrained", default=None, help="open_clip pretrained tag (openai) or checkpoint path")
    g.add_argument("--backbone-checkpoint", default=None,
                   help="ViFi-CLIP / GA2-CLIP checkpoint to load the backbone from")
    g.add_argument("--data-config", default=None, help="YAML with per-dataset data sections (real data)")
    g.add_argument("--frames", type=int, default=None, help="frames per clip")
    g.add_argument("--image-size", type=int, default=None, help="frame side (default: the model's)")
    g.add_argument("--hard-prompts", default=None, help="prompt file to use as the hard prompt (skips training one)")
    g.add_argument("--world-seed", type=int, default=0, help="seed of the generated world")
    g.add_argument("--split-seed", type=int, default=1,
                   help="first training split: splits are SPLIT_SEED, SPLIT_SEED+1, ... (1 = s1, s2, s3)")
    g.add_argument("--shift", type=float, default=None, help="world: domain shift of the downstream data")
    g.add_argument("--context", type=float, default=None, help="world: probability of a class's own scene")
    g = parser.add_argument_group("what to run")
    g.add_argument("--quick", action="store_true", help="the quick setting (< 5 minutes on 2 cores)")
    g.add_argument("--methods", nargs="+", default=None,
                   help=f"subset of {list(METHODS)}; any method also as NAME+desc (its description row)")
    g.add_argument("--descriptions", action="store_true",
                   help="also run every chosen method with class descriptions (a NAME+desc row beside each): "
                        "the world's paraphrase sets, or each dataset's 'descriptions' file in --data-config")
    g.add_argument("--datasets", nargs="+", default=None, help="subset of the datasets")
    g.add_argument("--splits", type=int, default=None,
                   help=f"number of training splits (default {SPLITS['full']}, quick {SPLITS['quick']})")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--shots", type=int, default=None)
    g.add_argument("--test-per-class", type=int, default=None, help="world: test clips per class")
    g.add_argument("--anchor-weight", type=float, default=None)
    g.add_argument("--template", default=None, help="hand-crafted prompt with {} (default: the backbone's)")
    g = parser.add_argument_group("output and resources")
    g.add_argument("--out", default="runs/benchmarks", help="output directory (runs, hard prompts, plot)")
    g.add_argument("--json", default=None, help="write the results here (default OUT/<script>.json)")
    g.add_argument("--workers", type=int, default=None,
                   help="runs in parallel, one process each (default: 2 on a CPU-only machine with >= 2 cores, else 1)")
    g.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (default: 1 for the world's small models, else torch's default)")
    g.add_argument("--device", default="auto")
    g.add_argument("--precision", default=None, choices=("fp32", "bf16", "fp16"))


def make_setting(args: argparse.Namespace) -> Setting:
    """The preset of the data source (world quick / full, or real data), then the options on top."""
    world_data = args.data_config is None
    base = dict(WORLD_PRESETS["quick" if args.quick else "full"]) if world_data else dict(REAL_PRESET)
    if args.model == "tiny":  # the random two-layer test model (smoke runs)
        base.update(image_size=32, depth=2, n_ctx=4, n_vision_ctx=4, precision="fp32")
    s = Setting(**base)
    for key, value in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr),
                       ("shots", args.shots), ("num_frames", args.frames), ("image_size", args.image_size),
                       ("test_per_class", args.test_per_class), ("anchor_weight", args.anchor_weight),
                       ("precision", args.precision), ("template", args.template),
                       ("world_shift", args.shift), ("world_context", args.context)):
        if value is not None:
            setattr(s, key, value)
    if args.epochs is not None:
        s.warmup_epochs = min(s.warmup_epochs, s.epochs)
        s.hard_epochs = min(s.hard_epochs, max(1, s.epochs))
    s.device = args.device
    return s


def model_section(args: argparse.Namespace) -> dict:
    """The runs' ``model`` section: the backbone's name and, where given, its weights."""
    m = {"name": args.model}
    if args.pretrained is not None:
        m["pretrained"] = args.pretrained
    if args.backbone_checkpoint is not None:
        m["backbone_checkpoint"] = args.backbone_checkpoint
    return m
