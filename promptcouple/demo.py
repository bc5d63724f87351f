"""A page to try prompt files on a video: ``promptcouple demo --prompts P [P2 ...]`` (Gradio).

Drop a video or pick one of the generated examples, edit the class names, and see the frames the
model samples and the top-5 probabilities of each loaded prompt set beside those of the frozen
backbone without prompts (zero-shot). The backbone is built once; every number and frame on the
page comes from :class:`promptcouple.predict.Predictor` (the frames as ``Predictor.load`` reads
them, the probabilities from ``Predictor.probabilities``), so they are the ones
``promptcouple predict`` prints. The page's function is also an API (``/classify``) that
``gradio_client`` can call.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional, Sequence

import torch

from promptcouple.errors import InvalidInputError

TOPK = 5


def frame_images(frames: torch.Tensor) -> list:
    """The first view's frames ``(T, 3, S, S)``, normalised as CLIP's, as uint8 HxWx3 arrays."""
    from promptcouple.constants import CLIP_MEAN, CLIP_STD

    view = frames[0] if frames.ndim == 5 else frames
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    pixels = (view.float().cpu() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    return [p.permute(1, 2, 0).numpy() for p in pixels]


def classify(predictor, video: str, classes: str, prompt_sets: Sequence[str]) -> tuple[list, dict]:
    """A video's sampled frames and, per prompt set, its top-5 ``{class: probability}``."""
    from promptcouple.predict import resolve_classes

    if not video:
        raise InvalidInputError("no video: drop a video file or pick an example")
    names, _ = resolve_classes([c.strip() for c in classes.split(",") if c.strip()], {})
    frames = predictor.load(video)
    out = {}
    for name in prompt_sets:
        probs = predictor.probabilities(frames.unsqueeze(0), classnames=names, prompt_set=name)[0].cpu()
        top = probs.topk(min(TOPK, len(names)))
        out[name] = {names[i]: float(v) for v, i in zip(top.values.tolist(), top.indices.tolist())}
    return frame_images(frames), out


def build_demo(predictor, examples: Sequence[str] = (), *, video: Optional[str] = None):
    """The Gradio page (``gradio.Blocks``) around a :class:`Predictor`; ``.launch()`` serves it.
    ``video``: a video shown, and classified, when the page opens."""
    try:
        import gradio as gr
    except ImportError:
        raise InvalidInputError("the demo page needs gradio; fix: pip install 'promptcouple[demo]'") from None
    from promptcouple.predict import ZERO_SHOT

    columns = [*predictor.prompt_sets, ZERO_SHOT]
    c = predictor.cfg
    with gr.Blocks(title="promptcouple demo") as page:
        gr.Markdown(f"## promptcouple: classify a video with prompts\nModel `{c.model.name}`, {c.data.num_frames} "
                    f"frames of {c.data.image_size} px, {c.eval.num_clips}x{c.eval.num_crops} views; prompt sets: "
                    + ", ".join(f"`{n}`" for n in predictor.prompt_sets) + f", and `{ZERO_SHOT}` (zero-shot).")
        with gr.Row():
            with gr.Column():
                video_in = gr.Video(label="video", sources=["upload"], value=video)
                classes = gr.Textbox(label="class names (comma-separated)", value=", ".join(predictor.classnames))
                chosen = gr.CheckboxGroup(columns, value=columns, label="prompt sets, side by side")
                button = gr.Button("Classify", variant="primary")
                if examples:
                    gr.Examples([[e] for e in examples], inputs=[video_in], label="generated examples",
                                example_labels=[Path(e).name for e in examples])
            with gr.Column():
                gallery = gr.Gallery(label="sampled frames (first view)", columns=max(1, c.data.num_frames),
                                     rows=1, height=200)
                with gr.Row():
                    labels = [gr.Label(num_top_classes=TOPK, label=name) for name in columns]

        def run(video_path, class_text, selected):
            from promptcouple.data import DECODE_ERRORS
            from promptcouple.errors import PromptcoupleError

            try:
                images, tops = classify(predictor, video_path, class_text, [n for n in columns if n in selected])
            except (PromptcoupleError, *DECODE_ERRORS) as err:  # shown on the page, not as a bare "Error"
                raise gr.Error(str(err)) from None
            return (images, *[gr.update(value=tops.get(name), visible=name in tops) for name in columns])

        button.click(run, inputs=[video_in, classes, chosen], outputs=[gallery, *labels], api_name="classify")
        if video is not None:
            page.load(run, inputs=[video_in, classes, chosen], outputs=[gallery, *labels], api_name=False)
    return page


def example_videos(folder: Optional[str] = None, n: int = 4) -> list[str]:
    """Generated clips (a coloured square sliding over grey, :mod:`promptcouple.data.synthetic`)."""
    from promptcouple.data.synthetic import write_sliding_square_videos

    folder = Path(folder or tempfile.mkdtemp(prefix="promptcouple-demo-"))
    write_sliding_square_videos(folder, n)
    return [str(folder / f"clip{i}.mp4") for i in range(n)]
