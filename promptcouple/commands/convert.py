"""``promptcouple convert SRC DST [--hard-prompt FILE] [--trust]``: a reference checkpoint to a prompt file."""

from __future__ import annotations

from typing import Optional

from promptcouple.commands import command_parser


def main(argv: Optional[list[str]] = None) -> int:
    """Convert a GA2-CLIP or ViFi-CLIP checkpoint into a prompt file."""
    parser = command_parser("convert", main.__doc__)
    parser.add_argument("src", help="reference checkpoint (.pth)")
    parser.add_argument("dst", help="output prompt file (.safetensors)")
    parser.add_argument("--hard-prompt", help="hard prompt the checkpoint was coupled to (prompt file or GA2-CLIP .pth)")
    parser.add_argument("--trust", action="store_true",
                        help="allow pickled objects in the checkpoint (only for files you trust)")
    args = parser.parse_args(argv)
    from promptcouple.convert import convert_checkpoint

    pf = convert_checkpoint(args.src, args.dst, trust=args.trust, hard_prompts=args.hard_prompt)
    print(f"{args.src} ({pf.metadata['source_format']}) -> {args.dst}: {pf.config}")
    if pf.coupled and "text.hard" not in pf.tensors:
        print("note: coupled checkpoint without its hard prompt; pass hard_prompts= when loading, or --hard-prompt")
    return 0
