"""Base-to-novel generalisation (docs/METHOD.md section 3): train on the base classes, test on base and novel.

Methods (``--methods``; every trained one runs through :class:`promptcouple.train.Trainer`):

* ``zero-shot``: the frozen model with the hand-crafted template "a video of a {}.";
* ``coop``: a learnable layer-0 text context (``CouplingConfig(text_depth=1, n_vision_ctx=0,
  vision_depth=0)``), no hard prompt;
* ``ivlp``: ViFi-CLIP's VL prompting, deep prompts in both towers (every layer of the world CLIP;
  depth 9 on ViT-B/16);
* ``kgcoop``: IVLP plus the KgCoOp-style text-consistency term (weight 8);
* ``ga2-reference``: coupled to the hard prompt, anchors as the released code computes them (one
  anchor label "else", added through ``AnchorRegularizer.adjust_logits``): inert by construction;
* ``ga2`` / ``ga2-negative``: coupled to the hard prompt, our anchor terms (consistency / negative);
* ``coupling`` and ``anchors``: ablations (coupling only; IVLP + consistency anchors);
* ``ivlp+src`` and ``ga2+src``: IVLP and GA2 (ours) with the PromptSRC-style guards
  (``promptcouple.guards``: feature and logit agreement with the frozen model on the training
  clips, Gaussian prompt aggregation over the epochs);
* ``zero-shot+desc``, ``ivlp+desc``, ``ga2+desc``, ``anchors+desc``: the same runs with class
  descriptions, each class encoded as the mean of its descriptions' normalised features in
  training and evaluation (the world's description sets: the class name and its motion
  paraphrases; on real data a ``descriptions`` file per dataset section). ``--descriptions`` adds
  the description row of every chosen method; each is also compared with its own plain row.

The hard prompt is the layer-0 context of IVLP prompts trained on the world's hard-prompt source
(disjoint classes), cached in ``OUT/cache`` per world seed. Three training splits, the last epoch
reported (never a best one), mean over splits (and world seeds, ``--world-seeds 0 1 2``); HM =
2BN/(B+N). Every method is compared with IVLP on the same cells (dataset x split x world seed):
the mean paired HM difference with a 95% t interval over the cells, and a 95% paired bootstrap
over the test clips (``benchmarks/stats.py``), as a table and one line per method. Writes a
markdown table, a JSON file (per method, dataset, split and world seed: base, novel, HM, seconds,
the per-epoch curve and every test clip's top-1 correctness), a plot of base, novel and HM over
the epochs per method, one of base, novel and HM per dataset, and a forest plot of HM - IVLP per
method with both intervals (``*_forest.png``).

``--protocol k400-first`` is GA2-CLIP's own protocol for HMDB, UCF and SSv2 beside the from-CLIP
one: the world CLIP is first fine-tuned on all of ``wk400`` (ViFi-CLIP style, the whole model, a
few epochs; cached in ``OUT/cache`` by hash, ``benchmarks/protocol/backbone.py``), every method
then runs on ``whmdb``, ``wucf`` and ``wssv2`` from that backbone, and the hard prompt is learned
on ``wk400``'s base classes from it.

Examples::

    python benchmarks/base2novel.py --quick                     # < 5 minutes on 2 cores (10 of the 15 rows)
    nice -n 5 python benchmarks/base2novel.py                    # full: all methods, 3 splits
    python benchmarks/base2novel.py --methods zero-shot ivlp ga2 --datasets whmdb --splits 1
    python benchmarks/base2novel.py --protocol k400-first       # the paper's protocol, from a wk400 backbone
    python benchmarks/base2novel.py --world-seeds 0 1 2          # intervals over three worlds
    python benchmarks/base2novel.py --model ViT-B-16-quickgelu --pretrained openai --data-config data.yaml \\
        --frames 32 --workers 1 --threads 8       # the paper's protocol on real data

Timings measured on this project's 2-core CPU machine are in the JSON (``timing``, ``machine``).
"""

from __future__ import annotations

import copy
from pathlib import Path

from protocol import reports
from protocol.backbone import FinetuneRecipe, k400_backbone
from protocol.context import run_script, start
from protocol.setting import make_parser, make_setting

DEFAULT_METHODS = ("zero-shot", "coop", "ivlp", "kgcoop", "ga2-reference", "ga2", "ga2-negative", "coupling",
                   "anchors", "ivlp+src", "ga2+src", "zero-shot+desc", "ivlp+desc", "ga2+desc", "anchors+desc")
