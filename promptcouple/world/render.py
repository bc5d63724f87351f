"""Vectorised procedural renderer of the embedded world.

A clip is described by a :class:`ClipBatch` of per-clip numpy parameters (sampled by
:func:`sample_clips` from class definitions) and drawn by :func:`render` with torch in one
pass over the whole batch: analytic backgrounds, up to two moving objects with faint trails of
their previous positions (so a single frame shows the direction of motion), static clutter,
camera pan and pixel noise.

The ``shift`` knob (0..1) moves the rendering away from the pretraining distribution
(``shift=0`` is exactly the pretraining style, 1 the strongest shift): textured brighter backgrounds, static clutter,
camera pan, hue and contrast changes of the objects, outline-only drawing, weaker trails and
more noise. ``context`` (0..1) is the probability that a clip uses its class's own scene
(background), a class-correlated cue that tuning on base classes can exploit and that does not
transfer to novel classes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from . import vocab as V

_MOTION_INDEX = {m: i for i, m in enumerate(V.MOTION_IDS)}
_SHAPE_INDEX = {s: i for i, s in enumerate(V.SHAPES)}
_PALETTE = np.array([V.COLOURS[c] for c in V.COLOUR_NAMES], dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class Style:
    """Rendering style shared by all clips of a batch.

    Attributes:
        frames: Number of frames T.
        res: Frame height and width in pixels (geometry is defined at 32 and scaled).
        shift: Domain shift away from the pretraining style, 0 (none) to 1 (strongest).
        trail: Strength of the motion trails (0 removes every cue to temporal order within a frame).
        context: Probability that a clip is drawn in its class's own scene.
    """

    frames: int = 8
    res: int = 32
    shift: float = 0.0
    trail: float = 1.0
    context: float = 0.0


@dataclasses.dataclass
class ClipBatch:
    """Per-clip attribute indices (int arrays of length N); continuous parameters live in ``params``."""

    shape: np.ndarray
    colour: np.ndarray
    size: np.ndarray
    texture: np.ndarray
    motion: np.ndarray
    params: Dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.shape)


def _pick(rng: np.random.Generator, allowed: Optional[Sequence[str]], universe: Sequence[str], n: int) -> np.ndarray:
    pool = list(universe) if allowed is None else list(allowed)
    idx = [list(universe).index(a) for a in pool]
    return np.asarray(idx)[rng.integers(0, len(idx), n)]


def sample_attributes(rng: np.random.Generator, classes: Sequence[V.ClassDef], labels: np.ndarray):
    """Samples discrete attributes for clips whose class indices are ``labels``."""
    n = len(labels)
    out = {k: np.zeros(n, dtype=np.int64) for k in ("shape", "colour", "size", "texture", "motion")}
    for c in np.unique(labels):
        cd = classes[int(c)]
        sel = np.nonzero(labels == c)[0]
        k = len(sel)
        out["shape"][sel] = _pick(rng, cd.shape, V.SHAPES, k)
        out["colour"][sel] = _pick(rng, cd.colour, V.COLOUR_NAMES, k)
        out["size"][sel] = _pick(rng, cd.size, V.SIZE_NAMES, k)
        out["texture"][sel] = _pick(rng, cd.texture, V.TEXTURES, k)
        out["motion"][sel] = _pick(rng, cd.motion, V.MOTION_IDS, k)
    return out


def sample_clips(rng: np.random.Generator, attrs: Dict[str, np.ndarray], style: Style,
                 scenes: Optional[np.ndarray] = None, labels: Optional[np.ndarray] = None) -> ClipBatch:
    """Samples every continuous parameter of the clips (positions, speeds, backgrounds, nuisances).

    Args:
        rng: Numpy generator; the only source of randomness, so clips are deterministic by seed.
        attrs: Discrete attributes from :func:`sample_attributes` (or built by hand).
        style: Rendering style.
        scenes: Optional (num_classes, 9) per-class scene parameters used with probability
            ``style.context`` (needs ``labels``).
        labels: Class index of each clip (only for scenes).

    Returns:
        The batch description for :func:`render`.
    """
    n = len(attrs["shape"])
    sh = float(style.shift)
    p: Dict[str, np.ndarray] = {}
    u = lambda lo, hi, *s: rng.uniform(lo, hi, (n, *s)).astype(np.float32)  # noqa: E731
    # Background: base colour, gradient and three low-frequency waves. The shift brightens it and
    # adds texture, as downstream video differs from the pretraining images.
    base = u(0.0, 0.3 + 0.25 * sh) [:, None] * (0.55 + 0.45 * u(0, 1, 3))
    p["bg_base"] = base
    p["bg_grad"] = u(-1, 1, 3) * (0.04 + 0.12 * sh)
    p["bg_gdir"] = u(0, 2 * math.pi)
    p["bg_wave_amp"] = u(0, 1, 3) * (0.01 + 0.12 * sh)
    p["bg_wave_f"] = u(0.1, 0.6, 3, 2) * np.sign(u(-1, 1, 3, 2))
    p["bg_wave_ph"] = u(0, 2 * math.pi, 3)
    p["bg_wave_tint"] = u(0.3, 1.0, 3, 3)
    if scenes is not None and style.context > 0:
        use = rng.uniform(0, 1, n) < style.context
        sc = scenes[labels]
        p["bg_base"] = np.where(use[:, None], sc[:, 0:3] * u(0.9, 1.1)[:, None], p["bg_base"]).astype(np.float32)
        p["bg_grad"] = np.where(use[:, None], sc[:, 3:6], p["bg_grad"]).astype(np.float32)
        p["bg_gdir"] = np.where(use, sc[:, 6], p["bg_gdir"]).astype(np.float32)
    # Object appearance: colour jitter, and under shift a hue rotation, a pull towards the
    # background (lower contrast) and sometimes outline-only drawing.
    rgb = _PALETTE[attrs["colour"]] + u(-0.05, 0.05, 3)
    rgb = _rotate_hue(rgb, u(-0.45, 0.45) * sh)
    pull = u(0, 0.35) * sh
    rgb = rgb * (1 - pull[:, None]) + p["bg_base"] * pull[:, None]
    p["rgb"] = np.clip(rgb, 0, 1).astype(np.float32)
    p["outline"] = (rng.uniform(0, 1, n) < 0.35 * sh).astype(np.float32)
    p["tex_phase"] = u(0, 2)
    # Geometry (pixels at 32x32).
    r0 = np.array([V.SIZES[V.SIZE_NAMES[i]] for i in attrs["size"]], np.float32) * u(0.9, 1.1)
    pair = np.isin(attrs["motion"], [_MOTION_INDEX[m] for m in V.PAIR_MOTIONS])
    r0 = np.where(pair, r0 * 0.72, r0)
    p["r0"] = r0.astype(np.float32)
    p["theta0"] = u(-0.3, 0.3)
    p["speed"] = u(1.3, 2.1)
    p["dir"] = rng.integers(0, 4, n)  # for chase / zigzag / collide axis
    p["sign"] = np.where(rng.uniform(0, 1, n) < 0.5, -1.0, 1.0).astype(np.float32)
    p["omega"] = u(0.25, 0.45)
    p["growth"] = u(0.09, 0.14)
    p["blink_period"] = rng.integers(1, 3, n).astype(np.float32)
    p["blink_phase"] = rng.integers(0, 4, n).astype(np.float32)
    p["bounce_amp"] = u(5.0, 8.0)
    p["bounce_period"] = u(3.0, 4.5)
    p["orbit_r"] = u(4.5, 6.5)
    p["orbit_w"] = u(0.6, 0.9)
    p["phase"] = u(0, 2 * math.pi)
    p["zig_amp"] = u(2.0, 3.2)
    p["jitter"] = rng.normal(0, 1.3, (n, style.frames + 2, 2)).astype(np.float32)
    p["gap"] = u(2.3, 2.8) * r0
    p["cx"] = u(-1, 1)  # relative centre offsets, mapped into the free area in _trajectories
    p["cy"] = u(-1, 1)
    # Camera pan (px/frame) and clutter, both only under shift.
    p["pan"] = u(-0.8, 0.8, 2) * sh
    n_clutter = 3
    p["clutter_on"] = (rng.uniform(0, 1, (n, n_clutter)) < 0.6 * sh).astype(np.float32)
    p["clutter_xy"] = u(2, 30, n_clutter, 2)
    p["clutter_r"] = u(2.0, 3.5, n_clutter)
    p["clutter_shape"] = rng.integers(0, len(V.SHAPES), (n, n_clutter))
    grey = u(0.25, 0.7, n_clutter)[..., None]
    p["clutter_rgb"] = np.clip(grey + u(-0.12, 0.12, n_clutter, 3), 0, 1).astype(np.float32)
    p["clutter_theta"] = u(0, math.pi, n_clutter)
    p["noise_seed"] = rng.integers(0, 2**62, 1)
    p["noise_std"] = np.full(n, 0.015 + 0.05 * sh, np.float32)
    p["trail"] = np.full(n, style.trail * (1.0 - 0.4 * sh), np.float32)
    return ClipBatch(attrs["shape"], attrs["colour"], attrs["size"], attrs["texture"], attrs["motion"], p)


def _rotate_hue(rgb: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotates colours about the grey axis (Rodrigues), a crude hue shift."""
    k = np.ones(3, np.float32) / math.sqrt(3)
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    cross = np.cross(np.broadcast_to(k, rgb.shape), rgb)
    dot = (rgb @ k)[:, None]
    return rgb * c + cross * s + k * dot * (1 - c)


