"""What each part of GA2 costs on top of IVLP: one training step of each, interleaved in one run.

``bench_overhead.py --parts method`` times one training step (the library's ``TrainStep`` forward,
backward and an AdamW step, as the ``Trainer`` runs them) of

* ``ivlp``: deep vision-language prompts (the paper's sizes, no hard prompt);
* ``coupling``: IVLP + the coupled text context (a frozen hard prompt and the mapping layer);
* ``anchors``: IVLP + the consistency anchor term, the frozen view of the anchor clip computed
  every step (as the ``Trainer`` does: its anchor clips are augmented, so they cannot be cached);
* ``anchors_cached``: the same with ``AnchorRegularizer(cache_frozen=True)`` (un-augmented anchors);
* ``ga2`` and ``ga2_cached``: coupling + anchors, without and with the cached frozen view;

in rounds, every variant once a round in a rotated order (``timing.interleave``), each as a ratio
to IVLP's step of the same round. ``--parts method-profile`` times the pieces GA2 adds on their
own: the anchor clip's prompted vision pass, its frozen view, the anchor labels' prompted text
pass, the coupling layer (beside one training clip's pass and the class text, for scale).
"""

from __future__ import annotations

import copy

import torch

import promptcouple as pc
from promptcouple.train.step import TrainStep
from timing import Spread, interleave, timed_with_cpu, uptime

VARIANTS = {
    "ivlp": "IVLP",
    "coupling": "IVLP + coupling",
    "anchors": "IVLP + anchors (frozen view every step)",
    "anchors_cached": "IVLP + anchors (cached frozen view)",
    "ga2": "GA2: coupling + anchors (frozen view every step)",
    "ga2_cached": "GA2 (cached frozen view)",
}


class MethodSteps:
    """The variants' training steps over one shared batch: ``steps[name]()`` runs one step."""

    def __init__(self, host: torch.nn.Module, config: pc.CouplingConfig, size: int, classes: list[str],
                 anchors: list[str], device: torch.device, *, batch: int = 8, frames: int = 8, seed: int = 0):
        torch.manual_seed(seed)
        width = host.token_embedding.weight.shape[1]
        twin = copy.deepcopy(host)  # a host carries one wrapper: IVLP and the coupled model get a copy each
        self.wrappers = {"ivlp": pc.CouplingPromptWrapper(host, config),
                         "coupled": pc.CouplingPromptWrapper(twin, config,
                                                             hard_prompts=torch.randn(config.n_ctx or 16, width) * 0.02)}
        self.classes, self.anchors = classes, anchors
        self.clips = torch.randn(batch, frames, 3, size, size, device=device)
        self.anchor_clip = torch.randn(1, frames, 3, size, size, device=device)
        self.labels = torch.arange(batch, device=device) % len(classes)
        self.anchor_labels = torch.zeros(1, dtype=torch.long, device=device)
        plan = {"ivlp": ("ivlp", None), "coupling": ("coupled", None), "anchors": ("ivlp", False),
                "anchors_cached": ("ivlp", True), "ga2": ("coupled", False), "ga2_cached": ("coupled", True)}
        self.regularizers: list = []
        self.steps = {name: self._make(self.wrappers[w], cached) for name, (w, cached) in plan.items()}

    def prime(self) -> None:
        """What a run computes once and keeps (tokenized prompts, frozen negative prompts, cached frozen
        views) computed now, so that no timed step pays for it, even with no warm-up round."""
        for wrapper in self.wrappers.values():
            wrapper.tokenize(self.classes), wrapper.tokenize(self.classes + self.anchors)
        for reg in self.regularizers:
            reg.frozen_text_features()
            if reg.cache_frozen:
                reg._frozen_view(self.anchor_clip, [0])

    def _make(self, wrapper, cached):
        """One variant's step; ``cached``: ``None`` without anchors, else whether the frozen view is cached."""
        reg = None if cached is None else pc.AnchorRegularizer(wrapper, self.anchors, cache_frozen=cached)
        self.regularizers += [reg] if reg is not None else []
        module = TrainStep(wrapper, reg)
        opt = torch.optim.AdamW(wrapper.trainable_parameters(), lr=4e-3, weight_decay=1e-3)  # the Trainer's defaults
        ids = [0] if cached else None

        def step() -> torch.Tensor:
            module.train()
            wrapper.model.eval()  # as the Trainer: the frozen backbone runs as at inference
            anchor_clip = self.anchor_clip if reg is not None else None
            loss, _ = module(self.clips, self.labels, self.classes, anchor_clip, self.anchor_labels, anchor_ids=ids)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss.detach()

        return step