# --quick leaves out five rows to make room for the description rows within its 5 minutes, each one the
# full runs settle (worlds 0 and 1, both protocols): the released anchor computation (inert: within 0.1 of
# coupling in every cell), coupling alone (no gain in any run), negative anchors (3-5 HM below IVLP in
# every run) and both PromptSRC-style rows (HM unchanged). The full run keeps all fifteen.
QUICK_LEFT_OUT = ("ga2-reference", "coupling", "ga2-negative", "ivlp+src", "ga2+src")
QUICK_METHODS = tuple(m for m in DEFAULT_METHODS if m not in QUICK_LEFT_OUT)


def ivlp_vs_zero_shot(table: dict) -> dict:
    """The narrowing, on the average over datasets: IVLP's base gain over zero-shot, how much wider
    IVLP's base-novel gap is than zero-shot's, and every other method's HM minus IVLP's."""
    if "ivlp" not in table or "zero-shot" not in table:
        return {}
    iv, zs = table["ivlp"]["average"], table["zero-shot"]["average"]
    out = {"ivlp_base_gain": iv["base"] - zs["base"],
           "gap_widening": (iv["base"] - iv["novel"]) - (zs["base"] - zs["novel"])}
    for name in ("ga2", "ga2-negative", "ga2-reference", "kgcoop", "anchors", "coupling"):
        if name in table:
            out[f"{name}_hm_minus_ivlp_hm"] = table[name]["average"]["hm"] - iv["hm"]
    return out


