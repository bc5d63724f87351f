"""What the prompts cost on top of plain open_clip, side by side in one run.

Measures on an open_clip ViT-B-16-quickgelu (random init: speed does not depend on the weights) with the
paper's configuration (16 text / 16 vision tokens, depth 9, coupled to a hard prompt):

1. vision: prompted ``encode_video`` / plain per-frame ``encode_image`` of the same frames;
2. text: prompted class features of 400 Kinetics-length class names (exact short sequence) /
   plain ``encode_text`` of the same prompts at the full 77 tokens;
3. a full training step (text over all classes, vision, anchor term, backward, AdamW) / the same
   step computed as the reference code does it (77-token text, anchor texts re-encoded by the
   frozen tower every step, one anchor clip appended), for 50, 100, 200 and 400 classes;
4. peak memory of our training step with and without gradient checkpointing (each in a fresh
   process: on the CPU the peak resident set grown by the step, on CUDA the allocator's peak).

A CPU-sized step is 2 clips of 8 frames plus one anchor clip (the paper: 8 clips of 32 frames per
GPU). Timings interleave the two sides (A B A B ...) and report medians after a warm-up.

    python benchmarks/bench_overhead.py --json bench.json --plot bench.png
    python benchmarks/bench_overhead.py --tiny          # seconds: a smoke run on a tiny model
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

import promptcouple as pc

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


def build(tiny: bool, device: torch.device):
    import open_clip

    if tiny:
        torch.manual_seed(0)
        clip = open_clip.CLIP(embed_dim=64, vision_cfg=dict(image_size=64, patch_size=16, width=64, layers=4),
                              text_cfg=dict(context_length=77, width=64, heads=4, layers=4))
        config, size = pc.CouplingConfig(n_ctx=16, n_vision_ctx=16, text_depth=3, vision_depth=3), 64
    else:
        clip = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None)  # random init is enough for speed
        config, size = pc.CouplingConfig(), 224
    clip = clip.to(device).eval()
    width = clip.token_embedding.weight.shape[1]
    wrapper = pc.CouplingPromptWrapper(clip, config, hard_prompts=torch.randn(config.n_ctx or 16, width) * 0.02)
    return wrapper, size


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(a, b, device, reps: int, warmup: int = 1) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b``, interleaved so that load on the machine hits both alike."""
    for _ in range(warmup):
        a(), b()
    ta, tb = [], []
    for _ in range(reps):
        ta.append(timed(a, device))
        tb.append(timed(b, device))
    return statistics.median(ta), statistics.median(tb)


