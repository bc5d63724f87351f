"""Pooling several base2novel result files of one protocol: the paired HM difference against IVLP
over all their cells (dataset x split x world seed).

Each full run covers one world seed; the question "would it hold on another world?" needs the cells
of several runs in one interval. The pooled records go through the same code as a single run's
(:func:`.reports.paired_comparison`, i.e. ``benchmarks/stats.py``), so a pooled interval is, by
construction, the interval of the concatenated cells. Files are pooled only when they measure the
same thing: same protocol, preset, hyperparameters (epochs, shots, test clips, ...), model and
backbone recipe, datasets and splits.

Two files may share a world seed when one adds rows to the other (``--methods ivlp+desc ...`` run
after a full run): they must then have trained from the same per-world inputs (hard prompt, k400
backbone), and a method and cell in both must hold the same result to the last test clip (a
rerun that reproduces, which is the evidence that the added rows pair with the old ones); anything
else is refused. A method is pooled when it covers every cell IVLP covers.

The world's code is hashed whole into every result (``inputs.world_code``), so a change anywhere in
``promptcouple/world`` (a new helper, say) marks every later result as made by another world.
Files of two code versions are pooled only when rows they share reproduce to the last test clip:
a rerun of an old world's rows with the new code (``--world-seed 0 --methods zero-shot coop``)
shows the clips, the world CLIP and training unchanged, and joins the versions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple, Sequence

from promptcouple.errors import InvalidInputError, MissingFileError

from . import reports
from .methods import METHODS, Method

# What must agree between two files for their cells to be one sample. Per-world things (the world
# seed, its hard prompt, the k400-first backbone file) may differ; how they were made may not.
_SAME = ("protocol", "benchmark", "setting", "hyperparameters", "data", "world_knobs", "datasets", "splits")


def load(paths: Sequence["str | Path"]) -> list[dict]:
    """Read the result files (``benchmarks/base2novel.py`` JSON)."""
    docs = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise MissingFileError(f"pool: no result file {path}; give the JSON files base2novel.py wrote")
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InvalidInputError(f"pool: {path} is not JSON ({e}); give the JSON files base2novel.py wrote") from e
        if not isinstance(doc, dict) or "runs" not in doc or doc.get("benchmark") != "base2novel":
            raise InvalidInputError(f"pool: {path} is not a base2novel result file (no 'runs', or benchmark "
                                    f"{doc.get('benchmark') if isinstance(doc, dict) else None!r}); give the JSON "
                                    "files base2novel.py wrote")
        doc["_path"] = str(path)
        docs.append(doc)
    return docs


def backbone(doc: dict) -> dict:
    """The backbone a run trained from, without what is per world: k400-first fine-tunes one per
    world seed (its path and file identity differ), so the recipe is what must agree."""
    model = dict(doc.get("model") or {})
    inputs = {k: v for k, v in (doc.get("inputs") or {}).items() if k != "world_code"}  # checked by rows
    if doc.get("protocol") == "k400-first":
        model.pop("backbone_checkpoint", None)
        inputs.pop("backbone_checkpoint", None)
        recipes = {json.dumps(b.get("recipe"), sort_keys=True) for b in (doc.get("k400_backbone") or {}).values()}
        inputs["k400_recipe"] = sorted(recipes)
    return {"model": model, "inputs": inputs}


def signature(doc: dict) -> dict:
    """What must be equal in every pooled file."""
    return {**{k: doc.get(k) for k in _SAME}, "backbone": backbone(doc)}


def _differences(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in list(a) + [k for k in b if k not in a]:  # the first file's order: protocol first
            out += _differences(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [f"{prefix}: {a!r} vs {b!r}"]


class Merged(NamedTuple):
    """What :func:`check_poolable` found poolable: every record once, the rows several files hold
    (per method, how many: reruns that reproduced), and the world code versions (:func:`code_versions`)."""

    records: list
    reproduced: dict
    code_versions: dict


def check_poolable(docs: Sequence[dict]) -> Merged:
    """Refuse files that do not measure the same thing, that trained one world from different
    inputs, that disagree on a row they share, or that are of a world code version no shared row
    joins to the others; return the records merged.

    Raises:
        InvalidInputError: naming the files and what differs.
    """
    if len(docs) < 2:
        raise InvalidInputError(f"pool: give at least two result files (got {len(docs)})")
    first = signature(docs[0])
    for doc in docs[1:]:
        diff = _differences(first, signature(doc))
        if diff:
            raise InvalidInputError(
                f"pool: {doc['_path']} and {docs[0]['_path']} were run differently and cannot be pooled: "
                + "; ".join(diff[:8]) + (f" (and {len(diff) - 8} more)" if len(diff) > 8 else "")
                + ". Pool only runs of one protocol and one setting (rerun the odd one with the others' options)")
    _check_world_inputs(docs)
    records, reproduced = merged_records(docs)  # refuses a method and cell two files disagree on
    return Merged(records, reproduced, code_versions(docs))


def _code(doc: dict) -> "str | None":
    return (doc.get("inputs") or {}).get("world_code")


def _row_key(record: dict) -> tuple:
    """A row: its method and cell (``split`` None for the frozen zero-shot row)."""
    return record["method"], record["dataset"], record.get("split"), record.get("world_seed", 0)


def code_versions(docs: Sequence[dict]) -> dict:
    """The world code versions among the files, each joined to the others by rows both reproduce.

    Returns:
        ``{code: {"files": [...], "rows_shared_with_other_versions": n}}``.

    Raises:
        InvalidInputError: a code version no shared row joins to the rest.
    """
    versions: dict = {}
    for doc in docs:
        versions.setdefault(_code(doc), []).append(doc)
    keys = {code: {_row_key(r) for d in group for r in d["runs"]} for code, group in versions.items()}
    codes = list(versions)
    joined, frontier = {codes[0]}, [codes[0]]
    while frontier:  # the versions reachable through shared (and, by merged_records, identical) rows
        code = frontier.pop()
        for other in codes:
            if other not in joined and keys[code] & keys[other]:
                joined.add(other)
                frontier.append(other)
    alone = [c for c in codes if c not in joined]
    if alone:
        files = ", ".join(d["_path"] for c in alone for d in versions[c])
        raise InvalidInputError(
            f"pool: {files} were made with the world's code {alone[0]!r}, the others with {codes[0]!r}, and no row "
            "in common shows the world's clips, CLIP and training unchanged between them. Rerun a few rows of one "
            "world with the code of the others (e.g. base2novel.py --world-seed 0 --methods zero-shot coop) and "
            "add its file: the rows it shares must reproduce to the last test clip")
    def others(code):
        return set().union(*(keys[o] for o in codes if o != code))

    return {code: {"files": [d["_path"] for d in group],
                   "rows_shared_with_other_versions": len(keys[code] & others(code))}
            for code, group in versions.items()}


def world_inputs(doc: dict) -> dict:
    """Per world seed, what its runs trained from, by the cache's name (a hash of how it was made):
    the hard prompt and, in the k400-first protocol, the fine-tuned backbone; in a one-world file
    also the hard prompt's own top-1 on its source, which a retrained hard prompt must reproduce."""
    seeds = doc.get("world_seeds") or [doc.get("world_seed")]
    hard = doc.get("hard_prompts_by_world_seed") or {}
    backbones = doc.get("k400_backbone") or {}
    trained = ((doc.get("machine") or {}).get("hard_prompt") or {}).get("source_top1") if len(seeds) == 1 else None
    return {str(w): {"hard_prompt": Path(hard[str(w)]).parent.name if hard.get(str(w)) else None,
                     "hard_prompt_top1": trained,
                     "backbone": Path(backbones[str(w)]["path"]).name if str(w) in backbones else None}
            for w in seeds}


