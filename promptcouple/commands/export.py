"""``promptcouple export PROMPTS --classes ... --onnx OUT.onnx``: a classifier without the training stack."""

from __future__ import annotations

from typing import Optional

from promptcouple.commands import command_parser

OPSET = 17  # promptcouple.export.OPSET, repeated so that --help does not import torch


def main(argv: Optional[list[str]] = None) -> int:
    """Export a prompt file and its classes as an ONNX video classifier (frames in, probabilities out)."""
    parser = command_parser("export", main.__doc__,
                            epilog="The graph takes frames (B, V, T, 3, S, S) normalised as CLIP's and returns "
                                   "probabilities (B, K); the class names, frames and frame size are in its metadata.")
    parser.add_argument("prompts", help="prompt file, a folder holding prompts.safetensors, or hf-hub:org/repo")
    parser.add_argument("--classes", default=None,
                        help="the classes: a label CSV, 'a,b,c' or a recorded set (train, val, base, novel, all); "
                             "default: the training classes")
    parser.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    parser.add_argument("--config", default=None, help="YAML config naming the backbone, if the prompt file does not")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    args = parser.parse_args(argv)
    from promptcouple.export import export_onnx
    from promptcouple.predict import Predictor

    predictor = Predictor(args.prompts, classes=args.classes, config=args.config, device="cpu")
    out = export_onnx(predictor, args.onnx, opset=args.opset)
    c = predictor.cfg
    print(f"{args.prompts} -> {out}: {len(predictor.classnames)} classes, frames (B, "
          f"{c.eval.num_clips * c.eval.num_crops}, {c.data.num_frames}, 3, {c.data.image_size}, {c.data.image_size}), "
          f"{out.stat().st_size / 2 ** 20:.1f} MiB")
    return 0