def _trajectories(b: ClipBatch, frames: int):
    """Object A and B state over times -2..T-1: dict of (N, T+2) arrays x, y, r, theta, alpha."""
    p = b.params
    n = len(b)
    t = np.arange(-2, frames, dtype=np.float32)[None, :]
    tc = t - (frames - 1) / 2.0  # centred time
    m = b.motion[:, None]
    M = _MOTION_INDEX
    r0 = p["r0"][:, None]
    r = np.repeat(r0, frames + 2, 1)
    theta = np.repeat(p["theta0"][:, None], frames + 2, 1)
    alpha = np.ones((n, frames + 2), np.float32)
    dx = np.zeros((n, frames + 2), np.float32)
    dy = np.zeros((n, frames + 2), np.float32)
    s = p["speed"][:, None]
    sign = p["sign"][:, None]
    dirs = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], np.float32)[p["dir"]]

    def put(arr, motion, val):
        arr[:] = np.where(m == M[motion], val, arr)

    put(dx, "left", -s * tc)
    put(dx, "right", s * tc)
    put(dy, "up", -s * tc)
    put(dy, "down", s * tc)
    put(theta, "cw", p["theta0"][:, None] + p["omega"][:, None] * tc)
    put(theta, "ccw", p["theta0"][:, None] - p["omega"][:, None] * tc)
    put(r, "grow", r0 * np.exp(p["growth"][:, None] * tc))
    put(r, "shrink", r0 * np.exp(-p["growth"][:, None] * tc))
    put(alpha, "blink", (np.floor((t + p["blink_phase"][:, None]) / p["blink_period"][:, None]) % 2 == 0).astype(np.float32))
    bounce = -p["bounce_amp"][:, None] * np.abs(np.sin(math.pi * t / p["bounce_period"][:, None] + p["phase"][:, None]))
    put(dy, "bounce", bounce + p["bounce_amp"][:, None] / 2)
    zig_along = s * tc * sign
    zig_across = p["zig_amp"][:, None] * np.where(np.arange(-2, frames) % 2 == 0, 1.0, -1.0)[None, :]
    horiz = (p["dir"] < 2)[:, None]
    put(dx, "zigzag", np.where(horiz, zig_along, zig_across))
    put(dy, "zigzag", np.where(horiz, zig_across, zig_along))
    ang = p["phase"][:, None] + sign * p["orbit_w"][:, None] * t
    put(dx, "orbit", p["orbit_r"][:, None] * np.cos(ang))
    put(dy, "orbit", p["orbit_r"][:, None] * np.sin(ang))
    put(dx, "shake", p["jitter"][:, :, 0])
    put(dy, "shake", p["jitter"][:, :, 1])
    ramp = np.clip((t + 1) / frames, 0.0, 1.0)
    put(alpha, "fadein", ramp)
    put(alpha, "fadeout", 1.0 - ramp + 1.0 / frames)
    # Two-object motions: B is a second copy of A.
    alpha_b = np.zeros_like(alpha)
    dxb, dyb = dx.copy(), dy.copy()
    gap = p["gap"][:, None]
    # chase: both move along dirs, B trails A by gap.
    cs = 0.75 * s * tc
    put(dx, "chase", dirs[:, :1] * (cs + gap / 2))
    put(dy, "chase", dirs[:, 1:] * (cs + gap / 2))
    put(dxb, "chase", dirs[:, :1] * (cs - gap / 2))
    put(dyb, "chase", dirs[:, 1:] * (cs - gap / 2))
    # collide / separate: along one axis, half distance goes from d0 to touching (r) or back.
    d0 = 13.0 - r0
    frac = np.clip((t + 0.0) / (frames - 1), 0.0, 1.15)
    half_c = np.maximum(d0 - (d0 - r0) * frac, r0 * 0.95)
    half_s = np.maximum(r0 + (d0 - r0) * frac, r0 * 0.95)
    axis = dirs[:, :1] != 0  # horizontal if dir < 2
    for mot, half in (("collide", half_c), ("separate", half_s)):
        put(dx, mot, np.where(axis, -half, 0.0))
        put(dy, mot, np.where(axis, 0.0, -half))
        put(dxb, mot, np.where(axis, half, 0.0))
        put(dyb, mot, np.where(axis, 0.0, half))
    pair = np.isin(b.motion, [M[k] for k in V.PAIR_MOTIONS])[:, None]
    alpha_b = np.where(pair, 1.0, alpha_b)
    # Centre: place the visible path (frames 0..T-1, not the trail times) inside the frame with
    # a 1 px margin; symmetric in time, so a motion and its reverse get the same placement.
    xs = np.concatenate([dx[:, 2:], dxb[:, 2:]], 1)
    ys = np.concatenate([dy[:, 2:], dyb[:, 2:]], 1)
    rmax = r[:, 2:].max(1, keepdims=True)
    lo_x, hi_x = rmax + 1 - xs.min(1, keepdims=True), 31 - rmax - xs.max(1, keepdims=True)
    lo_y, hi_y = rmax + 1 - ys.min(1, keepdims=True), 31 - rmax - ys.max(1, keepdims=True)
    cx = _place(lo_x, hi_x, p["cx"][:, None])
    cy = _place(lo_y, hi_y, p["cy"][:, None])
    # Camera pan moves everything the other way in image coordinates.
    px, py = p["pan"][:, :1] * tc, p["pan"][:, 1:] * tc
    a = dict(x=cx + dx - px, y=cy + dy - py, r=r, theta=theta, alpha=alpha)
    bb = dict(x=cx + dxb - px, y=cy + dyb - py, r=r, theta=theta, alpha=alpha_b)
    return a, bb, (px, py)