def _check_world_inputs(docs: Sequence[dict]) -> None:
    seen: dict[str, tuple[dict, str, "str | None"]] = {}
    for doc in docs:
        for seed, made_from in world_inputs(doc).items():
            if seed not in seen:
                seen[seed] = (made_from, doc["_path"], _code(doc))
                continue
            first, where, code = seen[seed]
            # cache names hash the world's code: across code versions only the hard prompt's top-1 compares
            fields = list(made_from) if code == _code(doc) else ["hard_prompt_top1"]
            diff = [f"{k}: {first[k]!r} vs {made_from[k]!r}" for k in fields
                    if first[k] is not None and made_from[k] is not None and first[k] != made_from[k]]
            if diff:
                raise InvalidInputError(
                    f"pool: world seed {seed} in {where} and {doc['_path']} trained from different inputs "
                    f"({'; '.join(diff)}): their rows do not pair. Run the added methods with the first run's "
                    "--out, so they reuse its cached hard prompt and backbone (with the same code, a retrained "
                    "hard prompt must reach the same top-1)")


def merged_records(docs: Sequence[dict]) -> tuple[list[dict], dict[str, int]]:
    """Every file's records, a method and cell that several files hold kept once; and per method,
    how many of its rows were in more than one file (reruns, equal to the last test clip).

    Raises:
        InvalidInputError: a method and cell in two files with different results (another world
            seed's run given twice, or a rerun that did not reproduce).
    """
    out: list[dict] = []
    seen: dict[tuple, tuple[dict, str]] = {}
    repeated: dict[tuple, None] = {}  # in the order first repeated, for a stable report
    for doc in docs:
        for record in doc["runs"]:
            key = _row_key(record)
            if key in seen:
                first, where = seen[key]
                if _result(first) != _result(record):
                    cell = f"{key[1]}/s{key[2]}/w{key[3]}" if key[2] is not None else f"{key[1]}/w{key[3]}"
                    raise InvalidInputError(
                        f"pool: {key[0]} in cell {cell} is in both {where} and {doc['_path']} with different results "
                        f"(HM {first.get('hm')} vs {record.get('hm')}): each world seed may be pooled once (run the "
                        "other world with --world-seed N); a file that adds rows to a world may repeat a row only "
                        "as a rerun that reproduces it")
                repeated[key] = None
                continue
            seen[key] = (record, doc["_path"])
            out.append(record)
    reproduced: dict[str, int] = {}
    for key in repeated:
        reproduced[key[0]] = reproduced.get(key[0], 0) + 1
    return out, reproduced


