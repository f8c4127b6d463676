"""Engine layout of ``generation.vllm`` (``tensor_parallel_size`` / ``data_parallel_size: auto``) and the split
of one call's requests between data parallel engines (segattr_utils.llm.vllm_parallel)."""

from __future__ import annotations

import json

import pytest

from segattr_utils.llm.architectures import QWEN3_8B, R1_DISTILL_QWEN_1_5B, R1_DISTILL_QWEN_7B
from segattr_utils.llm.vllm_parallel import Devices, ModelLayout, auto_tensor_parallel_size, plan_engines, shard_groups

GIB = 2**30
H100 = 79.6 * GIB
# config.json of two larger models (the paper's three come from segattr_utils.llm.architectures)
LLAMA_70B = dict(
    hidden_size=8192,
    intermediate_size=28672,
    num_hidden_layers=80,
    num_attention_heads=64,
    num_key_value_heads=8,
    vocab_size=128256,
)
QWEN2_5_32B = dict(
    hidden_size=5120,
    intermediate_size=27648,
    num_hidden_layers=64,
    num_attention_heads=40,
    num_key_value_heads=8,
    vocab_size=152064,
)
NODE = Devices(tuple(str(i) for i in range(8)), H100)


@pytest.mark.parametrize(
    "config, published",
    [(R1_DISTILL_QWEN_7B, 7_615_616_512), (R1_DISTILL_QWEN_1_5B, 1_777_088_000), (QWEN3_8B, 8_190_735_360)],
)
def test_weights_match_the_published_parameter_counts(config, published):
    """Biases and norms are left out of the count: well under 0.1% of the parameters."""
    assert ModelLayout.from_config(config, "bfloat16").weight_bytes == pytest.approx(2 * published, rel=1e-3)
    assert ModelLayout.from_config(config, "float32").weight_bytes == pytest.approx(4 * published, rel=1e-3)


@pytest.mark.parametrize("config", [R1_DISTILL_QWEN_7B, R1_DISTILL_QWEN_1_5B, QWEN3_8B])
def test_the_papers_models_get_one_engine_per_gpu_on_80_gb(config, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(config))
    plan = plan_engines(str(tmp_path), "bfloat16", {"tensor_parallel_size": "auto", "data_parallel_size": "auto"}, NODE)
    assert plan.engine_kwargs == {"tensor_parallel_size": 1}
    assert plan.device_groups == tuple((str(i),) for i in range(8)) and plan.data_parallel_size == 8


def test_tensor_parallelism_only_where_the_weights_need_it():
    # 70B: 141 GB of bf16 weights; TP 4 leaves each H100 at 35 GB <= half of 0.9 x 79.6 GiB
    layout = ModelLayout.from_config(LLAMA_70B)
    assert auto_tensor_parallel_size(layout, NODE, 0.9) == 4
    # Qwen2.5-32B: 65 GB; TP 2 on H100s, one engine per GPU on H200s (141 GB)
    mid = ModelLayout.from_config(QWEN2_5_32B)
    assert auto_tensor_parallel_size(mid, NODE, 0.9) == 2
    assert auto_tensor_parallel_size(mid, Devices(NODE.ids, 139.8 * GIB), 0.9) == 1
    # never beyond the KV heads: the 1.5B's 2 KV heads allow TP 1 or 2 only, whatever the memory
    small = ModelLayout.from_config(R1_DISTILL_QWEN_1_5B)
    assert auto_tensor_parallel_size(small, Devices(NODE.ids, 4 * GIB), 0.9) == 2
    with pytest.raises(ValueError, match="no tensor_parallel_size"):
        auto_tensor_parallel_size(small, Devices(NODE.ids, 1 * GIB), 0.9)
    with pytest.raises(ValueError, match="on 2 GPU"):
        auto_tensor_parallel_size(layout, Devices(("0", "1"), H100), 0.9)  # TP 4 needed, 2 GPUs visible


def test_plan_without_gpus_or_auto_keeps_one_engine_in_process(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(R1_DISTILL_QWEN_7B))
    auto = {"tensor_parallel_size": "auto", "data_parallel_size": "auto", "max_model_len": 4096}
    plan = plan_engines(str(tmp_path), "bfloat16", auto, Devices(()))
    assert plan.engine_kwargs == {"tensor_parallel_size": 1, "max_model_len": 4096} and plan.device_groups == ()
    # tiny/smoke profiles: no TP or DP given, nothing read, the settings pass through
    assert plan_engines("no/such/model", "float32", {"max_model_len": 1024}, NODE).engine_kwargs == {
        "max_model_len": 1024
    }
    explicit = plan_engines("no/such/model", "bfloat16", {"tensor_parallel_size": 2, "data_parallel_size": 3}, NODE)
    assert explicit.device_groups == (("0", "1"), ("2", "3"), ("4", "5"))
    with pytest.raises(ValueError, match="needs 10 GPUs; 8 visible"):
        plan_engines("no/such/model", "bfloat16", {"tensor_parallel_size": 2, "data_parallel_size": 5}, NODE)


def test_shards_keep_prompts_whole_balance_work_and_keep_neighbours_together():
    # 40 prompt groups: 20 light ones, then 20 heavy ones (an easy and a hard benchmark)
    work = [1.0] * 20 + [10.0] * 20
    shards = shard_groups(work, 4, blocks_per_shard=4)
    assert sorted(i for shard in shards for i in shard) == list(range(40))  # every group once
    loads = [sum(work[i] for i in shard) for shard in shards]
    assert max(loads) <= 1.2 * sum(work) / 4
    assert all(any(i >= 20 for i in shard) for shard in shards)  # every engine gets some of the hard benchmark
    # neighbouring groups (stage 04's prefixes of one trace) stay together: few cuts between engines
    owner = {i: s for s, shard in enumerate(shards) for i in shard}
    assert sum(owner[i] != owner[i + 1] for i in range(39)) <= 4 * 4
    assert shard_groups([5.0], 3) == [[0], [], []]
