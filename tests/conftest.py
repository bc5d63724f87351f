import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/hosts.py

# The test models are tiny: one intra-op thread is faster than two that keep synchronising.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=32)
