"""The IG cost estimator (``segattr_utils.method.ig_cost``) against independent numbers:

- a hand calculation on a toy config, written out term by term from the table in the module docstring;
- the parameter count of the model transformers builds from each config;
- the bytes autograd really saves per decoder layer (``saved_tensors_hooks`` on 1- and 2-layer models);
- the peak memory measured on the CPU (RSS high-water mark of a fresh process) for several configs;
- the automatic choice of chunk size and checkpointing at memory budgets on either side of a setting.

Tiny randomly initialised models built from configs; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import segattr_utils
from segattr_utils.method.attribution import token_attributions
from segattr_utils.method.ig_cost import (
    Architecture,
    available_memory,
    candidate_settings,
    choose_ig_settings,
    estimate_ig_cost,
)


def toy_config(layers: int = 3) -> Qwen2Config:
    # h = 8, I = 16, 2 heads of 4 -> q = 8, 1 KV head -> kv = 4, vocab 10, untied head
    return Qwen2Config(
        vocab_size=10,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    )


def test_hand_calculation_on_a_toy_config():
    """bfloat16 (b = 2), L = 5 tokens, P = 2 points per chunk, T = 2 answer tokens, J = 4 points."""
    b, h, i, heads, q, kv, vocab, layers, length, points, answer, steps = 2, 8, 16, 2, 8, 4, 10, 3, 5, 2, 2, 4
    norms = 2 * (4 * h + 4)  # 72: float32 copy + 1/rms of two RMSNorms
    attention = b * (2 * q + 2 * kv) + 4 * heads  # 56: q, out, k, v + float32 log-sum-exp
    mlp = 3 * b * i  # 96
    saved = norms + attention + mlp
    assert saved == 224
    extra = 4 * h + 3 * b * i + b * h  # 144: float32 path points, MLP backward, residual gradient
    # float32 x, x' and the running sum of the first chunk while the second runs; the answer's float32
    # log-probabilities, their gradient and the logits' gradient
    per_trace = length * 3 * 4 * h + points * answer * vocab * 3 * 4  # 480 + 480
    plain = points * length * (layers * saved + extra) + per_trace
    checkpointed = points * length * (layers * b * h + saved + extra) + per_trace
    assert (plain, checkpointed) == (9120, 5120)

    parameters = vocab * h + layers * ((h * q + q) + 2 * (h * kv + kv) + q * h + 3 * h * i + 2 * h) + h + vocab * h
    assert parameters == 1992
    linear = layers * length * 2 * (h * (q + 2 * kv) + q * h + 3 * h * i)  # 17,280
    attention_flops = layers * 2 * heads * (q // heads) * length**2  # 1,200
    head = 2 * h * vocab * answer  # 320
    forward, backward = linear + attention_flops + head, linear + 2.5 * attention_flops + head
    flops = 4 * forward + steps * (forward + backward)
    assert flops == 232_800

    for checkpointing, working, total_flops in [
        (False, plain, flops),
        (True, checkpointed, flops + steps * (linear + attention_flops)),
    ]:
        cost = estimate_ig_cost(
            toy_config(),
            length,
            points_per_chunk=points,
            activation_checkpointing=checkpointing,
            dtype="bfloat16",
            n_steps=steps,
            answer_tokens=answer,
            flops_per_second=1000.0,
        )
        assert cost.layer_bytes == saved
        assert cost.kept_bytes_per_layer == (b * h if checkpointing else saved)
        assert cost.working_bytes == working
        assert cost.weight_bytes == parameters * b
        assert cost.peak_bytes == parameters * b + working
        assert cost.flops == total_flops
        assert cost.seconds == pytest.approx(total_flops / 1000.0)
        assert cost.passes == 2


CONFIGS = {
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "qwen2_tied": (Qwen2Config, Qwen2ForCausalLM, {"tie_word_embeddings": True}),
    "llama_biases": (LlamaConfig, LlamaForCausalLM, {"attention_bias": True, "mlp_bias": True}),
    "llama_head_dim": (LlamaConfig, LlamaForCausalLM, {"head_dim": 16}),
    "mistral": (MistralConfig, MistralForCausalLM, {}),
}


def _config(name: str, layers: int = 2, **extra):
    if name == "gpt2":
        kwargs = dict(vocab_size=100, n_embd=32, n_layer=layers, n_head=4, n_positions=64)
        kwargs.update(bos_token_id=None, eos_token_id=None, **extra)
        return GPT2Config(**kwargs), GPT2LMHeadModel
    config_class, model_class, overrides = CONFIGS[name]
    kwargs = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=layers)
    kwargs.update(num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=None)
    kwargs.update(tie_word_embeddings=False)
    kwargs.update(overrides, **extra)
    return config_class(**kwargs), model_class


@pytest.mark.parametrize("name", [*CONFIGS, "gpt2"])
def test_parameter_count_matches_the_built_model(name):
    config, model_class = _config(name)
    assert Architecture.from_config(config).parameters() == sum(p.numel() for p in model_class(config).parameters())


def _saved_bytes(model, length: int, points: int) -> int:
    """Bytes of distinct non-parameter storages autograd saves during the engine's gradient passes."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in parameters:
            seen[pointer] = max(seen.get(pointer, 0), tensor.untyped_storage().nbytes())
        return tensor

    ids = torch.randint(4, 100, (length,), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        token_attributions(model, ids, (length - 3, length), baseline_token_id=3, n_steps=points)
    return sum(seen.values())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["qwen2", "llama_head_dim", "gpt2"])
