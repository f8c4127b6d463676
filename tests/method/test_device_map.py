"""IG for a model dispatched with ``device_map``, as far as a CPU-only machine allows.

A CPU has one torch device, so a model cannot be spread over two real devices here. What is tested:

- a model dispatched by accelerate with its embedding, a decoder layer and its LM head offloaded to disk
  (their weights sit on "meta" between calls and are loaded onto the execution device by accelerate's
  hooks) gives the same attributions as the plain model, with and without activation checkpointing;
- the answer ids are gathered on the device the logits come out on, checked on every ``gather`` the
  engine's target function runs when the LM head puts its logits on another device ("meta");
- :func:`execution_device` reads accelerate's execution device (an int GPU index included).

Not tested here: a model whose layers really sit on two GPUs (no GPU on this machine).
"""

from __future__ import annotations

import types

import pytest
import torch
from transformers import Qwen2ForCausalLM

from segattr_utils.method.attribution import answer_log_prob, execution_device, token_attributions

from ..fixtures.tiny_models import tiny_qwen2 as make_tiny_qwen2

VOCAB, LENGTH, SPAN, BASELINE = 128, 28, (23, 28), 3


def tiny_qwen2() -> Qwen2ForCausalLM:
    return (
        make_tiny_qwen2(
            VOCAB,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            initializer_range=0.1,
            pad_token_id=None,
        )
        .float()
        .eval()
    )


@pytest.fixture(scope="module")
def ids():
    return torch.randint(4, VOCAB, (LENGTH,), generator=torch.Generator().manual_seed(123))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_model_dispatched_with_offloaded_embedding_layer_and_head(ids, tmp_path, checkpointing):
    from accelerate import dispatch_model

    reference = token_attributions(tiny_qwen2(), ids, SPAN, baseline_token_id=BASELINE, n_steps=6)
    device_map = {
        "model.embed_tokens": "disk",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.norm": "cpu",
        "model.rotary_emb": "cpu",
        "lm_head": "disk",
    }
    model = dispatch_model(tiny_qwen2(), device_map=device_map, main_device="cpu", offload_dir=str(tmp_path))
    assert model.get_input_embeddings().weight.device.type == "meta"  # offloaded between calls
    hooked_forward = model.model.layers[1].forward

    got = token_attributions(
        model,
        ids,
        SPAN,
        baseline_token_id=BASELINE,
        n_steps=6,
        internal_batch_size=4,
        activation_checkpointing=checkpointing,
    )
    assert (got.values - reference.values).abs().max() <= 1e-6 * reference.values.abs().max()
    assert got.f_input == pytest.approx(reference.f_input, rel=1e-6)
    assert model.model.layers[1].forward == hooked_forward  # accelerate's hook survives checkpointing


class _MetaHead(torch.nn.Module):
    """An LM head on another device than the backbone: moves its input there (as accelerate's hook does)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(weight.to("meta"), requires_grad=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden.to("meta"), self.weight)


def test_answer_ids_are_gathered_on_the_logits_device(ids):
    from torch.utils._python_dispatch import TorchDispatchMode

    model = tiny_qwen2()
    head = _MetaHead(model.lm_head.weight.detach())
    gathers = []

    class WatchGather(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.gather.default:
                gathers.append((args[0].device.type, args[2].device.type))
            return func(*args, **(kwargs or {}))

    embeds = model.get_input_embeddings()(ids).unsqueeze(0)
    targets = ids[SPAN[0] : SPAN[1]].unsqueeze(0)  # on the CPU, where the embedding is
    with torch.no_grad(), WatchGather():
        f = answer_log_prob(model.base_model, head, embeds, targets, SPAN)
    assert f.device.type == "meta"
    assert gathers == [("meta", "meta")]


def test_execution_device_reads_accelerate_hooks():
    linear = torch.nn.Linear(2, 2)
    assert execution_device(linear) == torch.device("cpu")
    linear._hf_hook = types.SimpleNamespace(execution_device=1)
    assert execution_device(linear) == torch.device("cuda:1")
    linear._hf_hook = types.SimpleNamespace(execution_device="cuda:0")
    assert execution_device(linear) == torch.device("cuda:0")
    assert execution_device(torch.nn.ReLU()) is None
