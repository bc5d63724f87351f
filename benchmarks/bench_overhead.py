"""What the prompts cost on top of plain open_clip, side by side in one run.

Measures on an open_clip ViT-B-16-quickgelu (random init: speed does not depend on the weights) with the
paper's configuration (16 text / 16 vision tokens, depth 9, coupled to a hard prompt):

1. vision: prompted ``encode_video`` / plain per-frame ``encode_image`` of the same frames;
2. text: prompted class features of 400 Kinetics-length class names (exact short sequence) /
   plain ``encode_text`` of the same prompts at the full 77 tokens;
3. a full training step (the library's ``TrainStep``: one text pass over the class prompts and the
   anchor labels, one vision pass over the clips and the anchor clip, the frozen anchor view
   cached; backward, AdamW) / the same
   step computed as the reference code does it (77-token text, anchor texts re-encoded by the
   frozen tower every step, one anchor clip appended), for 50, 100, 200 and 400 classes;
4. peak memory of our training step with and without gradient checkpointing (each in a fresh
   process: on the CPU the peak resident set grown by the step, on CUDA the allocator's peak);
5. ``method`` / ``method-profile``: what each part of GA2 costs on top of IVLP, one training step of
   each variant as a ratio to IVLP's (``method_cost.py``), and the pieces GA2 adds, on their own.

A CPU-sized step is 2 clips of 8 frames plus one anchor clip (the paper: 8 clips of 32 frames per
GPU). Timings interleave the two sides (A B, B A, ...) over ``--reps`` pairs after a warm-up and
report medians with interquartile ranges, the ratio per pair, and the load average; a ratio whose
spread is too wide to read is flagged (``benchmarks/timing.py``).

    python benchmarks/bench_overhead.py --json bench.json --plot bench.png
    python benchmarks/bench_overhead.py --tiny          # seconds: a smoke run on a tiny model
    python benchmarks/bench_overhead.py --parts method --batch 8 --threads 2 --json method.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import resource
import subprocess
import sys
from contextlib import nullcontext

import torch
import torch.nn.functional as F

import promptcouple as pc
from promptcouple.train.step import TrainStep
from method_cost import VARIANTS, measure_method, measure_method_profile, pool
from timing import Comparison, compare, load_average, uptime

# Token counts (with the final ".") of the 400 Kinetics-400 class names, from the label list in the
# GA2-CLIP repository (lists/kinetics_400_labels.csv), tokenized with CLIP's BPE: {count: names}.
K400_TOKEN_HISTOGRAM = {2: 34, 3: 245, 4: 96, 5: 12, 6: 6, 7: 4, 8: 3}
WORDS = ("playing riding making doing throwing catching cutting washing climbing dancing jumping "
         "running swimming eating drinking cooking cleaning reading writing singing the a ball "
         "bike horse guitar piano drum rope tree wall water snow paper hair car dog cat shoes").split()


def kinetics_like_names(n: int, tokenizer, seed: int = 0) -> list[str]:
    """``n`` distinct class names whose BPE lengths follow the Kinetics-400 histogram."""
    rng = random.Random(seed)
    lengths = [k for k, count in K400_TOKEN_HISTOGRAM.items() for _ in range(count)]
    rng.shuffle(lengths)
    names: list[str] = []
    for k in (lengths * (n // len(lengths) + 1))[:n]:
        while True:
            name = " ".join(rng.choice(WORDS) for _ in range(k - 1))  # every word is one token, "." one more
            if name not in names and len(tokenizer.encode(name + ".")) == k:
                names.append(name)
                break
    return names


def build_host(tiny: bool, device: torch.device):
    """(open_clip model, prompt config, image size): ViT-B-16-quickgelu and the paper's config, or a tiny pair."""
    import open_clip

    if tiny:
        torch.manual_seed(0)
        clip = open_clip.CLIP(embed_dim=64, vision_cfg=dict(image_size=64, patch_size=16, width=64, layers=4),
                              text_cfg=dict(context_length=77, width=64, heads=4, layers=4))
        config, size = pc.CouplingConfig(n_ctx=16, n_vision_ctx=16, text_depth=3, vision_depth=3), 64
    else:
        clip = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)  # random init is enough for speed
        config, size = pc.CouplingConfig(), 224
    return clip.to(device).eval(), config, size


def build(tiny: bool, device: torch.device):
    clip, config, size = build_host(tiny, device)
    width = clip.token_embedding.weight.shape[1]
    wrapper = pc.CouplingPromptWrapper(clip, config, hard_prompts=torch.randn(config.n_ctx or 16, width) * 0.02)
    return wrapper, size


