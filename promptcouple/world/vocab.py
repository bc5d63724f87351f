"""Vocabulary of the embedded world: attributes, motions and the class sets built from them.

Every class set is a list of :class:`ClassDef` (a name plus the attribute constraints a clip
of that class satisfies). The evaluated datasets, the hard-prompt source and the anchor set
are built from *different facets* of the attribute space so their class names never overlap
(``tests/test_world.py`` checks it).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

SHAPES: List[str] = ["square", "circle", "triangle", "cross", "ring", "diamond", "bar", "frame"]
PLURAL = {s: s + "s" for s in SHAPES}

# RGB in [0, 1]; far enough apart that a moderate hue/contrast shift keeps them nameable.
COLOURS: Dict[str, Tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.12, 0.78, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.90, 0.12),
    "purple": (0.60, 0.15, 0.80),
    "orange": (1.00, 0.55, 0.05),
    "white": (0.95, 0.95, 0.95),
    "cyan": (0.10, 0.85, 0.90),
}
COLOUR_NAMES: List[str] = list(COLOURS)
SIZES: Dict[str, float] = {"small": 4.2, "large": 7.0}  # radius in pixels at 32x32
SIZE_NAMES: List[str] = list(SIZES)
TEXTURES: List[str] = ["plain", "striped", "checkered"]

# Motion id -> (canonical phrase, paraphrases). Canonical phrases are what class names use.
MOTIONS: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "left": ("moving left", ("moving to the left", "going left", "sliding left")),
    "right": ("moving right", ("moving to the right", "going right", "sliding right")),
    "up": ("moving up", ("moving upwards", "going up", "rising")),
    "down": ("moving down", ("moving downwards", "going down", "falling")),
    "cw": ("rotating clockwise", ("turning clockwise", "spinning clockwise")),
    "ccw": ("rotating counterclockwise", ("turning counterclockwise", "spinning counterclockwise")),
    "grow": ("growing", ("getting bigger", "expanding")),
    "shrink": ("shrinking", ("getting smaller", "contracting")),
    "blink": ("blinking", ("flashing", "flickering on and off")),
    "bounce": ("bouncing", ("bouncing up and down", "hopping")),
    "zigzag": ("zigzagging", ("moving in a zigzag", "zig-zagging")),
    "orbit": ("orbiting", ("circling around", "moving in a circle")),
    "shake": ("shaking", ("trembling", "jittering")),
    "still": ("standing still", ("not moving", "resting")),
    "fadein": ("fading in", ("appearing slowly", "becoming visible")),
    "fadeout": ("fading out", ("disappearing slowly", "vanishing")),
    "chase": ("chasing", ("following each other", "running after each other")),
    "collide": ("colliding", ("crashing together", "bumping into each other")),
    "separate": ("separating", ("moving apart", "splitting apart")),
}
MOTION_IDS: List[str] = list(MOTIONS)
PAIR_MOTIONS = {"chase", "collide", "separate"}  # rendered with two objects of the same kind


@dataclasses.dataclass(frozen=True)
class ClassDef:
    """One class: its name and the attribute values a clip of the class is rendered with.

    Attributes:
        name: Class name string (what a text prompt gets).
        motion: Motion ids allowed (sampled uniformly).
        shape: Shape names allowed (``None``: any shape).
        colour: Colour names allowed (``None``: any).
        size: Size names allowed (``None``: any).
        texture: Texture names allowed (``None``: any).
    """

    name: str
    motion: Tuple[str, ...]
    shape: Optional[Tuple[str, ...]] = None
    colour: Optional[Tuple[str, ...]] = None
    size: Optional[Tuple[str, ...]] = None
    texture: Optional[Tuple[str, ...]] = None


def _subject(shape: str, motion: str) -> str:
    return f"two {PLURAL[shape]}" if motion in PAIR_MOTIONS else shape


def _grid(rows: Sequence[str], cols: Sequence[str], make) -> Tuple[List[ClassDef], List[int]]:
    """Cartesian class grid with a checkerboard base/novel split (every word in both halves)."""
    classes, is_base = [], []
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            classes.append(make(r, c))
            is_base.append((i + j) % 2 == 0)
    return classes, is_base


# Evaluated datasets. Each entry: (role, builder) -> (classes, base mask).
def _wk400():
    shapes = SHAPES
    motions = ["left", "right", "up", "down", "grow", "shrink", "blink", "bounce"]
    return _grid(shapes, motions, lambda s, m: ClassDef(f"{s} {MOTIONS[m][0]}", (m,), (s,)))


def _whmdb():
    # Small set: interactions and irregular motions of coloured things (HMDB role).
    colours = ["red", "blue", "yellow", "green", "white"]
    motions = ["chase", "collide", "orbit", "zigzag"]
    return _grid(colours, motions, lambda c, m: ClassDef(
        f"{'two ' + c + ' things' if m in PAIR_MOTIONS else c + ' thing'} {MOTIONS[m][0]}", (m,), None, (c,)))


def _wucf():
    # Appearance-heavy set (UCF role): coloured shapes doing any common motion.
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    shapes = ["square", "circle", "triangle", "cross", "diamond"]
    common = ("left", "right", "up", "down", "grow", "shrink", "blink", "bounce", "zigzag", "orbit")
    return _grid(colours, shapes, lambda c, s: ClassDef(f"{c} {s}", common, (s,), (c,)))


def _wssv2():
    # Classes come in pairs that differ only in temporal order (Something-Something role).
    shapes = ["square", "triangle", "cross", "bar"]
    motions = ["left", "right", "up", "down", "grow", "shrink", "cw", "ccw", "fadein", "fadeout",
               "collide", "separate"]
    classes, is_base = [], []
    for i, s in enumerate(shapes):
        for j, m in enumerate(motions):
            subj = f"two {s}-shaped things" if m in PAIR_MOTIONS else f"{s}-shaped thing"
            classes.append(ClassDef(f"{subj} {MOTIONS[m][0]}", (m,), (s,)))
            # Both members of an order pair (j, j^1) land in the same half, so a pair is
            # never separable by its half alone.
            is_base.append(((j // 2) + i) % 2 == 0)
    return classes, is_base


DATASETS = {
    "wk400": ("Kinetics-400 role: large general set, (shape, motion) classes", _wk400),
    "whmdb": ("HMDB-51 role: small set, (colour, motion) classes incl. two-object interactions", _whmdb),
    "wucf": ("UCF-101 role: small appearance-heavy set, (colour, shape) classes", _wucf),
    "wssv2": ("Something-Something-v2 role: classes differ only in temporal order or direction", _wssv2),
}


def class_descriptions(cls: ClassDef) -> Tuple[str, ...]:
    """A class's description set: its name, then the name with its motion phrase replaced by each
    of the motion's paraphrases (``"square moving left"`` -> ``"square moving to the left"``, ...).

    Built from the class name alone, never from any clip's caption. A name without a motion phrase
    (wucf's colour x shape classes, which allow many motions) is its own only description.
    """
    out = [cls.name]
    for motion in cls.motion:
        canon, paraphrases = MOTIONS[motion]
        if canon in cls.name:
            out.extend(cls.name.replace(canon, p) for p in paraphrases)
    return tuple(dict.fromkeys(out))


def hard_prompt_classes() -> List[ClassDef]:
    """Class set that supplies the hard prompts: (texture, motion), no shape or colour named."""
    out = []
    for t in ["striped", "checkered"]:
        for m in ["left", "right", "up", "down", "grow", "shrink", "blink", "bounce", "orbit", "zigzag",
                  "shake", "still"]:
            out.append(ClassDef(f"{t} object {MOTIONS[m][0]}", (m,), None, None, None, (t,)))
    return out


def anchor_classes() -> List[ClassDef]:
    """Irrelevant class set for anchor clips and negative prompts: generic attributes only."""
    common = ("shake", "still", "blink", "orbit", "left", "right", "up", "down")
    out = []
    for z in SIZE_NAMES:
        for t in TEXTURES:
            word = "" if t == "plain" else t + " "
            out.append(ClassDef(f"{z} {word}object", common, None, None, (z,), (t,)))
    return out


_TEMPLATES = (
    "{det} {subj} {mot}",
    "{det} {subj} {mot}",
    "{det} {subj} that is {mot}",
    "a video of {det} {subj} {mot}",
    "the {subj} is {mot}",
    "{subj} {mot}",
)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def caption(rng, shape: str, colour: str, size: str, texture: str, motion: str,
            p_drop_colour: float = 0.5, p_drop_size: float = 0.6, p_drop_texture: float = 0.5,
            p_generic: float = 0.2, p_drop_motion: float = 0.1) -> str:
    """Composes a random caption of a clip from its attributes (paraphrases, dropped words).

    Colour and size words are dropped often on purpose: they are the easiest attributes, and
    captions that always name them let contrastive pretraining ignore shape and motion.

    Args:
        rng: Numpy generator.
        shape, colour, size, texture, motion: Attribute values (motion is a motion id).
        p_drop_colour, p_drop_size, p_drop_texture: Probabilities of leaving a word out.
        p_generic: Probability of a generic noun ("thing", "object", "X-shaped thing").
        p_drop_motion: Probability of a static caption (no motion phrase).

    Returns:
        The caption.
    """
    pair = motion in PAIR_MOTIONS
    adj = []
    if rng.random() > p_drop_size:
        adj.append(size)
    if rng.random() > p_drop_colour:
        adj.append(colour)
    if texture != "plain" and rng.random() > p_drop_texture:
        adj.append(texture)
    g = rng.random()
    if g < p_generic * 0.5:
        noun = rng.choice(["thing", "object"])
        noun_pl = noun + "s"
    elif g < p_generic:
        noun, noun_pl = f"{shape}-shaped thing", f"{shape}-shaped things"
    else:
        noun, noun_pl = shape, PLURAL[shape]
    canon, para = MOTIONS[motion]
    mot = canon if rng.random() < 0.6 else str(rng.choice(para))
    if pair:
        subj, det = " ".join(["two"] + adj + [noun_pl]), ""
    else:
        subj = " ".join(adj + [noun])
        det = _article(subj)
    if rng.random() < p_drop_motion and not pair:
        return f"{det} {subj}".strip()
    tpl = _TEMPLATES[rng.integers(len(_TEMPLATES))]
    if pair and tpl.startswith("the "):
        tpl = "{subj} {mot}"
    out = tpl.format(det=det, subj=subj, mot=mot)
    return " ".join(out.split())
