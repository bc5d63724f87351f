"""Tests of the embedded world: determinism, class-set hygiene, shapes, rendering cues and the
shipped checkpoint."""

import json
import os

import numpy as np
import pytest
import torch

import promptcouple.world as W
from promptcouple.world import render as R
from promptcouple.world import vocab as V

SMALL_EVAL = os.path.join(os.path.dirname(W.CHECKPOINT), "small_eval.json")
TOLERANCE = 2.0  # points; the evaluation is deterministic, this only absorbs BLAS differences


def _all_evaluated_names():
    return {c for n in W.dataset_names() for c in W.dataset_info(n)["classnames"]}


def test_dataset_registry_and_splits():
    assert set(W.dataset_names()) == {"wk400", "whmdb", "wucf", "wssv2"}
    for name in W.dataset_names():
        info = W.dataset_info(name)
        assert len(set(info["classnames"])) == len(info["classnames"])
        assert not set(info["base"]) & set(info["novel"])
        assert sorted(info["base"] + info["novel"]) == sorted(info["classnames"])
        # Every word of a class name occurs in both halves, so novel classes are new
        # combinations of known words rather than unknown words.
        words = lambda names: {w for c in names for w in c.split()}  # noqa: E731
        assert words(info["base"]) == words(info["novel"]), name


def test_no_class_name_overlap_with_auxiliary_sets():
    evaluated = _all_evaluated_names()
    hard = set(W.hard_prompt_source(shots=1).classnames)
    _, anchors = W.anchor_set(per_class=1)
    assert hard and anchors
    assert not hard & evaluated
    assert not set(anchors) & evaluated
    assert not hard & set(anchors)


def test_items_shapes_and_normalisation():
    ds = W.get_dataset("whmdb", "base_train", shots=2)
    info = W.dataset_info("whmdb")
    assert ds.classnames == info["base"]
    assert len(ds) == 2 * len(info["base"])
    x, y = ds[0]
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert isinstance(y, int) and 0 <= y < len(ds.classnames)
    assert sorted(set(ds.labels.tolist())) == list(range(len(ds.classnames)))
    # CLIP normalisation: the range of (0..1 - mean) / std.
    assert x.min() >= (0 - 0.49) / 0.26 - 1e-3 and x.max() <= (1 - 0.40) / 0.26 + 1e-3
    v = ds.videos()
    assert v.shape == (len(ds), 8, 3, 32, 32)
    assert torch.equal(v[0], x)


def test_determinism_by_seed():
    kw = dict(shots=2, test_per_class=2)
    a = W.get_dataset("wucf", "novel_train", split_seed=2, **kw)
    W.datasets._CACHE.clear()  # force a fresh render
    b = W.get_dataset("wucf", "novel_train", split_seed=2, **kw)
    assert torch.equal(a.frames_uint8, b.frames_uint8) and torch.equal(a.labels, b.labels)
    c = W.get_dataset("wucf", "novel_train", split_seed=3, **kw)
    assert not torch.equal(a.frames_uint8, c.frames_uint8)
    d = W.get_dataset("wucf", "novel_train", split_seed=2, world_seed=1, **kw)
    assert not torch.equal(a.frames_uint8, d.frames_uint8)
    # Few-shot splits are nested: K=2 is the prefix of K=16 within each class.
    full = W.get_dataset("wucf", "novel_train", split_seed=2, shots=16)
    for cls in range(len(a.classnames)):
        assert torch.equal(a.frames_uint8[a.labels == cls], full.frames_uint8[full.labels == cls][:2])
    # Test splits do not depend on the training split seed.
    t1 = W.get_dataset("wucf", "base_test", split_seed=1, test_per_class=2)
    t2 = W.get_dataset("wucf", "base_test", split_seed=3, test_per_class=2)
    assert torch.equal(t1.frames_uint8, t2.frames_uint8)


