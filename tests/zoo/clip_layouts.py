"""open_clip ``CLIP`` (batch-first and the sequence-first layout of open_clip < 2.26, CLS and
average pooling) and the OpenAI layout, with the hand-written forward of ``tests/hosts.py``."""

from __future__ import annotations


from hosts import make_host, manual_image, manual_text
from zoo import HostCase, frame_averaged, scaled_logits


def _tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=32)


def _own_text(host, ids):
    return host.encode_text(ids)


def _own_logits(host, frames, ids):
    b, t = frames.shape[:2]
    video = host.encode_image(frames.flatten(0, 1)).view(b, t, -1).mean(1)
    return scaled_logits(host, video, host.encode_text(ids))


def _manual_text(host, ids, prompts, start):
    assert start == 1  # CLIP's start token
    return manual_text(host, ids, prompts)


_manual_logits = frame_averaged(manual_image, _manual_text)


def _case(name, **kwargs):
    def build(seed):
        return make_host(name, seed=seed, **kwargs)

    return HostCase(name=f"{name}-{kwargs.get('pool', 'tok')}", build=build, tokenizer=_tokenizer,
                    own_text=_own_text, own_logits=_own_logits, manual_text=_manual_text,
                    manual_logits=_manual_logits,
                    checkpointing=lambda host, on: host.set_grad_checkpointing(on))


CASES = [_case("open_clip"), _case("open_clip", pool="avg"), _case("open_clip_seq_first"), _case("openai")]