def measure_method(host, config, size, names, anchors, device, args, results) -> None:
    """Every variant's step, interleaved, as a ratio to IVLP's (median and IQR over rounds)."""
    names = names[:args.method_classes]
    wanted = [v.strip() for v in args.variants.split(",")]
    unknown = sorted(set(wanted) - set(VARIANTS))
    if unknown or "ivlp" not in wanted:
        raise SystemExit(f"--variants: {unknown or 'ivlp is missing'}; choose from {list(VARIANTS)} (ivlp included)")
    steps = MethodSteps(host, config, size, names, anchors, device, batch=args.batch, frames=args.frames)
    commands = {name: steps.steps[name] for name in VARIANTS if name in wanted}
    steps.prime()
    r = interleave(commands, reference="ivlp", reps=args.reps, warmup=args.warmup, device=device, label="method cost")
    results["method"] = dict(r.as_dict(), classes=len(names), anchor_labels=len(anchors), clips=args.batch,
                             anchor_clips=1, frames=args.frames, threads=torch.get_num_threads(),
                             warmup=args.warmup, variants={k: VARIANTS[k] for k in commands})
    print(f"method  {args.batch} clips + 1 anchor clip of {args.frames} frames, {len(names)} classes, "
          f"{len(anchors)} anchor labels, {args.reps} rounds, {torch.get_num_threads()} thread(s)")
    print(f"        before: {r.uptime_before}\n        after:  {r.uptime_after}")
    for name in commands:
        if name == "ivlp":
            print(f"        {VARIANTS[name]:50s} {r.seconds[name].median:8.3f} s wall, {r.cpu_seconds[name].median:8.3f} s CPU")
            continue
        flag = {True: "", False: "  NOT READABLE"}
        print(f"        {VARIANTS[name]:50s} / IVLP wall {r.ratio[name]}{flag[r.readable(name)]}; "
              f"CPU {r.cpu_ratio[name]}{flag[r.readable(name, cpu=True)]}")


def measure_method_profile(host, config, size, names, anchors, device, args, results) -> None:
    """The pieces GA2 adds to an IVLP step, each timed on its own in CPU seconds, beside one training
    clip's vision pass and the class text pass for scale."""
    steps = MethodSteps(host, config, size, names[:args.method_classes], anchors, device, batch=args.batch,
                        frames=args.frames)
    ivlp, coupled = steps.wrappers["ivlp"], steps.wrappers["coupled"]
    ivlp.train(), coupled.train()
    ivlp.model.eval(), coupled.model.eval()
    reg = pc.AnchorRegularizer(ivlp, anchors)
    reg.frozen_text_features()  # cached after the first step in any run

    def backward(x):
        x.float().sum().backward()
        ivlp.zero_grad(set_to_none=True), coupled.zero_grad(set_to_none=True)

    # Each piece on its own (a fraction of a step each, so the profile runs in minutes): the step
    # batches the anchor clip with the training clips and the anchor labels with the classes.
    n_prompts = len(steps.classes) + len(anchors)
    pieces = {
        "vision_training_clip": lambda: backward(ivlp.encode_video(steps.clips[:1])),
        "vision_anchor_clip": lambda: backward(ivlp.encode_video(steps.anchor_clip)),
        "frozen_anchor_view": lambda: reg._frozen_view(steps.anchor_clip, None),
        "text_classes": lambda: backward(ivlp.encode_text(steps.classes)),
        "text_anchor_labels": lambda: backward(ivlp.encode_text(anchors)),
        "context_soft": lambda: backward(ivlp.prompts.text_context(n_prompts)),
        "context_coupled": lambda: backward(coupled.prompts.text_context(n_prompts)),
    }
    times: dict = {k: [] for k in pieces}
    for _ in range(args.warmup):
        for fn in pieces.values():
            fn()
    before = uptime()
    for r in range(args.reps):
        for name in (list(pieces) if r % 2 == 0 else list(pieces)[::-1]):
            times[name].append(timed_with_cpu(pieces[name], device)[1])  # CPU seconds: steadier under load
    spreads = {k: Spread.of(v) for k, v in times.items()}
    added = {  # what GA2 adds to an IVLP step, piece by piece
        "anchor clip in the prompted vision pass": ("vision_anchor_clip", None),
        "frozen view of the anchor clip": ("frozen_anchor_view", None),
        "anchor labels in the prompted text pass": ("text_anchor_labels", None),
        "coupling layer": ("context_coupled", "context_soft"),
    }
    results["method_profile"] = {"cpu_seconds": {k: vars(v) for k, v in spreads.items()},
                                 "threads": torch.get_num_threads(),
                                 "added_cpu_seconds": {k: spreads[a].median - (spreads[b].median if b else 0.0)
                                                   for k, (a, b) in added.items()},
                                 "uptime_before": before, "uptime_after": uptime()}
    print(f"profile (CPU seconds, medians over {args.reps} rounds, {torch.get_num_threads()} thread(s))")
    for name, s in spreads.items():
        print(f"        {name:34s} {s}")
    for name, sec in results["method_profile"]["added_cpu_seconds"].items():
        print(f"        added by the {name}: {sec:.3f} s")


def pool(paths: list[str]) -> dict:
    """The method rounds of several runs (``--json`` files of ``--parts method``) as one table.

    A ratio is taken within its round, so rounds of separate runs pool as they are; a run may time
    only some variants (``--variants``), and each variant pools the rounds that timed it."""
    import json

    wall: dict = {}
    cpu: dict = {}
    runs = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        m = data["method"]
        runs.append({"path": path, "rounds": len(m["order"]), "variants": list(m["seconds"]),
                     "uptime_before": m["uptime_before"], "uptime_after": m["uptime_after"],
                     "threads": m["threads"], "omp_wait_policy": data.get("omp_wait_policy")})
        for name in m["ratio"]:
            wall.setdefault(name, []).extend(m["ratio_values"][name])
            cpu.setdefault(name, []).extend(m["cpu_ratio_values"][name])
    return {"ratio": {k: vars(Spread.of(v)) for k, v in wall.items()},
            "cpu_ratio": {k: vars(Spread.of(v)) for k, v in cpu.items()},
            "variants": {k: VARIANTS[k] for k in wall}, "runs": runs}
