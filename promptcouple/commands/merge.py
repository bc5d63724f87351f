"""``promptcouple merge IN OUT``: a coupled prompt file's context computed once and stored plain."""

from __future__ import annotations

import json
from typing import Optional

from promptcouple.commands import command_parser


def main(argv: Optional[list[str]] = None) -> int:
    """Compute a coupled prompt file's context once and store it as a plain (IVLP-shaped) prompt file."""
    parser = command_parser("merge", main.__doc__,
                            epilog="The merged file loads into any wrapper of the same backbone without a hard "
                                   "prompt and gives the same evaluation logits.")
    parser.add_argument("src", metavar="IN", help="prompt file, a folder holding prompts.safetensors, or hf-hub:org/repo")
    parser.add_argument("dst", metavar="OUT", help="the merged prompt file to write (.safetensors)")
    parser.add_argument("--hard-prompt", default=None, help="the hard prompt, for a converted file that lacks it")
    args = parser.parse_args(argv)
    from promptcouple.merge import merge_prompt_file

    pf = merge_prompt_file(args.src, args.dst, hard_prompts=args.hard_prompt)
    was = json.loads(pf.metadata["merged_from"])
    print(f"{args.src} -> {args.dst}: {'coupled context merged' if was['coupled'] else 'already plain'}, "
          f"{len(pf.tensors)} tensors, {pf.config}")
    return 0
