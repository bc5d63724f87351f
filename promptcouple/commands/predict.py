"""``promptcouple predict VIDEO_OR_FOLDER --prompts FILE``: classify videos with a prompt file."""

from __future__ import annotations

import json
import logging
from typing import Optional

from promptcouple.commands import command_parser

logger = logging.getLogger(__name__)


def main(argv: Optional[list[str]] = None) -> int:
    """Classify a video file, or every video in a folder, with a prompt file."""
    from promptcouple.predict import CLASS_SETS

    parser = command_parser(
        "predict", main.__doc__,
        epilog="The backbone, frames, image size and class names come from the prompt file (promptcouple "
               "inspect shows them) or from the config.yaml of the run folder it sits in.")
    parser.add_argument("videos", metavar="VIDEO_OR_FOLDER", help="a video file, or a folder of videos (recursive)")
    parser.add_argument("--prompts", required=True, nargs="+", metavar="FILE",
                        help="prompt file (.safetensors) written by promptcouple train, a run folder or hf-hub:org/repo; "
                             "several trained on one backbone: built once, each video shown for each file")
    parser.add_argument("--classes", default=None,
                        help="classes to score: a label CSV (id,name), 'a,b,c', or a recorded set "
                             f"({', '.join(CLASS_SETS)}); default: the training classes")
    parser.add_argument("--descriptions", default=None, metavar="FILE",
                        help="class descriptions (CSV class,description or JSON) to score classes by; "
                             "default: those the prompt file records, else the class names")
    parser.add_argument("--topk", type=int, default=5, help="classes shown per video (default 5)")
    parser.add_argument("--json", default=None, metavar="OUT.json", help="also write every probability here")
    parser.add_argument("--config", default=None, help="YAML config naming the backbone, if the prompt file "
                                                       "does not (converted files)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=int, default=8, help="videos per forward pass")
    args = parser.parse_args(argv)
    if args.topk < 1:
        parser.error(f"--topk must be >= 1, got {args.topk}")
    from promptcouple.fileio import atomic_write_text
    from promptcouple.predict import Predictor, video_files

    files = video_files(args.videos)
    prompts = args.prompts if len(args.prompts) > 1 else args.prompts[0]
    predictor = Predictor(prompts, classes=args.classes, config=args.config, device=args.device,
                          batch_size=args.batch_size, descriptions=args.descriptions)
    logger.info("%s", predictor.summary(len(files)))
    by_set = predictor.predict_sets(files, list(predictor.prompt_sets), topk=args.topk, progress=True)
    several = len(by_set) > 1
    for name, results in by_set.items():
        for r in results:
            shown = f"error: {r.error}" if r.error else ", ".join(f"{c} {p:.3f}" for c, p in r.top)
            print(f"[{name}] {r.video}: {shown}" if several else f"{r.video}: {shown}")
    if args.json is not None:
        def predictions(results):
            return [r.to_dict(predictor.classnames) for r in results]

        record = {"prompts": prompts, "classes": predictor.classnames, "predictions": predictions(next(iter(by_set.values())))} \
            if not several else {"prompts": dict(zip(by_set, prompts)), "classes": predictor.classnames,
                                 "predictions": {n: predictions(rs) for n, rs in by_set.items()}}
        atomic_write_text(args.json, json.dumps(record, indent=2) + "\n")
        logger.info("saved to %s", args.json)
    return 1 if any(r.error for rs in by_set.values() for r in rs) else 0
