"""Pool base2novel result files of one protocol: HM - IVLP over all their cells (dataset x split x world seed).

Each full ``base2novel.py`` run is one world seed; pooling several gives the interval a
recommendation needs, over cells of several worlds (95% Student-t) and over their test clips (95%
paired bootstrap), computed by the same code as a single run's (``benchmarks/protocol/pooling.py``).
Files of different protocols or settings (epochs, shots, test clips, backbone, datasets, splits) are
refused. A later run may add rows to a world (``--methods ivlp+desc ...`` with the full run's
``--out``, so it reuses that world's hard prompt); it is pooled beside the full run when a row in
both reproduces to the last test clip, and refused otherwise, as is one world's full run twice.
Writes ``PREFIX.json``, ``PREFIX.md`` and the forest plot ``PREFIX.png``.

Example::

    python benchmarks/pool.py benchmarks/results/base2novel_full_world{0,1,2}_cpu.json \\
        benchmarks/results/base2novel_desc_world{0,1}_cpu.json --out benchmarks/results/base2novel_pooled_fromclip_cpu
"""

from __future__ import annotations

import argparse
import logging
import time

from promptcouple.errors import PromptcoupleError
from protocol import pooling
from protocol.context import run_script

log = logging.getLogger("promptcouple.benchmarks")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="base2novel.py result JSON files, one protocol and setting")
    parser.add_argument("--out", default="base2novel_pooled",
                        help="prefix of the outputs: PREFIX.json, PREFIX.md, PREFIX.png (default: %(default)s)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples over test clips")
    args = parser.parse_args(argv)
    t = time.perf_counter()
    try:
        pooled = pooling.pool(pooling.load(args.files), resamples=args.resamples)
    except PromptcoupleError as e:  # a user's mistake: the message, not a traceback
        raise SystemExit(f"error: {e}") from None
    pooled["seconds"] = time.perf_counter() - t
    paths = pooling.write(pooled, args.out)
    log.info("%s\n\nwritten: %s", pooling.markdown(pooled), ", ".join(p for p in paths.values() if p))
    return {**pooled, "files": paths}


if __name__ == "__main__":
    run_script(main)
