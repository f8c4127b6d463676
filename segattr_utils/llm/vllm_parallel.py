"""How many GPUs each vLLM engine gets and how many engines run at once (``generation.vllm``), and how the
requests of one ``generate`` call are split between the engines.

vLLM decodes memory-bound: every step reads the weights and the KV cache of every running sequence. For
the paper's models (R1-Distill-Qwen-1.5B and -7B, Qwen3-8B: 3.6-16.4 GB of bf16 weights) one 80 GB GPU
holds the weights and a large KV cache, so the node runs one engine per GPU (tensor parallel size 1, data
parallel size = number of GPUs): no all-reduces, and no KV-head copies, which tensor parallelism beyond the
model's KV-head count makes (the 1.5B has 2 KV heads: at TP 4 each GPU holds one whole head, so the
node's KV cache stores every token twice and the 1.5B decodes at half the rate per GPU).

``tensor_parallel_size: auto`` (:func:`auto_tensor_parallel_size`): the smallest of 1, 2, 4, 8 that
divides the attention and the KV heads and leaves at least half of the engine's memory share
(``gpu_memory_utilization`` x GPU memory) to the KV cache. ``data_parallel_size: auto``: the visible
GPUs // TP. vLLM refuses ``LLM(data_parallel_size > 1)`` in one process, so the project runs its own
replicas: one worker process per engine (:mod:`segattr_utils.llm.vllm_worker`), each with
``CUDA_VISIBLE_DEVICES`` set to its TP GPUs (:class:`EnginePlan`).

The requests of one call are split by prompt (:func:`shard_groups`): every request of a prompt goes to
the same engine, so the K samples of a question (and its greedy output) share the prompt's KV cache
through prefix caching, as with one engine. Each engine then runs its share in chunks of
``generation.vllm_chunk_requests`` requests (:meth:`segattr_utils.llm.vllm_worker.WorkerPool.run_chunks`).
Without ``generation.vllm.batch_invariant`` a request's sample depends on the batch it ran in, so another
split gives other samples of the same distribution (:mod:`segattr_utils.llm.generation`).
"""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Tensor parallel sizes ``auto`` chooses from (vLLM also needs TP to divide the attention heads).
TP_CHOICES = (1, 2, 4, 8)
#: ``auto`` keeps the weights within this share of an engine's memory (gpu_memory_utilization x GPU
#: memory x TP): the rest holds the KV cache, activations and CUDA graphs.
MAX_WEIGHT_SHARE = 0.5
#: vLLM's default ``gpu_memory_utilization`` (vllm.config.CacheConfig).
DEFAULT_UTILISATION = 0.9
BYTES_PER_PARAM = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4}


@dataclass(frozen=True)
class Devices:
    """The GPUs the engines may use: their names as ``CUDA_VISIBLE_DEVICES`` gives them (one worker is
    started on each group of TP names), and the memory of one GPU (None: unknown, e.g. no GPU)."""

    ids: tuple[str, ...]
    memory_bytes: float | None = None

    @property
    def count(self) -> int:
        return len(self.ids)


def visible_devices() -> Devices:
    """The GPUs this process sees (``torch.cuda.device_count()``, which honours ``CUDA_VISIBLE_DEVICES``),
    named as ``CUDA_VISIBLE_DEVICES`` names them (indices when it is unset), and GPU 0's memory. Queries
    device properties only; no tensor is allocated, so the engines find the GPUs free."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return Devices(())
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    ids = tuple(listed[:count]) if len(listed) >= count else tuple(str(i) for i in range(count))
    return Devices(ids, float(torch.cuda.get_device_properties(0).total_memory))


# ---------------------------------------------------------------------------------------------
# The model's shape


@dataclass(frozen=True)
class ModelLayout:
    """What the choice of TP depends on: attention and KV heads (vLLM shards both over the TP GPUs) and the
    size of the weights in the engine's dtype."""

    heads: int
    kv_heads: int
    weight_bytes: float

    @classmethod
    def from_config(cls, config: dict, dtype: str = "bfloat16") -> ModelLayout:
        """From a decoder's ``config.json`` (Qwen2/Qwen3/Llama field names; a multimodal config's
        ``text_config``). Parameters: embeddings (twice when untied) + per layer the q/k/v/o projections
        and a gated MLP (3 matrices); biases and norms are left out (well under 0.1%)."""
        config = config.get("text_config") or config
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        kv_heads = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or hidden // heads)
        embeddings = int(config["vocab_size"]) * hidden * (1 if config.get("tie_word_embeddings") else 2)
        attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
        mlp = 3 * hidden * int(config["intermediate_size"])
        params = embeddings + int(config["num_hidden_layers"]) * (attention + mlp)
        width = BYTES_PER_PARAM.get(dtype, BYTES_PER_PARAM.get(str(config.get("torch_dtype")), 2))
        return cls(heads, kv_heads, float(params * width))


def model_config(model_path: str) -> dict:
    """The ``config.json`` of a model folder, or of a hub id from the local Hugging Face cache (nothing is
    downloaded when ``HF_HUB_OFFLINE=1``)."""
    local = Path(model_path) / "config.json"
    if local.is_file():
        return json.loads(local.read_text(encoding="utf-8"))
    from transformers import AutoConfig

    from .models import offline

    return AutoConfig.from_pretrained(model_path, local_files_only=offline()).to_dict()


# ---------------------------------------------------------------------------------------------
# TP and DP


