"""Both drop-ins under their DDP settings, two gloo processes (tests/loops/ddp_run.py): every
trainable tensor gets its gradient every step (``find_unused_parameters=False`` would fail on the
next step otherwise), both ranks end with the same prompts, MIT and prompt generator, and the
buffers agree without broadcasting (``broadcast_buffers=False``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from loops import fixtures as fx

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp_integrations")
    fx.write_assets(d)
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", OMP_NUM_THREADS="1")
    env.pop("PROMPTCOUPLE_CONFIG", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "loops" / "ddp_run.py"), str(d)]
    proc = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return [torch.load(d / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.parametrize("codebase", ["vificlip", "xclip"])
@pytest.mark.parametrize("method", fx.METHODS)
def test_ddp_ranks_agree(ranks, codebase, method):
    r0, r1 = (r[f"{codebase}/{method}"] for r in ranks)
    # seeded by rank as their main.py does: different initial prompts, rank 0's broadcast by DDP
    assert not torch.equal(r0["before"]["prompts.vision_ctx"], r1["before"]["prompts.vision_ctx"])
    assert r0["losses"] != r1["losses"]  # the ranks saw different data ...
    for key in r0["after"]:  # ... and hold the same state: averaged gradients, unbroadcast buffers equal
        assert torch.equal(r0["after"][key], r1["after"][key]), key
    moved = fx.changed(r0["before"], r0["after"])
    assert moved == set(r0["trainable"])  # every trainable tensor moved, nothing else
    assert torch.equal(r0["sims"], r1["sims"])
