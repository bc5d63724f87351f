"""Small generated videos whose class is visible, for examples, tests and smoke runs offline.

Each clip is a square of its class's colour sliding right over a grey background: any CLIP-style
model learns to tell the classes apart in a few steps, and the files go through the same decoding,
list and label code as real data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from promptcouple.fileio import PathLike

COLOURS = ((230, 30, 30), (30, 200, 50), (40, 80, 240), (240, 240, 240))
COLOUR_CLASSES = ("red", "green", "blue", "white")


def write_sliding_square_videos(folder: PathLike, n: int, *, classnames: Sequence[str] = COLOUR_CLASSES,
                                width: int = 48, height: int = 48, frames: int = 8, fps: int = 8) -> Path:
    """Write ``n`` mp4 clips (class ``i % len(classnames)``), ``list.txt`` (``path label``) and ``labels.csv``.

    Returns:
        The folder.
    """
    import av
    import numpy as np

    from promptcouple.data.lists import write_label_csv

    if len(classnames) > len(COLOURS):
        raise ValueError(f"at most {len(COLOURS)} classes have a colour, got {len(classnames)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        label = i % len(classnames)
        with av.open(str(folder / f"clip{i}.mp4"), "w") as out:
            stream = out.add_stream("mpeg4", rate=fps)
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            for t in range(frames):
                img = np.full((height, width, 3), 60, np.uint8)
                img[10:30, 4 * t:4 * t + 16] = COLOURS[label]
                out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            out.mux(stream.encode())
        lines.append(f"clip{i}.mp4 {label}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    write_label_csv(folder / "labels.csv", list(classnames))
    return folder