def _place(lo, hi, rel):
    mid = (lo + hi) / 2
    half = np.maximum(hi - lo, 0) / 2
    return mid + rel * half


def _shape_norm(k: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A norm that is < 1 inside shape k (object coordinates scaled by the radius)."""
    au, av = u.abs(), v.abs()
    name = V.SHAPES[k]
    if name == "square":
        return torch.maximum(au, av) * 1.15
    if name == "circle":
        return torch.sqrt(u * u + v * v)
    if name == "triangle":
        return torch.maximum((v + 0.1) / 0.9, 1.8 * au - v)
    if name == "cross":
        return torch.minimum(torch.maximum(au / 0.34, av), torch.maximum(au, av / 0.34))
    if name == "ring":
        return (torch.sqrt(u * u + v * v) - 0.72).abs() / 0.28
    if name == "diamond":
        return au + av
    if name == "bar":
        return torch.maximum(au, av / 0.38)
    if name == "frame":
        return (torch.maximum(au, av) * 1.1 - 0.76).abs() / 0.24
    raise KeyError(name)


def _layer(X, Y, x, y, r, theta, alpha, shape, rgb, texture, outline, tex_phase, scale):
    """Coverage (N, L, 1, H, W) and colour (N, L|1, 3, H, W) of one object per clip at L times.

    Clips must be sorted by shape so each shape is a contiguous slice (views, no gathers).
    """
    x, y, r, theta, alpha = (torch.as_tensor(np.asarray(a), dtype=torch.float32)[..., None, None]
                             for a in (x, y, r, theta, alpha))
    x, y, r = x * scale, y * scale, r * scale
    ddx, ddy = X - x, Y - y
    c, s = torch.cos(theta), torch.sin(theta)
    u = (ddx * c + ddy * s) / r
    v = (-ddx * s + ddy * c) / r
    shape = np.asarray(shape)
    norm = torch.empty_like(u)
    start = 0
    for k, cnt in zip(*np.unique(shape, return_counts=True)):
        sl = slice(start, start + cnt)
        norm[sl] = _shape_norm(int(k), u[sl], v[sl])
        start += cnt
    edge = (1 - norm).mul_(r)
    a = (edge + 0.5).clamp_(0, 1)
    outline = np.asarray(outline)
    if outline.any():
        ol = torch.as_tensor(outline, dtype=torch.float32)[:, None, None, None]
        a = a - ol * (edge - 1.2 * scale).clamp(0, 1)
    a = (a * alpha).unsqueeze(2)
    col = torch.as_tensor(np.asarray(rgb), dtype=torch.float32)[:, None, :, None, None]
    texture = np.asarray(texture)
    if texture.any():
        # Texture in object coordinates, so it turns with the object.
        band = 1.7 * scale
        ph = torch.as_tensor(np.asarray(tex_phase), dtype=torch.float32)[:, None, None, None]
        vv = torch.floor(v * r / band + ph)
        stripe = torch.remainder(vv, 2)
        check = torch.remainder(torch.floor(u * r / band + ph) + vv, 2)
        tex = torch.as_tensor(texture)[:, None, None, None]
        fac = torch.where(tex == 1, 0.35 + 0.65 * stripe, torch.where(tex == 2, 0.35 + 0.65 * check, torch.ones_like(u)))
        col = col * fac.unsqueeze(2)
    return a, col


def _composite(canvas, a, col, idx=None):
    if idx is None:
        canvas.mul_(1 - a).add_(col * a)
    else:
        canvas[idx] = canvas[idx] * (1 - a) + col * a


def render(b: ClipBatch, style: Style, frame_idx: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Renders a batch of clips.

    Args:
        b: Clip descriptions from :func:`sample_clips`.
        style: Rendering style (frames, resolution, trail strength).
        frame_idx: Render only these frames of the T (pretraining uses a few per clip).

    Returns:
        uint8 tensor (N, T, 3, H, W), or (N, len(frame_idx), 3, H, W).
    """
    n, T, H = len(b), style.frames, style.res
    fidx = np.arange(T) if frame_idx is None else np.asarray(frame_idx)
    # Times (offset by the two trail steps) needed for the kept frames and their trails.
    times = np.unique(np.concatenate([fidx, fidx + 1, fidx + 2]))
    tpos = {int(t): i for i, t in enumerate(times)}
    # Sort by shape so per-shape work runs on contiguous slices; undone at the end.
    order = np.argsort(b.shape, kind="stable")
    inv = np.argsort(order)
    b = ClipBatch(b.shape[order], b.colour[order], b.size[order], b.texture[order], b.motion[order],
                  {k: (v[order] if k != "noise_seed" else v) for k, v in b.params.items()})
    scale = H / 32.0
    p = b.params
    coords = (torch.arange(H, dtype=torch.float32) + 0.5)
    Y, X = torch.meshgrid(coords, coords, indexing="ij")
    A, B, (px, py) = _trajectories(b, T)
    px, py = px[:, np.r_[0, 1, fidx + 2]], py[:, np.r_[0, 1, fidx + 2]]  # background/clutter use [:, 2:]
    A = {k: v[:, times] for k, v in A.items()}
    B = {k: v[:, times] for k, v in B.items()}
    T = len(fidx)
    # Background, evaluated at camera-shifted coordinates so that it pans with the camera.
    Xs = (X / scale)[None, None] + torch.as_tensor(px[:, 2:], dtype=torch.float32)[..., None, None]
    Ys = (Y / scale)[None, None] + torch.as_tensor(py[:, 2:], dtype=torch.float32)[..., None, None]
    g = torch.as_tensor(p["bg_gdir"])[:, None, None, None]
    ramp = ((Xs - 16) * torch.cos(g) + (Ys - 16) * torch.sin(g)) / 16  # (N, T, H, W)
    bg = torch.as_tensor(p["bg_base"])[:, None, :, None, None] + torch.as_tensor(p["bg_grad"])[:, None, :, None, None] * ramp.unsqueeze(2)
    f = torch.as_tensor(p["bg_wave_f"])
    for k in range(3):
        wave = torch.cos(f[:, k, 0, None, None, None] * Xs + f[:, k, 1, None, None, None] * Ys + torch.as_tensor(p["bg_wave_ph"][:, k])[:, None, None, None])
        amp = torch.as_tensor(p["bg_wave_amp"][:, k][:, None] * p["bg_wave_tint"][:, k])  # (N, 3)
        bg = bg + amp[:, None, :, None, None] * wave.unsqueeze(2)
    canvas = bg.contiguous()
    # Static clutter (drawn in world coordinates, so it pans too).
    for k in range(p["clutter_on"].shape[1]):
        on = p["clutter_on"][:, k] > 0
        if not on.any():
            continue
        idx = np.nonzero(on)[0]
        sub_order = idx[np.argsort(p["clutter_shape"][idx, k], kind="stable")]
        ones = np.ones((len(sub_order), T), np.float32)
        a, col = _layer(X, Y, p["clutter_xy"][sub_order, k, 0:1] - px[sub_order, 2:],
                        p["clutter_xy"][sub_order, k, 1:2] - py[sub_order, 2:], ones * p["clutter_r"][sub_order, k:k + 1],
                        ones * p["clutter_theta"][sub_order, k:k + 1], ones, p["clutter_shape"][sub_order, k],
                        p["clutter_rgb"][sub_order, k], np.zeros(len(sub_order), np.int64), np.zeros(len(sub_order)),
                        np.zeros(len(sub_order)), scale)
        _composite(canvas, a, col, torch.as_tensor(sub_order))
    # Objects: each is drawn once at times -2..T-1; the trails at frame t are the faint copies
    # at t-2 and t-1 (slices of the same layer), then the object itself.
    trail = torch.as_tensor(p["trail"])[:, None, None, None, None]
    for O in (A, B):
        live = (O["alpha"] > 0).any(1)
        if not live.any():
            continue
        idx = None if live.all() else np.nonzero(live)[0]
        sel = slice(None) if idx is None else idx
        a, col = _layer(X, Y, O["x"][sel], O["y"][sel], O["r"][sel], O["theta"][sel], O["alpha"][sel],
                        b.shape[sel], p["rgb"][sel], b.texture[sel], p["outline"][sel], p["tex_phase"][sel], scale)
        tr = trail if idx is None else trail[idx]
        tidx = None if idx is None else torch.as_tensor(idx)
        for lag, w in ((2, 0.22), (1, 0.45), (0, 1.0)):
            sl = [tpos[int(f) + 2 - lag] for f in fidx]
            al = a[:, sl] * (w if lag == 0 else w * tr)
            cl = col[:, sl] if col.shape[1] > 1 else col
            _composite(canvas, al, cl, tidx)
    gen = torch.Generator().manual_seed(int(p["noise_seed"][0]))
    noise = torch.randn(canvas.shape, generator=gen) * torch.as_tensor(p["noise_std"])[:, None, None, None, None]
    out = ((canvas + noise).clamp(0, 1) * 255).round().to(torch.uint8)
    return out[torch.as_tensor(inv)]