class Steps:
    """Our training step and the reference-style one, over the same model and data.

    ``precision``: ``fp32``, ``bf16`` (autocast) or ``fp16`` (autocast with a GradScaler).
    """

    def __init__(self, wrapper, size: int, classes: list[str], anchors: list[str], device, frames: int,
                 precision: str = "auto", batch: int = 2, loss_fn=None):
        self.w, self.classes, self.anchors = wrapper, classes, anchors
        self.batch = batch
        self.clips = torch.randn(batch, frames, 3, size, size, device=device)
        self.anchor_clip = torch.randn(1, frames, 3, size, size, device=device)
        self.labels = torch.arange(batch, device=device) % len(classes)
        # The anchor clip here is one fixed tensor (as un-augmented anchors are), so its frozen view
        # may be cached by its id; the library's training step folds the anchor term into its passes.
        self.reg = pc.AnchorRegularizer(wrapper, anchors, cache_frozen=True)
        self.train_step = TrainStep(wrapper, self.reg)
        self.opt = torch.optim.AdamW(wrapper.trainable_parameters(), lr=1e-5, weight_decay=1e-3)
        self.autocast, self.scaler = autocast_for(device, precision)
        self.loss_fn = loss_fn or self.ours_loss

    def ours_loss(self, clips, anchor_clip):
        loss, _ = self.train_step(clips, self.labels, self.classes, anchor_clip, anchor_ids=[0])
        return loss

    def _step(self, loss) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()

    def ours(self) -> None:
        self.w.train()
        self.w.short_text = True
        with self.autocast:
            loss = self.loss_fn(self.clips, self.anchor_clip)
        self._step(loss)

    def reference(self) -> None:
        """As the released code: full-length text, anchor texts re-encoded every step, DPS logits."""
        w = self.w
        w.train()
        w.short_text = False
        with self.autocast:
            # a second, frozen text pass every step, where ours is cached
            u = F.normalize(w.encode_frozen_text([f"a video of a person {a}." for a in self.anchors]), dim=-1)
            video = w.encode_video(torch.cat([self.clips, self.anchor_clip]))  # anchor appended to the batch
            text = w.encode_text(self.classes)
            v, a = F.normalize(video[:-1], dim=-1), F.normalize(video[-1:], dim=-1)
            # the released broadcast needs 1 label (or K); averaging keeps the cost of M labels
            logits = w.logit_scale_exp * (v @ F.normalize(text, dim=-1).t() + (a @ u.t()).mean(-1, keepdim=True))
            loss = F.cross_entropy(logits.float(), self.labels)
        self._step(loss)


class FullFineTune:
    """ViFi-CLIP's recipe: both towers of an unprompted copy trained end to end, full-length text."""

    def __init__(self, steps: Steps) -> None:
        import copy

        self.s = steps
        twin = copy.deepcopy(steps.w)
        self.host = twin.unwrap().requires_grad_(True)
        self.ids = twin.tokenizer(steps.w.prompt_texts(steps.classes)).to(steps.clips.device)
        self.opt = torch.optim.AdamW(self.host.parameters(), lr=1e-6, weight_decay=1e-3)
        self.scaler = torch.amp.GradScaler(steps.clips.device.type, enabled=steps.scaler.is_enabled())

    def step(self) -> None:
        s, host = self.s, self.host
        host.train()
        with s.autocast:
            b, t = s.clips.shape[:2]
            video = host.encode_image(s.clips.flatten(0, 1)).reshape(b, t, -1).mean(1)
            text = host.encode_text(self.ids)
            logits = host.logit_scale.exp() * F.normalize(video, dim=-1) @ F.normalize(text, dim=-1).t()
            loss = F.cross_entropy(logits.float(), s.labels)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()