def main(argv=None) -> dict:
    parser = make_parser(__doc__)
    parser.add_argument("--plot", default=None, help="PNG of the curves (default OUT/base2novel[_quick].png)")
    parser.add_argument("--world-seeds", type=int, nargs="+", default=None,
                        help="run every method on each of these generated worlds (default: --world-seed alone)")
    parser.add_argument("--protocol", choices=("from-clip", "k400-first"), default="from-clip",
                        help="from-clip: every method from the world CLIP; k400-first: from the world CLIP "
                             "fine-tuned on all of wk400, on whmdb, wucf and wssv2, hard prompt from wk400's base")
    parser.add_argument("--k400-epochs", type=int, default=FinetuneRecipe.epochs,
                        help="k400-first: epochs of the backbone's fine-tuning")
    parser.add_argument("--k400-shots", type=int, default=FinetuneRecipe.shots,
                        help="k400-first: clips per wk400 class of the backbone's fine-tuning")
    args = parser.parse_args(argv)
    seeds = list(dict.fromkeys(args.world_seeds or [args.world_seed]))
    if len(seeds) > 1 and args.data_config is not None:
        raise SystemExit("--world-seeds: only for the embedded world (not with --data-config)")
    k400_first = args.protocol == "k400-first"
    if k400_first and (args.data_config is not None or args.model != "world" or args.backbone_checkpoint):
        raise SystemExit("--protocol k400-first: fine-tunes the embedded world CLIP (--model world, no "
                         "--data-config, no --backbone-checkpoint); on real data give --backbone-checkpoint "
                         "(a K400-fine-tuned CLIP) and --hard-prompts instead")
    records, contexts, backbones = [], [], {}
    for seed in seeds:
        seed_args = copy.copy(args)
        seed_args.world_seed = seed
        if k400_first:
            from protocol.sources import world_identity

            recipe = FinetuneRecipe(epochs=args.k400_epochs, shots=args.k400_shots)
            path, notes = k400_backbone(make_setting(seed_args), seed, Path(args.out), world_identity(), recipe,
                                        threads=max(1, args.threads or 1))
            seed_args.backbone_checkpoint = path
            backbones[str(seed)] = {"path": path, **notes}
        ctx = start(seed_args, "base_to_novel", QUICK_METHODS if args.quick else DEFAULT_METHODS,
                    shots=[make_setting(args).shots])
        s = ctx.setting
        jobs = ctx.jobs("base_to_novel", [s.shots], eval_every=s.eval_every)
        if len(seeds) > 1:  # each world's runs in their own folders
            for job in jobs:
                cfg = job.config["config"]
                cfg["run"]["output_dir"] = str(Path(cfg["run"]["output_dir"]) / f"w{seed}")
        for rec in ctx.run(jobs, "base-to-novel" + (f", world {seed}" if len(seeds) > 1 else "")):
            records.append({**rec, "world_seed": seed if args.data_config is None else None})
        contexts.append(ctx)
    ctx = contexts[-1]
    ctx.t0 = contexts[0].t0
    for other in contexts[:-1]:
        for key, value in other.timing.items():
            ctx.timing[key] = ctx.timing.get(key, 0.0) + value
    table = reports.base_novel_table(records, ctx.methods, ctx.datasets)
    over = f"splits {ctx.splits}" + (f" x world seeds {seeds}" if len(seeds) > 1 else f", world seed {seeds[0]}")
    protocol = ("protocol k400-first (backbone: the world CLIP fine-tuned on all of wk400; hard prompt: "
                "IVLP on wk400's base classes)" if k400_first else "from the world CLIP" if args.data_config is None
                else "")
    markdown = (f"Base-to-novel{', ' + protocol if protocol else ''}, top-1 % (Base / Novel / HM), mean of {over}, "
                "last epoch "
                f"({s.epochs} epochs, K={s.shots}, {s.test_per_class or 'all'} test clips per class):\n\n"
                + reports.format_base_novel(table, ctx.methods, ctx.datasets))
    if len(ctx.splits) > 1:
        spread = {(m, d): v["hm_sd"] for m, row in table.items() for d, v in row.items() if "hm_sd" in v}
        rows = [(m.name, m.label) for m in ctx.methods if m.trained and m.name in table]
        markdown += ("\n\nSpread of HM over the splits (sample sd, points):\n\n"
                     + reports.format_grid(spread, rows, [(d, d) for d in ctx.datasets]))
    paired = reports.paired_comparison(records, "ivlp")
    if paired:
        markdown += ("\n\nHM against IVLP, paired by cell (dataset x split x world seed), top-1 points:\n\n"
                     + reports.format_comparison(paired, ctx.methods, "IVLP") + "\n\n"
                     + "\n".join(reports.readings(paired, ctx.methods)))
    with_descriptions = reports.description_comparison(records, ctx.methods)
    if with_descriptions:
        markdown += ("\n\nWith descriptions against the same method without them (HM, paired by cell), top-1 "
                     "points:\n\n" + reports.format_comparison(with_descriptions, ctx.methods, "plain row") + "\n\n"
                     + "\n".join(reports.readings(with_descriptions, ctx.methods)))
    plot = Path(args.plot) if args.plot else ctx.out / f"base2novel{'_quick' if args.quick else ''}.png"
    made = reports.plot_curves(records, ctx.methods, plot,
                               f"base (solid), novel (dashed) and HM (dotted) top-1 over epochs, mean of "
                               f"{len(ctx.datasets)} dataset(s) x {len(ctx.splits)} split(s) x {len(seeds)} world(s); "
                               "grey: frozen zero-shot")
    bars = reports.plot_datasets(table, ctx.methods, ctx.datasets, plot.with_name(plot.stem + "_datasets.png"),
                                 f"base, novel and HM per dataset, last epoch, mean of {over}")
    forest = reports.plot_forest(paired, ctx.methods, plot.with_name(plot.stem + "_forest.png"),
                                 f"HM - IVLP per method, paired by cell, mean of {over}") if paired else None
    comparison = ivlp_vs_zero_shot(table)
    if comparison:
        markdown += (f"\n\nIVLP vs zero-shot (average): base {comparison['ivlp_base_gain']:+.1f} points, "
                     f"base-novel gap {comparison['gap_widening']:+.1f} points wider")
        if "ga2_hm_minus_ivlp_hm" in comparison:
            markdown += f"; GA2 (ours) HM - IVLP HM: {comparison['ga2_hm_minus_ivlp_hm']:+.1f}"
    results = {"runs": records, "table": table, "ivlp_vs_zero_shot": comparison, "paired_vs_ivlp": paired,
               "paired_descriptions_vs_plain": with_descriptions,
               "plot": str(made) if made else None, "plot_datasets": str(bars) if bars else None,
               "plot_forest": str(forest) if forest else None}
    if args.data_config is None:
        results.update(world_seed=seeds[0] if len(seeds) == 1 else seeds, world_seeds=seeds,
                       hard_prompts_by_world_seed={str(w): c.hard_prompts for w, c in zip(seeds, contexts)},
                       protocol=args.protocol)
        if k400_first:
            results["k400_backbone"] = backbones
    return ctx.finish("base2novel", results, markdown)


if __name__ == "__main__":
    run_script(main)
