"""``promptcouple demo --prompts P [P2 ...]``: a page (Gradio) to try prompt files on a video."""

from __future__ import annotations

import logging
from typing import Optional

from promptcouple.commands import command_parser

logger = logging.getLogger("promptcouple.demo")


def main(argv: Optional[list[str]] = None) -> int:
    """Serve a page that classifies a dropped or generated video with each prompt set and zero-shot."""
    parser = command_parser("demo", main.__doc__)
    parser.add_argument("--prompts", nargs="+", required=True,
                        help="prompt files trained on one backbone (files, run folders or hf-hub:org/repo)")
    parser.add_argument("--classes", default=None, help="initial class names: a label CSV, 'a,b,c' or a recorded set")
    parser.add_argument("--config", default=None, help="YAML config naming the backbone, if the prompt file does not")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--examples", type=int, default=4, help="generated example clips (default 4; 0: none)")
    parser.add_argument("--video", default=None, help="a video to show, classified, when the page opens")
    args = parser.parse_args(argv)
    if args.examples < 0:
        parser.error(f"--examples must be >= 0, got {args.examples}")
    from promptcouple.demo import build_demo, example_videos
    from promptcouple.predict import Predictor

    predictor = Predictor(args.prompts, classes=args.classes, config=args.config, device=args.device)
    page = build_demo(predictor, example_videos(n=args.examples) if args.examples else (), video=args.video)
    logger.info("serving on http://%s:%d (Ctrl-C stops)", args.host, args.port)
    page.launch(server_name=args.host, server_port=args.port, share=False)
    return 0
