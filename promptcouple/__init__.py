"""promptcouple: coupled hard+soft prompts and generic attribute anchors for CLIP-style video models.

Wrap a CLIP in two lines, train only the prompts, keep the model recognising classes it was never
tuned on (GA2-CLIP, arXiv 2511.22125)::

    model = pc.CouplingPromptWrapper(clip, pc.CouplingConfig(), hard_prompts="k400_base.safetensors")
    logits = model(frames, classnames)          # frames (B, T, 3, H, W)
"""

__version__ = "0.1.0"

from promptcouple.adapters import UnsupportedHostError
from promptcouple.anchors import AnchorOverlapError, AnchorRegularizer
from promptcouple.config import CouplingConfig
from promptcouple.descriptions import read_descriptions
from promptcouple.errors import PromptcoupleError, PromptFileError
from promptcouple.io import PromptFile, load_prompts, read_prompt_file, save_prompts
from promptcouple.text_consistency import TextConsistencyRegularizer
from promptcouple.wrapper import CouplingPromptWrapper

__all__ = [
    "AnchorOverlapError",
    "AnchorRegularizer",
    "CouplingConfig",
    "CouplingPromptWrapper",
    "PromptFile",
    "PromptFileError",
    "PromptcoupleError",
    "TextConsistencyRegularizer",
    "UnsupportedHostError",
    "convert_checkpoint",
    "load_video",
    "load_prompts",  # deprecated: read_prompt_file
    "read_descriptions",
    "read_prompt_file",
    "save_prompts",
]


def __getattr__(name: str):
    # The converter (torch.load machinery) and the video decoders (PyAV, torchvision) load only when asked for.
    if name == "convert_checkpoint":
        from promptcouple.convert import convert_checkpoint

        return convert_checkpoint
    if name == "load_video":
        from promptcouple.data import load_video

        return load_video
    raise AttributeError(f"module 'promptcouple' has no attribute {name!r}")