def _result(record: dict) -> tuple:
    return record.get("base"), record.get("novel"), record.get("hm"), record.get("correct")


def methods_of(docs: Sequence[dict], records: Sequence[dict]) -> tuple[list[Method], list[str]]:
    """The methods that cover every cell IVLP covers, in the order the files list them, and the
    others (left out: pooled over fewer cells they would not pair with the rest)."""
    hms, _ = reports.cells(records)
    names = list(dict.fromkeys(n for d in docs for n in d["methods"]))
    full = set(hms.get("ivlp", {}))
    common = [n for n in names if full and set(hms.get(n, {})) == full]
    left = [n for n in names if n not in common]
    return [METHODS.get(n) or Method(n, n) for n in common], left


def pool(docs: Sequence[dict], *, resamples: int = 2000) -> dict:
    """The pooled comparison of already-loaded result files (:func:`load`).

    Returns:
        ``{"protocol", "world_seeds", "methods", "paired_vs_ivlp", "hm_by_cell", "table", ...}``; the
        intervals are :func:`.reports.paired_comparison` over the concatenated records.
    """
    merged = check_poolable(docs)
    every = merged.records
    methods, left_out = methods_of(docs, every)
    names = {m.name for m in methods}
    if "ivlp" not in names:
        raise InvalidInputError("pool: the files have no common 'ivlp' rows to compare with; run base2novel.py "
                                "with ivlp among --methods")
    records = [r for r in every if r["method"] in names]
    paired = reports.paired_comparison(records, "ivlp", resamples=resamples)
    with_descriptions = reports.description_comparison(records, methods, resamples=resamples)
    hms, _ = reports.cells(records)
    seeds = sorted({s for d in docs for s in (d.get("world_seeds") or [d.get("world_seed")]) if s is not None})
    table = reports.base_novel_table(records, methods, docs[0]["datasets"])
    per_file = {d["_path"]: {"world_seeds": d.get("world_seeds"), "paired_vs_ivlp": d.get("paired_vs_ivlp"),
                             "timing": d.get("timing"), "machine": d.get("machine")} for d in docs}
    return {"benchmark": "base2novel_pooled", "protocol": docs[0].get("protocol"), "world_seeds": seeds,
            "sources": [d["_path"] for d in docs], "signature": signature(docs[0]),
            "methods": [m.name for m in methods], "methods_left_out": left_out, "datasets": docs[0]["datasets"],
            "splits": docs[0]["splits"], "n_cells": len(hms["ivlp"]), "paired_vs_ivlp": paired,
            "paired_descriptions_vs_plain": with_descriptions, "reproduced": merged.reproduced,
            "world_code_versions": merged.code_versions,
            "hm_by_cell": hms, "table": table, "per_file": per_file, "resamples": resamples}