def test_saved_bytes_per_layer_are_what_autograd_saves(name, dtype):
    """The 2-layer model saves exactly one layer's worth more than the 1-layer model, per token and point."""
    length, points = 40, 2
    saved = []
    for layers in (1, 2):
        config, model_class = _config(name, layers=layers)
        torch.manual_seed(0)
        model = model_class(config).to(getattr(torch, dtype)).eval()
        saved.append(_saved_bytes(model, length, points))
    predicted = Architecture.from_config(config).saved_bytes_per_layer(2 if dtype == "bfloat16" else 4)
    if name == "gpt2" and dtype == "bfloat16":
        # the CPU's layer_norm keeps mean and 1/std of a bfloat16 input in bfloat16; CUDA's (and the
        # estimator) in float32: 2 LayerNorms x 2 statistics x 2 bytes less here
        predicted -= 8
    assert (saved[1] - saved[0]) / (length * points) == predicted


# A fresh process per measurement: its RSS high-water mark (VmHWM, reset through /proc/self/clear_refs)
# belongs to the call alone. MALLOC_MMAP_THRESHOLD_ makes glibc return every freed block above 64 KiB to
# the OS at once, so that RSS follows the live tensors instead of the heap's high-water mark.
MEASURE = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    from segattr_utils import estimate_ig_cost, token_attributions

    torch.set_num_threads(1)
    family, hidden, inter, layers, length, points, checkpointing = json.loads(sys.argv[1])
    config_class, model_class = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}[family]
    config = config_class(vocab_size=1000, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=length,
                          pad_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = model_class(config).eval()
    ids = torch.randint(10, 1000, (length,), generator=torch.Generator().manual_seed(1))
    n_steps = max(points, 2)
    kwargs = dict(baseline_token_id=3, n_steps=n_steps, internal_batch_size=points,
                  activation_checkpointing=checkpointing)
    token_attributions(model, ids[:32], (28, 32), **kwargs)  # warm-up: lazy initialisation is not the call's

    def rss():
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = rss()
    token_attributions(model, ids, (length - 4, length), **kwargs)
    with open("/proc/self/status") as handle:
        peak = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM"))
    predicted = estimate_ig_cost(config, length, points_per_chunk=points, activation_checkpointing=checkpointing,
                                 dtype="float32", n_steps=n_steps, answer_tokens=4)
    print(json.dumps({"measured": peak - before, "predicted": predicted.working_bytes}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self (Linux)")
@pytest.mark.parametrize(
    "setting",
    [
        ("qwen2", 64, 160, 2, 3072, 2, False),
        ("qwen2", 64, 160, 2, 3072, 2, True),
        ("llama", 96, 256, 3, 3072, 1, False),
        ("llama", 96, 256, 3, 3072, 1, True),
    ],
    ids=["qwen2-plain", "qwen2-checkpointed", "llama-plain", "llama-checkpointed"],
)
def test_predicted_peak_within_25_percent_of_measured(setting, tmp_path):
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, HF_HUB_OFFLINE="1", MALLOC_MMAP_THRESHOLD_="65536")
    env["PYTHONPATH"] = str(repo) + os.pathsep + os.environ.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps(setting)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{setting}: measured {result['measured'] / 1e6:.1f} MB, predicted {result['predicted'] / 1e6:.1f} MB")
    assert result["measured"] > 30e6  # activations dominate the measurement, not allocator noise
    assert abs(result["predicted"] - result["measured"]) <= 0.25 * result["measured"]


def test_choose_ig_settings_picks_the_fastest_setting_that_fits():
    config, length, steps = toy_config(layers=12), 5, 4  # deep enough for checkpointing to pay
    cost = {
        (chunk, checkpointing): estimate_ig_cost(
            config,
            length,
            points_per_chunk=chunk,
            activation_checkpointing=checkpointing,
            n_steps=steps,
            answer_tokens=2,
        )
        for chunk, checkpointing in candidate_settings(steps)
    }
    assert sorted(cost) == [(1, False), (1, True), (2, False), (2, True), (4, False), (4, True)]

    def choose(available, **kwargs):
        choice = choose_ig_settings(config, length, available, n_steps=steps, answer_tokens=2, margin=0.0, **kwargs)
        return None if choice is None else (choice.points_per_chunk, choice.activation_checkpointing)

    # plenty of memory: every point in one pass, no recomputation
    assert choose(10**9) == (4, False)
    # just below what 4 points need without checkpointing: 2 points per pass, still no recomputation
    assert choose(cost[4, False].working_bytes - 1) == (2, False)
    # below what 1 point needs without checkpointing: checkpointing, with as many points as fit
    assert cost[1, False].working_bytes > cost[4, True].working_bytes
    assert choose(cost[1, False].working_bytes - 1) == (4, True)
    assert choose(cost[4, True].working_bytes - 1) == (2, True)
    assert choose(cost[1, True].working_bytes) == (1, True)
    assert choose(cost[1, True].working_bytes - 1) is None
    # a fixed setting is respected; a total memory must hold the weights too
    assert choose(10**9, activation_checkpointing=True) == (4, True)
    assert choose(10**9, internal_batch_size=1) == (1, False)
    assert choose(cost[1, True].peak_bytes - 1, weights_loaded=False) is None
    # the margin is kept free
    half = choose_ig_settings(config, length, cost[1, True].working_bytes, n_steps=steps, answer_tokens=2, margin=0.5)
    assert half is None


def test_numpy_integers_are_accepted():
    import numpy as np

    expected = estimate_ig_cost(toy_config(), 5, answer_tokens=2, n_steps=4)
    assert estimate_ig_cost(toy_config(), np.int64(5), answer_tokens=np.int64(2), n_steps=np.int64(4)) == expected


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="seq_len"):
        estimate_ig_cost(toy_config(), 0)
    with pytest.raises(ValueError, match="dtype"):
        estimate_ig_cost(toy_config(), 16, dtype="int8")
    with pytest.raises(ValueError, match="model_type"):
        estimate_ig_cost(type("BertLike", (), {"model_type": "bert"})(), 16)
    with pytest.raises(ValueError, match="answer_tokens"):
        estimate_ig_cost(toy_config(), 5, answer_tokens=6)
    with pytest.raises(ValueError, match="internal_batch_size"):
        candidate_settings(4, internal_batch_size=0)
    with pytest.raises(ValueError, match="activation_checkpointing"):
        candidate_settings(4, activation_checkpointing="yes")


def test_available_memory_on_the_cpu(monkeypatch):
    assert available_memory("cpu", cpu_budget_bytes=123) == 123
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("Memory", (), {"available": 456})())
    assert available_memory("cpu") == 456


def test_estimator_is_exported_at_the_top_level():
    assert segattr_utils.estimate_ig_cost is estimate_ig_cost
    assert "estimate_ig_cost" in segattr_utils.__all__
