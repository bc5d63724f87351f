"""open_clip ``CLIP`` (batch-first and the sequence-first layout of open_clip < 2.26, CLS and
average pooling) and the OpenAI layout, with the hand-written forward of ``tests/hosts.py``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hosts import make_host, manual_image, manual_text
from zoo import HostCase


def _tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=32)


def _own_text(host, ids):
    return host.encode_text(ids)


def _own_logits(host, frames, ids):
    b, t = frames.shape[:2]
    video = host.encode_image(frames.flatten(0, 1)).view(b, t, -1).mean(1)
    return host.logit_scale.exp() * F.normalize(video, dim=-1) @ F.normalize(host.encode_text(ids), dim=-1).t()


def _manual_text(host, ids, prompts, start):
    assert start == 1  # CLIP's start token
    return manual_text(host, ids, prompts)


def _manual_logits(host, frames, ids, prompts, start):
    b, t = frames.shape[:2]
    video = manual_image(host, frames.flatten(0, 1), prompts).view(b, t, -1).mean(1)
    text = _manual_text(host, ids, prompts, start)
    return host.logit_scale.exp() * (F.normalize(video, dim=-1) @ F.normalize(text, dim=-1).t())


def _case(name, **kwargs):
    def build(seed):
        return make_host(name, seed=seed, **kwargs)

    return HostCase(name=f"{name}-{kwargs.get('pool', 'tok')}", build=build, tokenizer=_tokenizer,
                    own_text=_own_text, own_logits=_own_logits, manual_text=_manual_text,
                    manual_logits=_manual_logits,
                    checkpointing=lambda host, on: host.set_grad_checkpointing(on))


CASES = [_case("open_clip"), _case("open_clip", pool="avg"), _case("open_clip_seq_first"), _case("openai")]
