"""Activation checkpointing in the IG engine (``segattr_utils.method.checkpointing``).

The reference is the engine's own plain run on the same model: recomputing a layer in the backward pass
must not change the attributions (<= 1e-5 relative). That checkpointing really happened is checked
independently, by counting how often each layer's MLP runs (once more per chunk of path points).
Tiny randomly initialised models built from configs; nothing is downloaded.
"""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from segattr_utils.method.attribution import token_attributions
from segattr_utils.method.checkpointing import checkpointed_layers, decoder_layers

VOCAB, MAX_POS, LENGTH, SPAN, BASELINE = 128, 64, 28, (23, 28), 3
N_STEPS, CHUNK = 8, 3  # three chunks: 3 + 3 + 2 path points


def tiny(arch: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    if arch == "gpt2":
        kwargs = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=MAX_POS, initializer_range=0.1)
        kwargs.update(pad_token_id=None, bos_token_id=None, eos_token_id=None, **overrides)
        return GPT2LMHeadModel(GPT2Config(**kwargs)).float().eval()
    config, model = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[arch]
    kwargs = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    kwargs.update(num_key_value_heads=2, max_position_embeddings=MAX_POS, initializer_range=0.1, pad_token_id=None)
    kwargs.update(overrides)
    return model(config(**kwargs)).float().eval()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(4, VOCAB, (LENGTH,), generator=torch.Generator().manual_seed(123))


def _count_mlp_calls(model) -> tuple[list[int], list]:
    """Count every run of each layer's MLP, by wrapping its ``forward`` (module hooks do not fire when
    torch.utils.checkpoint recomputes a layer; the forward itself runs)."""
    counts = [0] * len(decoder_layers(model))
    mlps = [layer.mlp for layer in decoder_layers(model)]
    for i, mlp in enumerate(mlps):
        forward = mlp.forward

        def counted(*args, i=i, forward=forward, **kwargs):
            counts[i] += 1
            return forward(*args, **kwargs)

        mlp.forward = counted
    return counts, mlps


def _attribute(model, ids, checkpointing: bool):
    counts, mlps = _count_mlp_calls(model)
    try:
        result = token_attributions(
            model,
            ids,
            SPAN,
            baseline_token_id=BASELINE,
            n_steps=N_STEPS,
            internal_batch_size=CHUNK,
            activation_checkpointing=checkpointing,
        )
    finally:
        for mlp in mlps:
            del mlp.forward
    return result, counts


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gpt2"])
def test_checkpointed_attributions_equal_the_plain_run(arch, ids):
    model = tiny(arch)
    plain, plain_calls = _attribute(model, ids, checkpointing=False)
    checkpointed, checkpointed_calls = _attribute(model, ids, checkpointing=True)

    scale = plain.values.abs().max()
    assert scale > 0.01  # attributions of a size where a relative tolerance means something
    assert (checkpointed.values - plain.values).abs().max() <= 1e-5 * scale
    assert checkpointed.f_input == pytest.approx(plain.f_input, rel=1e-6)
    assert checkpointed.f_baseline == pytest.approx(plain.f_baseline, rel=1e-6)
    assert abs(checkpointed.delta - plain.delta) <= 1e-5 * abs(plain.f_input - plain.f_baseline)
    # every layer ran once more per chunk of path points: it was recomputed in the backward pass
    chunks = -(-N_STEPS // CHUNK)
    assert checkpointed_calls == [calls + chunks for calls in plain_calls]


def test_model_with_dropout_stays_in_eval_mode_and_is_exact(ids):
    """GPT-2's default dropout (0.1) must stay off: the engine checkpoints in eval mode (Hugging Face's
    gradient_checkpointing_enable would need training mode, which switches dropout on)."""
    model = tiny("gpt2", resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    modes = []
    handle = decoder_layers(model)[0].mlp.register_forward_hook(lambda m, *_: modes.append(m.training))
    try:
        plain = token_attributions(model, ids, SPAN, baseline_token_id=BASELINE, n_steps=N_STEPS)
        first = token_attributions(
            model, ids, SPAN, baseline_token_id=BASELINE, n_steps=N_STEPS, activation_checkpointing=True
        )
        second = token_attributions(
            model, ids, SPAN, baseline_token_id=BASELINE, n_steps=N_STEPS, activation_checkpointing=True
        )
    finally:
        handle.remove()
    assert modes and not any(modes)
    assert torch.equal(first.values, second.values)
    assert (first.values - plain.values).abs().max() <= 1e-5 * plain.values.abs().max()


def test_layers_are_restored_after_the_call_and_after_an_error(ids):
    model = tiny("qwen2")
    layers = decoder_layers(model)
    sentinel = layers[1].forward  # an instance attribute, as accelerate's device hook installs one
    layers[1].forward = sentinel
    token_attributions(model, ids, SPAN, baseline_token_id=BASELINE, n_steps=4, activation_checkpointing=True)
    assert "forward" not in layers[0].__dict__
    assert layers[1].__dict__["forward"] is sentinel
    assert model.training is False and all(p.requires_grad for p in model.parameters())

    with pytest.raises(RuntimeError, match="boom"), checkpointed_layers(model):
        assert "forward" in layers[0].__dict__
        raise RuntimeError("boom")
    assert "forward" not in layers[0].__dict__
    assert layers[1].__dict__["forward"] is sentinel


def test_decoder_layers_are_found_for_each_family():
    for arch, path in [("qwen2", "model.layers"), ("llama", "model.layers"), ("gpt2", "transformer.h")]:
        model = tiny(arch)
        assert decoder_layers(model) is model.get_submodule(path)


def test_model_without_decoder_layers_is_refused():
    class NoLayers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.base_model = torch.nn.Linear(2, 2)

    with pytest.raises(TypeError, match="decoder layers"):
        decoder_layers(NoLayers())


def test_activation_checkpointing_must_be_a_bool(ids):
    with pytest.raises(TypeError, match="activation_checkpointing"):
        token_attributions(tiny("qwen2"), ids, SPAN, baseline_token_id=BASELINE, activation_checkpointing="auto")
