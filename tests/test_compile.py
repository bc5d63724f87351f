"""torch.compile over a wrapped model: the hooks are registered before compiling and are traced.

``aot_eager`` runs the same capture as the default backend (TorchDynamo graphs, AOTAutograd for
the backward) without generating kernels, which takes minutes on a small CPU; the inductor
backend is timed beside eager in ``benchmarks/bench_overhead.py --compile``.
"""

import pytest
import torch

import promptcouple as pc
from hosts import make_host

CLASSES = ["archery", "riding a bike", "playing the violin"]


@pytest.mark.parametrize("host_name", ["open_clip", "openai"])
def test_compiled_wrapper_matches_eager(host_name, tokenizer):
    torch._dynamo.reset()
    host = make_host(host_name)
    cfg = pc.CouplingConfig(n_ctx=4, n_vision_ctx=3, text_depth=3, vision_depth=3, dropout=0.0)
    wrapper = pc.CouplingPromptWrapper(host, cfg, hard_prompts=torch.randn(4, 32), tokenizer=tokenizer)
    params = wrapper.trainable_parameters()
    x = torch.randn(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    eager = wrapper(x, CLASSES)
    eager_grads = torch.autograd.grad(eager.logsumexp(-1).sum(), params)
    with torch.no_grad(), wrapper.prompts_disabled():
        plain = wrapper(x, CLASSES)
    assert (eager - plain).abs().max() > 1e-3  # the prompts change the output: the hooks must be traced

    compiled = torch.compile(wrapper, backend="aot_eager")
    for _ in range(2):  # the second call runs the cached graphs
        out = compiled(x, CLASSES)
        grads = torch.autograd.grad(out.logsumexp(-1).sum(), params)
        torch.testing.assert_close(out, eager, atol=1e-6, rtol=0)
        for g, e in zip(grads, eager_grads):
            torch.testing.assert_close(g, e, atol=1e-6, rtol=0)


@pytest.mark.parametrize("many", [False, True], ids=["one-group", "length-groups"])
def test_short_text_path_has_no_graph_break(many, tokenizer):
    """The cut length comes from tokenization (cached with the ids), not from the ids on the
    device: the short text path traces as one graph, with no host sync."""
    torch._dynamo.reset()
    cfg = pc.CouplingConfig(n_ctx=4, n_vision_ctx=3, text_depth=3, vision_depth=3, dropout=0.0)
    wrapper = pc.CouplingPromptWrapper(make_host("open_clip"), cfg, hard_prompts=torch.randn(4, 32),
                                       tokenizer=tokenizer).train()
    names = [f"class {i}" + " jump" * (i % 8) for i in range(120)] if many else CLASSES
    assert (len(wrapper._tokenized(names).groups) > 1) == many
    explanation = torch._dynamo.explain(wrapper.encode_text)(names)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()
    compiled = torch.compile(wrapper.encode_text, backend="aot_eager", fullgraph=True)  # fails on any break
    torch.testing.assert_close(compiled(names), wrapper.encode_text(names), atol=1e-6, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (a host sync is a device notion)")
def test_short_text_pass_makes_no_host_sync_on_cuda(tokenizer):
    """After the first pass has copied the token ids to the device, a text pass (length groups
    included) queues its work without waiting for the device."""
    cfg = pc.CouplingConfig(n_ctx=4, n_vision_ctx=3, text_depth=3, vision_depth=3, dropout=0.0)
    wrapper = pc.CouplingPromptWrapper(make_host("open_clip"), cfg, tokenizer=tokenizer).cuda().train()
    names = [f"class {i}" + " jump" * (i % 8) for i in range(120)]
    wrapper.encode_text(names)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        features = wrapper.encode_text(names)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert features.shape == (120, 32)