def _mirror_pair(trail: float):
    """The same clip rendered moving left and moving right (no noise)."""
    rng = np.random.default_rng(0)
    n = 4
    attrs = {"shape": np.full(n, V.SHAPES.index("triangle")), "colour": np.arange(n), "size": np.zeros(n, int),
             "texture": np.zeros(n, int), "motion": np.full(n, V.MOTION_IDS.index("left"))}
    style = R.Style(trail=trail)
    b = R.sample_clips(rng, attrs, style)
    b.params["noise_std"][:] = 0
    left = R.render(b, style).float()
    b.motion = np.full(n, V.MOTION_IDS.index("right"))
    right = R.render(b, style).float()
    return left, right


def test_frame_average_blind_to_direction_without_trails():
    left, right = _mirror_pair(trail=0.0)
    assert not torch.equal(left, right)
    # Without trails the right-moving clip is the left-moving one played backwards...
    assert torch.allclose(left.flip(1), right, atol=1.0)
    assert torch.allclose(left.mean(1), right.mean(1), atol=0.5)
    # ...with trails every frame shows the direction, so the frame average differs.
    left, right = _mirror_pair(trail=1.0)
    assert (left.mean(1) - right.mean(1)).abs().max() > 10
    assert W.dataset_info("wssv2")["trail"] == 0.0 and W.dataset_info("wk400")["trail"] > 0


def test_shift_knob_changes_rendering():
    a = W.get_dataset("wk400", "base_train", shots=1, shift=0.0, context=0.0)
    b = W.get_dataset("wk400", "base_train", shots=1, shift=1.0, context=0.0)
    assert a.classnames == b.classnames and torch.equal(a.labels, b.labels)
    # Shift adds texture, clutter and noise: more pixel variance within frames.
    assert b.frames_uint8.float().std(dim=(-1, -2)).mean() > a.frames_uint8.float().std(dim=(-1, -2)).mean()


def test_anchor_set():
    clips, labels = W.anchor_set(per_class=2)
    assert labels == clips.classnames == [c.name for c in V.anchor_classes()]
    assert len(clips) == 2 * len(labels)
    assert clips.videos().shape[1:] == (8, 3, 32, 32)


def test_bad_arguments():
    with pytest.raises(ValueError):
        W.get_dataset("wk400", "validation")
    with pytest.raises(KeyError):
        W.get_dataset("kinetics", "base_test")


@pytest.fixture(scope="module")
def shipped():
    if not os.path.exists(W.CHECKPOINT):
        pytest.fail("the shipped checkpoint is missing: run benchmarks/pretrain_world_clip.py")
    return W.load_world_clip()


def test_checkpoint_file(shipped):
    from safetensors import safe_open
    assert os.path.getsize(W.CHECKPOINT) <= 25 * 2**20
    with safe_open(W.CHECKPOINT, framework="pt") as f:
        meta = f.metadata()
        assert json.loads(meta["config"]) == W.WORLD_CLIP_CONFIG
        assert all(f.get_tensor(k).dtype in (torch.float16, torch.int64) for k in f.keys())
    model, tok = shipped
    import open_clip
    assert type(model) is open_clip.model.CLIP
    assert tok("a square moving left").shape == (1, 32)
    # A missing key must fail: the loader is strict.
    from safetensors.torch import load_file, save_file
    import tempfile
    sd = load_file(W.CHECKPOINT)
    sd.pop(next(iter(sd)))
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "broken.safetensors")
        save_file(sd, p, metadata=meta)
        with pytest.raises(RuntimeError):
            W.load_world_clip(path=p)


def test_checkpoint_zero_shot_matches_model_card(shipped):
    model, tok = shipped
    with open(SMALL_EVAL) as f:
        documented = json.load(f)["accuracy"]
    for key, expected in documented.items():
        name, _, part = key.split("/")
        ds = W.get_dataset(name, f"{part}_test", test_per_class=6, shift=0.0)
        acc = W.zero_shot_accuracy(model, tok, ds.videos(), ds.labels, ds.classnames)
        assert abs(acc - expected) <= TOLERANCE, (key, acc, expected)
        if part == "novel":
            # Unseen classes are recognised: at least 3x chance.
            assert acc >= 3 * 100.0 / len(ds.classnames), (key, acc)
