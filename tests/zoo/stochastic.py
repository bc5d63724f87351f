"""Hosts whose frozen towers act differently in training mode: an open_clip ``CLIP`` with a timm
ViT trunk built with stochastic depth (``drop_path_rate > 0``). (The BatchNorm host is
``oc-resnet`` in ``open_clip_custom``.) The contract checks that prompt training leaves them exact."""

from __future__ import annotations

import torch

from zoo import open_clip_custom as occ


def build_clip_timm_drop_path(seed):
    torch.manual_seed(seed)
    with occ._small_timm(init_values=0.5, drop_path_rate=0.5):
        return occ.open_clip.CLIP(
            embed_dim=occ.WIDTH,
            vision_cfg=dict(image_size=occ.IMAGE, timm_model_name="vit_medium_patch16_gap_256", timm_pool="",
                            timm_proj="linear"),
            text_cfg=occ._text_cfg()).eval()


CASES = [] if occ.open_clip is None else [
    occ._case("oc-clip-timm-drop-path", build_clip_timm_drop_path, occ.manual_timm_image, text=occ._clip_text),
]
