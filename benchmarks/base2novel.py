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
* ``coupling`` and ``anchors``: ablations (coupling only; IVLP + consistency anchors).

The hard prompt is the layer-0 context of IVLP prompts trained on the world's hard-prompt source
(disjoint classes), cached in ``OUT/cache`` per world seed. Three training splits, the last epoch
reported (never a best one), mean over splits; HM = 2BN/(B+N). Writes a markdown table, a JSON
file (per method, dataset and split: base, novel, HM, seconds and the per-epoch curve) and a plot
of base and novel accuracy over the epochs per method.

Examples::

    python benchmarks/base2novel.py --quick                     # < 5 minutes on 2 cores
    nice -n 5 python benchmarks/base2novel.py                    # full: all methods, 3 splits
    python benchmarks/base2novel.py --methods zero-shot ivlp ga2 --datasets whmdb --splits 1
    python benchmarks/base2novel.py --model ViT-B-16-quickgelu --pretrained openai --data-config data.yaml \\
        --frames 32 --workers 1 --threads 8       # the paper's protocol on real data

Timings measured on this project's 2-core CPU machine are in the JSON (``timing``, ``machine``).
"""

from __future__ import annotations

from pathlib import Path

from protocol import reports
from protocol.context import run_script, start
from protocol.setting import make_parser, make_setting

DEFAULT_METHODS = ("zero-shot", "coop", "ivlp", "kgcoop", "ga2-reference", "ga2", "ga2-negative", "coupling",
                   "anchors")


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
    args = parser.parse_args(argv)
    ctx = start(args, "base_to_novel", DEFAULT_METHODS, shots=[make_setting(args).shots])
    s = ctx.setting
    jobs = ctx.jobs("base_to_novel", [s.shots], eval_every=s.eval_every)
    records = ctx.run(jobs, "base-to-novel")
    table = reports.base_novel_table(records, ctx.methods, ctx.datasets)
    markdown = (f"Base-to-novel, top-1 % (Base / Novel / HM), mean of splits {ctx.splits}, last epoch "
                f"({s.epochs} epochs, K={s.shots}):\n\n" + reports.format_base_novel(table, ctx.methods, ctx.datasets))
    if len(ctx.splits) > 1:
        spread = {(m, d): v["hm_sd"] for m, row in table.items() for d, v in row.items() if "hm_sd" in v}
        rows = [(m.name, m.label) for m in ctx.methods if m.trained and m.name in table]
        markdown += ("\n\nSpread of HM over the splits (sample sd, points):\n\n"
                     + reports.format_grid(spread, rows, [(d, d) for d in ctx.datasets]))
    plot = Path(args.plot) if args.plot else ctx.out / f"base2novel{'_quick' if args.quick else ''}.png"
    made = reports.plot_curves(records, ctx.methods, plot,
                               f"base (solid) and novel (dashed) top-1 over epochs, mean of {len(ctx.datasets)} "
                               f"dataset(s) x {len(ctx.splits)} split(s); grey: frozen zero-shot")
    comparison = ivlp_vs_zero_shot(table)
    if comparison:
        markdown += (f"\n\nIVLP vs zero-shot (average): base {comparison['ivlp_base_gain']:+.1f} points, "
                     f"base-novel gap {comparison['gap_widening']:+.1f} points wider")
        if "ga2_hm_minus_ivlp_hm" in comparison:
            markdown += f"; GA2 (ours) HM - IVLP HM: {comparison['ga2_hm_minus_ivlp_hm']:+.1f}"
    return ctx.finish("base2novel", {"runs": records, "table": table, "ivlp_vs_zero_shot": comparison,
                                     "plot": str(made) if made else None}, markdown)


if __name__ == "__main__":
    run_script(main)