def auto_tensor_parallel_size(layout: ModelLayout, devices: Devices, utilisation: float) -> int:
    """The smallest TP of :data:`TP_CHOICES` that divides the attention and the KV heads (no KV-head
    copies) and whose weight shard fits in :data:`MAX_WEIGHT_SHARE` of ``utilisation`` x one GPU's memory
    (any such TP when the memory is unknown); at most the visible GPUs when there are any."""
    fitting = [
        tp
        for tp in TP_CHOICES
        if layout.heads % tp == 0
        and layout.kv_heads % tp == 0
        and (
            devices.memory_bytes is None
            or layout.weight_bytes / tp <= MAX_WEIGHT_SHARE * utilisation * devices.memory_bytes
        )
    ]
    usable = [tp for tp in fitting if devices.count == 0 or tp <= devices.count]
    if not usable:
        raise ValueError(
            f"no tensor_parallel_size in {TP_CHOICES} fits this model ({layout.heads} attention / {layout.kv_heads} "
            f"KV heads, {layout.weight_bytes / 2**30:.1f} GiB of weights) on {devices.count} GPU(s) of "
            f"{(devices.memory_bytes or 0) / 2**30:.0f} GiB at gpu_memory_utilization {utilisation}; set it by hand"
        )
    return usable[0]


@dataclass(frozen=True)
class EnginePlan:
    """The engines of one model: ``engine_kwargs`` for each ``vllm.LLM`` (TP resolved, no
    ``data_parallel_size``) and, when more than one engine runs, the ``CUDA_VISIBLE_DEVICES`` of each
    worker (empty: one engine in this process)."""

    engine_kwargs: dict
    device_groups: tuple[tuple[str, ...], ...] = ()

    @property
    def data_parallel_size(self) -> int:
        return max(1, len(self.device_groups))


def parallel_sizes(
    tp: int | str | None, dp: int | str, layout: Callable[[], ModelLayout], devices: Devices, utilisation: float
) -> tuple[int | None, int]:
    """``(TP, DP)`` for the settings ``tp`` (an integer, ``auto`` or None: vLLM's default) and ``dp`` (an
    integer or ``auto``). TP ``auto``: :func:`auto_tensor_parallel_size` of ``layout()`` (called only
    then); DP ``auto``: the visible GPUs // TP (1 without GPUs). :func:`plan_engines` and
    ``benchmarks/gpu_hours.py`` both resolve the settings here."""
    if tp == "auto":
        tp = auto_tensor_parallel_size(layout(), devices, utilisation)
    tp = None if tp is None else int(tp)
    dp = max(1, devices.count // (tp or 1)) if dp == "auto" else int(dp)
    if dp < 1:
        raise ValueError(f"generation.vllm.data_parallel_size must be positive or 'auto', got {dp}")
    return tp, dp


def plan_engines(model_path: str, dtype: str, engine_kwargs: dict, devices: Devices) -> EnginePlan:
    """Resolve ``tensor_parallel_size`` and ``data_parallel_size`` of ``generation.vllm`` (integers or
    ``auto``; absent: vLLM's default TP, DP 1) for ``model_path`` on ``devices`` (:func:`parallel_sizes`;
    TP ``auto`` reads the model's config).

    DP > 1 needs DP x TP visible GPUs: worker ``i`` gets GPUs ``i·TP .. (i+1)·TP - 1``. Settings without
    ``auto`` and DP 1 pass through unchanged (vLLM checks them).
    """
    kwargs = dict(engine_kwargs)
    utilisation = float(kwargs.get("gpu_memory_utilization", DEFAULT_UTILISATION))
    tp, dp = parallel_sizes(
        kwargs.pop("tensor_parallel_size", None),
        kwargs.pop("data_parallel_size", 1),
        lambda: ModelLayout.from_config(model_config(model_path), dtype),
        devices,
        utilisation,
    )
    if tp is not None:
        kwargs["tensor_parallel_size"] = tp
    if dp == 1:
        return EnginePlan(kwargs)
    width = tp or 1
    if dp * width > devices.count:
        raise ValueError(
            f"data_parallel_size {dp} x tensor_parallel_size {width} needs {dp * width} GPUs; {devices.count} visible"
        )
    return EnginePlan(kwargs, tuple(devices.ids[i * width : (i + 1) * width] for i in range(dp)))


# ---------------------------------------------------------------------------------------------
# Splitting one call's requests between the engines


def shard_groups(work: Sequence[float], n_shards: int, blocks_per_shard: int = 16) -> list[list[int]]:
    """Indices of prompt groups per engine, balanced by expected ``work`` (one number per group, in call
    order).

    The groups are cut, in order, into about ``n_shards x blocks_per_shard`` consecutive blocks of equal
    work, and each block goes to the engine with the least work so far: consecutive prompts that share a
    prefix (stage 04's prefixes of one trace) mostly stay together, while every engine gets blocks from the
    whole call (stage 09's easy and hard benchmarks alike). A shard's groups keep their call order.
    """
    if n_shards < 1:
        raise ValueError("n_shards must be positive")
    total = float(sum(work))
    n_blocks = max(1, n_shards * blocks_per_shard)
    blocks: list[list[int]] = [[]]
    done = 0.0
    for index, amount in enumerate(work):
        if blocks[-1] and total > 0 and done + amount / 2 > len(blocks) * total / n_blocks:
            blocks.append([])
        blocks[-1].append(index)
        done += amount
    loads = [(0.0, shard) for shard in range(n_shards)]
    shards: list[list[int]] = [[] for _ in range(n_shards)]
    for block in blocks:
        load, shard = heapq.heappop(loads)
        shards[shard].extend(block)
        heapq.heappush(loads, (load + sum(work[i] for i in block), shard))
    return [sorted(shard) for shard in shards]
