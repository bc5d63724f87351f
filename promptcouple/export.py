"""A deployable classifier: a prompt set and its class names exported to ONNX.

The graph takes video frames and returns class probabilities::

    frames          float32 (B, V, T, 3, S, S)   B videos (dynamic), V views, T frames, normalised as CLIP's
    probabilities   float32 (B, K)               scored as promptcouple predict scores them

The class features are computed once by the prompted text tower at export time and stored in the
graph as a constant: the text tower, the tokenizer and the prompts' text half are not needed at run
time. Views are scored as :class:`promptcouple.predict.Predictor` scores them (``eval.reduce``:
mean of the views' probabilities, or softmax of their mean logits). The model's metadata
(``metadata_props``) records the class names, frames, frame size, views and source prompt file.

    promptcouple export prompts.safetensors --classes "archery,bowling,yoga" --onnx classifier.onnx

Run it with ``onnxruntime`` (``pip install promptcouple[onnx]``): :class:`OnnxClassifier`.
The graph is traced (``torch.onnx.export(dynamo=False)``), which runs the wrapper's hooks as they are.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from promptcouple.errors import InvalidInputError
from promptcouple.fileio import PathLike, atomic_write

logger = logging.getLogger(__name__)

OPSET = 17


class VideoClassifier(nn.Module):
    """``frames (B, V, T, 3, S, S) -> probabilities (B, K)`` with the class features fixed.

    Args:
        wrapper: A wrapped host (its active prompts), in evaluation mode.
        classnames: The classes; their prompted features are computed here, once.
        reduce: ``softmax`` (mean of the views' probabilities) or ``logits`` (softmax of the mean logits).
    """

    def __init__(self, wrapper: nn.Module, classnames: Sequence[str], *, reduce: str = "softmax"):
        super().__init__()
        if reduce not in ("softmax", "logits"):
            raise InvalidInputError(f"reduce={reduce!r}: expected 'softmax' or 'logits'")
        self.wrapper = wrapper.eval()
        self.reduce = reduce
        self.classnames = list(classnames)
        with torch.no_grad():
            self.register_buffer("text", wrapper.encode_text(self.classnames).float())
        self.eval()  # torch.onnx.export restores this module's mode, and with it the wrapper's, afterwards

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        views = frames.shape[1]
        video, context = self.wrapper.encode_video(frames.flatten(0, 1), return_tokens=True)
        logits = self.wrapper.logits(video, self.text, context).float()
        logits = logits.reshape(-1, views, logits.shape[-1])  # -1: the batch stays a dynamic axis
        return logits.softmax(-1).mean(1) if self.reduce == "softmax" else logits.mean(1).softmax(-1)


def export_onnx(predictor, path: PathLike, *, opset: int = OPSET) -> Path:
    """Export a :class:`~promptcouple.predict.Predictor`'s model and classes to an ONNX file.

    The frames, frame size, views and reduction are the predictor's. Written atomically.
    """
    try:
        import onnx
    except ImportError:
        raise InvalidInputError("exporting to ONNX needs onnx; fix: pip install 'promptcouple[onnx]'") from None
    cfg = predictor.cfg
    c, e = cfg.data, cfg.eval
    if cfg.run.precision not in ("fp32", None):
        logger.info("exporting in fp32 (the prompt file's evaluation used %s)", cfg.run.precision)
    # Exported from a copy on the CPU in fp32, so the predictor's own model keeps its mode, device and
    # per-tensor dtypes (a mixed-precision host cast back by one dtype would not be what it was).
    model = VideoClassifier(copy.deepcopy(predictor.wrapper), predictor.classnames, reduce=e.reduce).cpu().float()
    example = torch.zeros(2, e.num_clips * e.num_crops, c.num_frames, 3, c.image_size, c.image_size)
    path = Path(path)
    with warnings.catch_warnings():
        # The tracer warns at every Python-level shape check; the shapes it sees are the ones exported.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        # nn.MultiheadAttention's inference fast path is one fused operator that ONNX has no form for.
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with torch.no_grad(), atomic_write(path) as f:
                torch.onnx.export(model, (example,), f, dynamo=False, opset_version=opset, input_names=["frames"],
                                  output_names=["probabilities"],
                                  dynamic_axes={"frames": {0: "batch"}, "probabilities": {0: "batch"}})
        finally:
            torch.backends.mha.set_fastpath_enabled(fastpath)
    graph = onnx.load(str(path))
    meta = {"classnames": json.dumps(predictor.classnames), "num_frames": str(c.num_frames),
            "image_size": str(c.image_size), "views": json.dumps({"num_clips": e.num_clips, "num_crops": e.num_crops}),
            "reduce": e.reduce, "prompts": str(getattr(predictor, "prompts", "")), "producer": "promptcouple"}
    for key, value in meta.items():
        graph.metadata_props.add(key=key, value=value)
    with atomic_write(path) as f:
        f.write(graph.SerializeToString())
    return path


class OnnxClassifier:
    """An exported classifier under ``onnxruntime``: ``probabilities(frames)`` and its recorded classes.

    Args:
        path: The ``.onnx`` file.
        threads: Intra-op threads (``None``: onnxruntime's default, every core).
    """

    def __init__(self, path: PathLike, *, threads: Optional[int] = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise InvalidInputError("running an exported classifier needs onnxruntime; "
                                    "fix: pip install 'promptcouple[onnx]'") from None
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.classnames = json.loads(meta.get("classnames", "[]"))
        self.num_frames = int(meta.get("num_frames", 0))
        self.image_size = int(meta.get("image_size", 0))

    def probabilities(self, frames) -> torch.Tensor:
        """``(B, K)`` probabilities of ``(B, V, T, 3, S, S)`` frames (a tensor or an array)."""
        array = frames.detach().cpu().float().numpy() if torch.is_tensor(frames) else frames
        return torch.from_numpy(self.session.run(None, {"frames": array})[0])