class Steps:
    """Our training step and the reference-style one, over the same model and data."""

    def __init__(self, wrapper, size: int, classes: list[str], anchors: list[str], device, frames: int):
        self.w, self.classes, self.anchors = wrapper, classes, anchors
        self.clips = torch.randn(2, frames, 3, size, size, device=device)
        self.anchor_clip = torch.randn(1, frames, 3, size, size, device=device)
        self.labels = torch.arange(2, device=device) % len(classes)
        self.reg = pc.AnchorRegularizer(wrapper, anchors)
        params = [p for _, p in wrapper.trainable_parameters()]
        self.opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=1e-3)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext())

    def ours(self) -> None:
        self.w.train()
        self.w.short_text = True
        with self.autocast:
            loss = F.cross_entropy(self.w(self.clips, self.classes).float(), self.labels) + self.reg(self.anchor_clip)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

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
            logits = w.logit_scale * (v @ F.normalize(text, dim=-1).t() + (a @ u.t()).mean(-1, keepdim=True))
            loss = F.cross_entropy(logits.float(), self.labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def memory_child(args) -> None:
    """One training step in this fresh process; prints the peak memory it added, in bytes."""
    device = torch.device(args.device)
    wrapper, size = build(args.tiny, device)
    wrapper.model.set_grad_checkpointing(args.memory_child == "on")
    names = kinetics_like_names(args.memory_classes, wrapper.tokenizer)
    steps = Steps(wrapper, size, names, names[:8], device, args.frames)
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
           "--frames", str(args.frames), "--memory-classes", str(args.memory_classes)] + (["--tiny"] if args.tiny else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="a tiny model: a smoke run in seconds")
    parser.add_argument("--classes", default="50,100,200,400", help="class counts of the step comparison")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per measurement (median)")
    parser.add_argument("--memory-classes", type=int, default=400)
    parser.add_argument("--parts", default="vision,text,step,memory", help="which measurements to run")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--plot", help="write a plot of step time against the number of classes here")
    parser.add_argument("--memory-child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args)

    device = torch.device(args.device)
    wrapper, size = build(args.tiny, device)
    host = wrapper.model
    names = kinetics_like_names(400, wrapper.tokenizer)
    print(f"{'tiny model' if args.tiny else 'open_clip ViT-B-16'} on {device} "
          f"({torch.get_num_threads()} threads, {platform.processor() or platform.machine()}), torch {torch.__version__}")
    results: dict = {"device": str(device), "model": "tiny" if args.tiny else "ViT-B-16-quickgelu", "frames": args.frames,
                     "threads": torch.get_num_threads(), "torch": torch.__version__}

    parts = set(args.parts.split(","))
    if parts - {"vision", "text", "step", "memory"}:
        parser.error(f"--parts: unknown {sorted(parts - {'vision', 'text', 'step', 'memory'})}")

    if "vision" in parts:
        measure_vision(wrapper, host, size, device, args, results)
    if "text" in parts:
        measure_text(wrapper, host, names, device, args, results)
    if "step" in parts:
        measure_steps(wrapper, size, names, device, args, results)
    if "memory" in parts:
        off, on = measure_memory(args, "off"), measure_memory(args, "on")
        results["memory_bytes"] = {"checkpointing_off": off, "checkpointing_on": on, "classes": args.memory_classes}
        results["checkpointing_memory_saving"] = 1 - on / off
        print(f"memory  step peak without checkpointing {off / 2**20:.0f} MiB, with {on / 2**20:.0f} MiB  "
              f"saving {results['checkpointing_memory_saving']:.1%}")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if args.plot and "step_seconds" in results:
        plot(results, args.plot)


def measure_vision(wrapper, host, size, device, args, results) -> None:
    """Prompted encode_video against plain per-frame encode_image of the same frames."""
    frames = torch.randn(2, args.frames, 3, size, size, device=device)
    with torch.no_grad():
        def plain_vision():
            with wrapper.prompts_disabled():
                host.encode_image(frames.flatten(0, 1))
        t_ours, t_plain = compare(lambda: wrapper.encode_video(frames), plain_vision, device, args.reps)
    results["vision_seconds"] = {"prompted": t_ours, "plain": t_plain}
    results["vision_ratio"] = t_ours / t_plain
    print(f"vision  prompted {t_ours:.3f}s  plain {t_plain:.3f}s  ratio {results['vision_ratio']:.3f}")


def measure_text(wrapper, host, names, device, args, results) -> None:
    """Prompted class features (exact short sequence) against plain encode_text at 77 tokens."""
    full_ids = wrapper.tokenize(names).to(device)  # the same prompts at the full context length
    wrapper.train()  # no cache: we time the computation itself
    with torch.no_grad():
        def plain_text():
            with wrapper.prompts_disabled():
                host.encode_text(full_ids)
        t_ours, t_plain = compare(lambda: wrapper.encode_text(names), plain_text, device, args.reps)
    length = int(full_ids.argmax(-1).max()) + 1
    results["text_seconds"] = {"prompted_short": t_ours, "plain_full": t_plain, "short_length": length,
                               "full_length": full_ids.shape[1]}
    results["text_ratio"] = t_ours / t_plain
    print(f"text    prompted ({length} tokens) {t_ours:.3f}s  plain ({full_ids.shape[1]} tokens) {t_plain:.3f}s  "
          f"ratio {results['text_ratio']:.3f}")


def measure_steps(wrapper, size, names, device, args, results) -> None:
    """Our training step against the reference-style one, per number of classes."""
    anchors = kinetics_like_names(450, wrapper.tokenizer, seed=1)[400:450]  # 50 anchor labels
    results["step_seconds"], results["step_ratio"] = {}, {}
    for k in (int(x) for x in args.classes.split(",")):
        steps = Steps(wrapper, size, names[:k], anchors, device, args.frames)
        t_ours, t_ref = compare(steps.ours, steps.reference, device, args.reps)
        results["step_seconds"][str(k)] = {"ours": t_ours, "reference_style": t_ref}
        results["step_ratio"][str(k)] = t_ours / t_ref
        print(f"step    {k:4d} classes  ours {t_ours:.2f}s  reference-style {t_ref:.2f}s  ratio {t_ours / t_ref:.3f}")


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
