"""Wrap a CLIP in two lines and train only the prompts.

Offline by default (a small randomly initialised open_clip CLIP and generated frames);
online users pass ``--model ViT-B-16-quickgelu --pretrained openai`` for the real thing.

    python examples/wrap_two_lines.py
"""

import argparse
import time

import open_clip
import torch
import torch.nn.functional as F

import promptcouple as pc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="open_clip model name, e.g. ViT-B-16-quickgelu (default: a tiny one)")
    parser.add_argument("--pretrained", default=None, help="open_clip pretrained tag or local checkpoint path")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)

    if args.model:
        clip, _, _ = open_clip.create_model_and_transforms(args.model, pretrained=args.pretrained)
        config, size = pc.CouplingConfig(), clip.visual.image_size[0]
    else:
        clip = open_clip.CLIP(embed_dim=64, vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=4),
                              text_cfg=dict(context_length=32, width=64, heads=4, layers=4))
        config, size = pc.CouplingConfig(n_ctx=8, n_vision_ctx=4, text_depth=3, vision_depth=3), 32

    # --- the two lines -------------------------------------------------------------------
    hard = torch.randn(config.n_ctx or 16, clip.token_embedding.weight.shape[1]) * 0.02  # usually a prompt file
    model = pc.CouplingPromptWrapper(clip, config, hard_prompts=hard)
    # ---------------------------------------------------------------------------------------
    print(model.extra_repr())

    classes = ["archery", "juggling", "playing the drums", "surfing"]
    # Generated "videos": each class has its own colour, so a few steps can learn it.
    labels = torch.arange(len(classes)).repeat(4)
    colours = torch.randn(len(classes), 3, 1, 1, 1)
    frames = colours[labels].permute(0, 2, 1, 3, 4).expand(-1, 4, 3, size, size) + 0.3 * torch.randn(len(labels), 4, 3, size, size)

    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=2e-2, weight_decay=1e-3)
    start = time.perf_counter()
    for step in range(args.steps):
        loss = F.cross_entropy(model(frames, classes), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 5 == 0 or step == args.steps - 1:
            print(f"step {step:3d}  loss {loss.item():.4f}")
    model.eval()
    with torch.no_grad():
        accuracy = (model(frames, classes).argmax(-1) == labels).float().mean().item()
    print(f"train accuracy {accuracy:.2f} after {args.steps} steps ({time.perf_counter() - start:.1f}s)")
    model.unwrap()  # the CLIP is exactly what it was
    print("unwrapped:", type(clip).__name__)


if __name__ == "__main__":
    main()