def markdown(pooled: dict) -> str:
    """The pooled table of HM - IVLP, one reading per method, and the mean table over the cells."""
    methods = [METHODS.get(n) or Method(n, n) for n in pooled["methods"]]
    hp = pooled["signature"]["hyperparameters"] or {}
    head = (f"Base-to-novel, protocol {pooled['protocol']}, pooled over world seeds {pooled['world_seeds']} x "
            f"splits {pooled['splits']} x datasets {pooled['datasets']} ({pooled['n_cells']} cells; "
            f"{hp.get('epochs')} epochs, K={hp.get('shots')}, {hp.get('test_per_class') or 'all'} test clips per "
            f"class). Sources: {', '.join(pooled['sources'])}.")
    out = (head + "\n\nHM against IVLP, paired by cell (dataset x split x world seed), top-1 points:\n\n"
           + reports.format_comparison(pooled["paired_vs_ivlp"], methods, "IVLP") + "\n\n"
           + "\n".join(reports.readings(pooled["paired_vs_ivlp"], methods))
           + "\n\nTop-1 % (Base / Novel / HM), mean over the pooled splits and world seeds, last epoch:\n\n"
           + reports.format_base_novel(pooled["table"], methods, pooled["datasets"]))
    if pooled.get("paired_descriptions_vs_plain"):
        out += ("\n\nWith descriptions against the same method without them (HM, paired by cell), top-1 points:\n\n"
                + reports.format_comparison(pooled["paired_descriptions_vs_plain"], methods, "plain row") + "\n\n"
                + "\n".join(reports.readings(pooled["paired_descriptions_vs_plain"], methods)))
    if pooled.get("reproduced"):
        out += ("\n\nRows in more than one file, identical to the last test clip (reruns): "
                + ", ".join(f"{m} ({n})" for m, n in pooled["reproduced"].items()))
    if len(pooled.get("world_code_versions") or {}) > 1:
        out += ("\n\nWorld code versions (joined by rows reproduced to the last test clip): " + "; ".join(
            f"{code}: {', '.join(v['files'])} ({v['rows_shared_with_other_versions']} rows shared)"
            for code, v in pooled["world_code_versions"].items()))
    if pooled["methods_left_out"]:
        out += f"\n\nLeft out (not in every cell IVLP is in): {', '.join(pooled['methods_left_out'])}"
    return out


def write(pooled: dict, prefix: "str | Path") -> dict:
    """``PREFIX.json``, ``PREFIX.md`` and the forest plot ``PREFIX.png``; returns the paths."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    methods = [METHODS.get(n) or Method(n, n) for n in pooled["methods"]]
    md = markdown(pooled)
    png = reports.plot_forest(pooled["paired_vs_ivlp"], methods, prefix.with_name(prefix.name + ".png"),
                              f"HM - IVLP, {pooled['protocol']}, pooled over world seeds {pooled['world_seeds']} "
                              f"({pooled['n_cells']} cells)")
    paths = {"json": str(prefix.with_name(prefix.name + ".json")), "md": str(prefix.with_name(prefix.name + ".md")),
             "plot_forest": str(png) if png else None}
    reports.write_json(Path(paths["json"]), {**pooled, "markdown": md, "files": paths,
                                             "machine": reports.machine_state()})
    from promptcouple.fileio import atomic_write_text

    atomic_write_text(Path(paths["md"]), md + "\n")
    return paths
