"""Save prompts to a self-describing file, inspect it, and load it into a fresh model.

    python examples/load_prompts.py [--out prompts.safetensors]   # default: a new temporary folder
"""

import argparse
import tempfile
from pathlib import Path

import open_clip
import torch

import promptcouple as pc


def tiny_clip(seed: int = 0) -> open_clip.CLIP:
    torch.manual_seed(seed)  # same seed, same "pretrained" backbone
    return open_clip.CLIP(embed_dim=64, vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=4),
                          text_cfg=dict(context_length=32, width=64, heads=4, layers=4)).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=None, help="prompt file to write (default: in a new temporary folder)")
    args = parser.parse_args()
    args.out = args.out or str(Path(tempfile.mkdtemp(prefix="load_prompts_")) / "prompts.safetensors")

    config = pc.CouplingConfig(n_ctx=8, n_vision_ctx=4, text_depth=3, vision_depth=3)
    hard = torch.randn(8, 64) * 0.02
    model = pc.CouplingPromptWrapper(tiny_clip(), config, hard_prompts=hard).eval()
    model.save_pretrained(args.out)

    pf = pc.read_prompt_file(args.out)  # metadata and tensors, no model needed
    print(f"{args.out}: {pf.config}")
    print({k: tuple(v.shape) for k, v in pf.tensors.items()})
    print({k: v for k, v in pf.metadata.items() if k != "config"})

    # The file carries its config and hard prompt: one call rebuilds the prompted model.
    restored = pc.CouplingPromptWrapper.from_pretrained(tiny_clip(), args.out).eval()
    frames = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        same = torch.equal(model(frames, ["archery", "yoga"]), restored(frames, ["archery", "yoga"]))
    print("restored model gives identical logits:", same)

    # A prompt file can also serve as the hard prompt of the next run (its effective context).
    coupled = pc.CouplingPromptWrapper(tiny_clip(), config, hard_prompts=args.out)
    print("hard prompt from file:", tuple(coupled.prompts.hard.shape))


if __name__ == "__main__":
    main()
