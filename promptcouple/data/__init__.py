"""Real video data: ViFi-CLIP / GA2-CLIP list files, PyAV and frame-folder decoding, TSN sampling,
CLIP-normalised clip transforms, anchor loaders, and base/novel and K-shot split tools.

Typical use::

    from promptcouple.data import VideoListDataset, anchor_loader

    train = VideoListDataset("fs_base_s1_train.txt", "hmdb_51_base_labels.csv", root="hmdb51/videos",
                             train=True, num_frames=8)
    val = VideoListDataset("base_val.txt", "hmdb_51_base_labels.csv", root="hmdb51/videos",
                           train=False, num_frames=8, num_clips=2, num_crops=3)   # (6, 8, 3, 224, 224)
    anchors = anchor_loader(VideoListDataset("anchors.txt", ["else"], train=True), batch_size=1)
    clips, labels = next(anchors)
"""

from .dataset import VideoListDataset
from .decode import DECODE_ERRORS, VideoDecodeError, read_frame_folder, read_video_frames
from .lists import (
    VIDEO_EXTENSIONS,
    ListFormatError,
    VideoRecord,
    read_label_csv,
    read_video_list,
    write_label_csv,
    write_video_list,
)
from .load import load_video
from .loader import anchor_loader, cycle
from .sampling import clip_indices, segment_indices
from .splits import (
    ClassSplit,
    base_novel_split,
    k_shot_split,
    k_shot_splits,
    split_from_names,
    subset_records,
)
from .transforms import CLIP_MEAN, CLIP_STD, MULTISCALE_SCALES, EvalTransform, MultiScaleCrop, TrainTransform

__all__ = [
    "VideoListDataset",
    "VideoRecord",
    "ListFormatError",
    "VideoDecodeError",
    "DECODE_ERRORS",
    "VIDEO_EXTENSIONS",
    "read_label_csv",
    "read_video_list",
    "write_label_csv",
    "write_video_list",
    "read_video_frames",
    "load_video",
    "read_frame_folder",
    "segment_indices",
    "clip_indices",
    "CLIP_MEAN",
    "CLIP_STD",
    "MULTISCALE_SCALES",
    "MultiScaleCrop",
    "TrainTransform",
    "EvalTransform",
    "cycle",
    "anchor_loader",
    "ClassSplit",
    "base_novel_split",
    "split_from_names",
    "subset_records",
    "k_shot_split",
    "k_shot_splits",
]