def autocast_for(device: torch.device, precision: str):
    """(autocast context, GradScaler) for ``precision``; ``auto``: bf16 on CUDA, fp32 elsewhere."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return nullcontext(), torch.amp.GradScaler(enabled=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype), torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def memory_child(args) -> None:
    """One training step in this fresh process; prints the peak memory it added, in bytes."""
    device = torch.device(args.device)
    wrapper, size = build(args.tiny, device)
    wrapper.model.set_grad_checkpointing(args.memory_child == "on")
    names = kinetics_like_names(args.memory_classes, wrapper.tokenizer)
    steps = Steps(wrapper, size, names, names[:8], device, args.frames, args.precision)
    steps.reg.frozen_text_features()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        steps.ours()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = _rss_bytes()
        _reset_peak_rss()
        steps.ours()
        peak = _peak_rss_bytes() - base
    print(json.dumps({"peak_bytes": peak}))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> None:
    """Reset the kernel's high-water mark (VmHWM), so building the model does not count."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux: ru_maxrss below then includes the set-up
        pass


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_memory(args, mode: str) -> int:
    cmd = [sys.executable, __file__, "--memory-child", mode, "--device", args.device,
           "--frames", str(args.frames), "--memory-classes", str(args.memory_classes),
           "--precision", args.precision] + (["--tiny"] if args.tiny else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="a tiny model: a smoke run in seconds")
    parser.add_argument("--classes", default="50,100,200,400", help="class counts of the step comparison")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5, help="timed pairs per measurement (median and IQR)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="autocast dtype of the steps (fp16 with a GradScaler); auto: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--batch", type=int, default=8, help="clips per step in the throughput part")
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd step beside eager")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (aot_eager: no codegen)")
    parser.add_argument("--memory-classes", type=int, default=400)
    parser.add_argument("--parts", default="vision,text,step,memory",
                        help="which measurements to run, from vision,text,step,throughput,memory,method,method-profile")
    parser.add_argument("--method-classes", type=int, default=100, help="classes of the method part's steps")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="the method part's steps (ivlp included)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before the method part's timed ones")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--pool", nargs="+", metavar="JSON",
                        help="pool the method rounds of these --parts method runs into --json, and stop")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--plot", help="write a plot of step time against the number of classes here")
    parser.add_argument("--memory-child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args)
    if args.pool:
        pooled = pool(args.pool)
        for name, r in pooled["cpu_ratio"].items():
            print(f"{VARIANTS[name]:50s} / IVLP  CPU {r['median']:.3f} (IQR {r['q1']:.3f}-{r['q3']:.3f}, n={r['n']})  "
                  f"wall {pooled['ratio'][name]['median']:.3f} (IQR {pooled['ratio'][name]['q1']:.3f}-"
                  f"{pooled['ratio'][name]['q3']:.3f})")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(pooled, f, indent=2)
        return None

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    known = {"vision", "text", "step", "throughput", "memory", "method", "method-profile"}
    if parts - known:
        parser.error(f"--parts: unknown {sorted(parts - known)}; choose from {sorted(known)}")
    print(f"{'tiny model' if args.tiny else 'open_clip ViT-B-16'} on {device} "
          f"({torch.get_num_threads()} threads, {platform.processor() or platform.machine()}), torch {torch.__version__}")
    results: dict = {"device": str(device), "model": "tiny" if args.tiny else "ViT-B-16-quickgelu", "frames": args.frames,
                     "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": platform.processor(),
                     "precision": args.precision, "load_start": load_average(), "uptime_start": uptime(),
                     "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    if parts & {"method", "method-profile"}:  # fresh hosts of their own, wrapped two ways
        method_parts(args, parts, device, results)
    if parts & {"vision", "text", "step", "throughput"}:
        wrapper, size = build(args.tiny, device)
        host = wrapper.model
        names = kinetics_like_names(400, wrapper.tokenizer)
    if "vision" in parts:
        measure_vision(wrapper, host, size, device, args, results)
    if "text" in parts:
        measure_text(wrapper, host, names, device, args, results)
    if "step" in parts:
        measure_steps(wrapper, size, names, device, args, results)
    if "throughput" in parts:
        measure_throughput(wrapper, size, names, device, args, results)
    if "memory" in parts:
        off, on = measure_memory(args, "off"), measure_memory(args, "on")
        results["memory_bytes"] = {"checkpointing_off": off, "checkpointing_on": on, "classes": args.memory_classes}
        results["checkpointing_memory_saving"] = 1 - on / off
        print(f"memory  step peak without checkpointing {off / 2**20:.0f} MiB, with {on / 2**20:.0f} MiB  "
              f"saving {results['checkpointing_memory_saving']:.1%}")

    results["load_end"], results["uptime_end"] = load_average(), uptime()
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if args.plot and "step_seconds" in results:
        plot(results, args.plot)


def method_parts(args, parts, device, results: dict) -> None:
    """The method part(s) on a fresh host (``method_cost.py``)."""
    host, config, size = build_host(args.tiny, device)
    import open_clip
    from promptcouple.tokenize import PromptTokenizer

    tokenizer = PromptTokenizer(open_clip.get_tokenizer("ViT-B-16-quickgelu"), 77)  # the wrappers' tokenizer
    names = kinetics_like_names(args.method_classes, tokenizer)
    anchors = kinetics_like_names(args.method_classes + 50, tokenizer, seed=1)[args.method_classes:]  # 50 labels
    if "method-profile" in parts:
        measure_method_profile(copy.deepcopy(host), config, size, names, anchors, device, args, results)
    if "method" in parts:
        measure_method(host, config, size, names, anchors, device, args, results)


def measure_vision(wrapper, host, size, device, args, results) -> None:
    """Prompted encode_video against plain per-frame encode_image of the same frames."""
    frames = torch.randn(2, args.frames, 3, size, size, device=device)
    with torch.no_grad():
        def plain_vision():
            with wrapper.prompts_disabled():
                host.encode_image(frames.flatten(0, 1))
        c = compare(lambda: wrapper.encode_video(frames), plain_vision, reps=args.reps, device=device, label="vision")
    results["vision"] = c.as_dict()
    results["vision_seconds"] = {"prompted": c.a.median, "plain": c.b.median}
    results["vision_ratio"] = c.ratio.median
    print(f"vision  prompted {c.a}s  plain {c.b}s  ratio {c.ratio}  {_load(c)}")


def measure_text(wrapper, host, names, device, args, results) -> None:
    """Prompted class features (exact short sequence) against plain encode_text at 77 tokens."""
    full_ids = wrapper.tokenize(names).to(device)  # the same prompts at the full context length
    wrapper.train()  # no cache: we time the computation itself
    with torch.no_grad():
        def plain_text():
            with wrapper.prompts_disabled():
                host.encode_text(full_ids)
        c = compare(lambda: wrapper.encode_text(names), plain_text, reps=args.reps, device=device, label="text")
    length = int(full_ids.argmax(-1).max()) + 1
    results["text"] = c.as_dict()
    results["text_seconds"] = {"prompted_short": c.a.median, "plain_full": c.b.median, "short_length": length,
                               "full_length": full_ids.shape[1]}
    results["text_ratio"] = c.ratio.median
    print(f"text    prompted ({length} tokens) {c.a}s  plain ({full_ids.shape[1]} tokens) {c.b}s  "
          f"ratio {c.ratio}  {_load(c)}")


def measure_steps(wrapper, size, names, device, args, results) -> None:
    """Our training step against the reference-style one, per number of classes."""
    anchors = kinetics_like_names(450, wrapper.tokenizer, seed=1)[400:450]  # 50 anchor labels
    results["step"], results["step_seconds"], results["step_ratio"] = {}, {}, {}
    for k in (int(x) for x in args.classes.split(",")):
        steps = Steps(wrapper, size, names[:k], anchors, device, args.frames, args.precision)
        c = compare(steps.ours, steps.reference, reps=args.reps, device=device, label=f"step at {k} classes")
        results["step"][str(k)] = c.as_dict()
        results["step_seconds"][str(k)] = {"ours": c.a.median, "reference_style": c.b.median}
        results["step_ratio"][str(k)] = c.ratio.median
        print(f"step    {k:4d} classes  ours {c.a}s  reference-style {c.b}s  ratio {c.ratio}  {_load(c)}")
        if args.compile:
            compiled = torch.compile(steps.ours_loss, backend=args.compile_backend)
            steps_c = Steps(wrapper, size, names[:k], anchors, device, args.frames, args.precision, loss_fn=compiled)
            c = compare(steps_c.ours, steps.ours, reps=args.reps, device=device, label=f"compiled step at {k} classes")
            results.setdefault("compiled_step", {})[str(k)] = c.as_dict()
            print(f"step    {k:4d} classes  compiled {c.a}s  eager {c.b}s  ratio {c.ratio}  {_load(c)}")


def measure_throughput(wrapper, size, names, device, args, results) -> None:
    """Clips/s of a full prompt-tuning step (batch + one anchor clip, 100 classes) against the
    reference-style step and plain full fine-tuning (ViFi-CLIP) of the same model."""
    anchors = kinetics_like_names(450, wrapper.tokenizer, seed=1)[400:450]
    steps = Steps(wrapper, size, names[:100], anchors, device, args.frames, args.precision, batch=args.batch)
    full = FullFineTune(steps)
    vs_ref = compare(steps.ours, steps.reference, reps=args.reps, device=device, label="throughput vs reference")
    vs_full = compare(steps.ours, full.step, reps=args.reps, device=device, label="throughput vs full fine-tuning")
    clips = {"ours": args.batch / vs_ref.a.median, "reference_style": args.batch / vs_ref.b.median,
             "full_finetune": args.batch / vs_full.b.median}
    results["throughput"] = {"batch": args.batch, "clips_per_second": clips, "vs_reference": vs_ref.as_dict(),
                             "vs_full_finetune": vs_full.as_dict()}
    print(f"throughput  batch {args.batch}: ours {clips['ours']:.2f} clips/s, reference-style "
          f"{clips['reference_style']:.2f}, full fine-tuning {clips['full_finetune']:.2f}  {_load(vs_full)}")


def _load(c: Comparison) -> str:
    return f"[load {c.load_before} -> {c.load_after}{'' if c.readable else ', NOT READABLE'}]"


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(int(k) for k in results["step_seconds"])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, label in (("reference_style", "reference-style step"), ("ours", "promptcouple step")):
        ax.plot(ks, [results["step_seconds"][str(k)][key] for k in ks], marker="o", label=label)
    ax.set_xlabel("number of classes")
    ax.set_ylabel("seconds per training step")
    ax.set_title(f"{results['model']} on {results['device']}, 2x{results['frames']} frames + 1 anchor clip")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
