"""``promptcouple push PROMPTS org/repo``: a prompt file and its generated model card to the Hugging Face Hub."""

from __future__ import annotations

from typing import Optional

from promptcouple.commands import command_parser


def main(argv: Optional[list[str]] = None) -> int:
    """Upload a prompt file with a model card generated from its metadata (and its run's results)."""
    parser = command_parser("push", main.__doc__,
                            epilog="The token comes from HF_TOKEN or `hf auth login` unless --token is given.")
    parser.add_argument("prompts", help="prompt file, or a folder holding prompts.safetensors (a run folder)")
    parser.add_argument("repo_id", help="the Hub repository, org/name (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--token", default=None, help="a Hugging Face token (default: the logged-in one)")
    parser.add_argument("--message", default=None, help="commit message")
    parser.add_argument("--save-to", default=None, metavar="FOLDER",
                        help="write prompts.safetensors and README.md to FOLDER instead of uploading")
    args = parser.parse_args(argv)
    from promptcouple.hub import CARD_NAME, PROMPTS_NAME, push_to_hub, save_pretrained

    if args.save_to is not None:
        folder = save_pretrained(args.prompts, args.save_to, repo_id=args.repo_id)
        print(f"{args.prompts} -> {folder} ({PROMPTS_NAME}, {CARD_NAME})")
        return 0
    url = push_to_hub(args.prompts, args.repo_id, private=args.private or None, token=args.token,
                      commit_message=args.message)
    print(f"{args.prompts} -> {url}")
    return 0
