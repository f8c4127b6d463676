"""Memory and compute of token IG (Sec. 2.2, Eq. 1-2) predicted from a model config alone (no weights).

Used by ``segattr estimate`` (a table of chunk sizes x checkpointing for a GPU), by stage 03's
``attribution.internal_batch_size: auto`` / ``attribution.activation_checkpointing: auto`` (per trace, the
fastest setting that fits the device's free memory) and by ``benchmarks/ig_memory.py``, which measures
what it predicts.

**What the engine holds** (:func:`segattr_utils.method.attribution.token_attributions`; each term below was
found with ``torch.autograd.graph.saved_tensors_hooks`` and checked against measured peaks). One chunk of
P path points runs forward and backward at once. The weights are frozen, so no linear layer saves its
input; per token and path point a decoder layer saves S bytes, with b the bytes per value of the model
dtype, h the hidden size, I the intermediate size, q = heads x head_dim and kv = kv_heads x head_dim:

================================  =====================  ====================================================
Llama / Qwen2 / Mistral           bytes                  what
================================  =====================  ====================================================
2 RMSNorms                        2 (4h + 4)             the float32 copy of the input and 1/rms (they upcast)
attention (SDPA, fused kernel)    b (2q + 2kv) + 4 heads q, k after RoPE, v, the output; float32 log-sum-exp
SwiGLU MLP                        3 b I                  gate (SiLU's input), SiLU(gate) and up (the product)
GPT-2                                                    LayerNorm: b h + 8; attention: b (3h + h) + 4 heads
                                                         (q, k, v are views of c_attn's output); MLP: n b I,
                                                         n = 4 for gelu_new (x, tanh, 0.5x, 1 + tanh), else 1
================================  =====================  ====================================================

At Qwen2-7B's widths in bfloat16: 28,680 + 16,496 + 113,664 = 158,840 bytes (155 KiB) per token per layer
per path point. The peak is reached in the backward pass of the last layer's MLP, where the product's
backward holds its incoming gradient and both outputs (3 b I) while every layer's saved activations are
still alive:

    plain          P L (layers S + A)
    checkpointed   P L (layers b h + S + A)          each layer keeps only its input; one layer is recomputed
    A = 4h + 3 b I + b h                             float32 path points; MLP backward (GPT-2 too, unmeasured
                                                     there); residual-stream gradient
    + 8h L (+ 4h L)                                  captum's float32 embeddings of x and x' (and, with more
                                                     than one chunk, the running sum of the earlier chunks)
    + 12 P T V                                       the answer's float32 log-probabilities (T tokens), their
                                                     incoming gradient and the logits' gradient

and peak = weights + that. The attention is a fused SDPA kernel (flash / memory-efficient, transformers'
default): it saves O(L) per head, not the L x L scores. Eager attention, a CUDA context (~0.5 GB) and the
caching allocator's fragmentation are not modelled: :func:`choose_ig_settings` keeps a margin.

**FLOPs** (a multiply-add counts 2): per token per layer 2 (h (q + 2kv) + q h + 3 h I) in the linear
layers of Llama/Qwen2 (GPT-2: 2 (4 h^2 + 2 h I)), causal attention 2 heads head_dim L^2 per layer per
sequence (half of the L x L products), the LM head 2 h V T. With frozen weights the backward pass computes
input gradients only: a linear layer costs as much as its forward, flash attention's backward about 2.5x
(it recomputes the scores). One trace is 4 forward passes without gradients (F(x), F(x') and captum's two
evaluations of the embedding layer) plus J x (forward + backward), plus J more forward passes of the
layers with checkpointing. Seconds = FLOPs / an assumed sustained throughput (FLOP/s), not a measurement.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LLAMA_FAMILY = ("llama", "qwen2", "mistral")
GPT2_FAMILY = ("gpt2",)
#: Chunk sizes (path points per pass) tried by ``internal_batch_size: auto``, besides J itself.
CHUNK_CANDIDATES = (1, 2, 4, 8, 16, 32, 64)
#: Share of the free memory left unused by the automatic choice: CUDA context, allocator fragmentation,
#: and what the formulas above leave out.
DEFAULT_MARGIN = 0.1
#: Flash attention's backward pass in units of its forward (it recomputes the scores: 5 matrix products
#: instead of 2).
ATTENTION_BACKWARD_FACTOR = 2.5
#: Saved [tokens, intermediate] tensors of the MLP activation (GPT-2's gelu_new is four elementwise ops).
ACTIVATION_SAVES = {"gelu_new": 4}


def _dtype_name(dtype: str | torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_BYTES)}")
    return name


@dataclass(frozen=True)
class Architecture:
    """The sizes of a decoder-only transformer that set IG's memory and compute (read from its config)."""

    family: str  # "llama" (RMSNorm, SwiGLU, RoPE: Llama, Qwen2, Mistral) or "gpt2"
    model_type: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    qkv_bias: bool
    output_bias: bool
    mlp_bias: bool
    positions: int  # learned position embeddings (GPT-2); 0 for RoPE
    activation_saves: int

    @classmethod
    def from_config(cls, config: Any) -> Architecture:
        model_type = getattr(config, "model_type", None)
        if model_type in LLAMA_FAMILY:
            heads = config.num_attention_heads
            return cls(
                family="llama",
                model_type=model_type,
                layers=config.num_hidden_layers,
                hidden=config.hidden_size,
                intermediate=config.intermediate_size,
                heads=heads,
                kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                vocab=config.vocab_size,
                tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
                # Qwen2 always has q/k/v biases; Llama and Mistral have attention_bias (o_proj too)
                qkv_bias=model_type == "qwen2" or bool(getattr(config, "attention_bias", False)),
                output_bias=bool(getattr(config, "attention_bias", False)),
                mlp_bias=bool(getattr(config, "mlp_bias", False)),
                positions=0,
                activation_saves=1,
            )
        if model_type in GPT2_FAMILY:
            return cls(
                family="gpt2",
                model_type=model_type,
                layers=config.n_layer,
                hidden=config.n_embd,
                intermediate=config.n_inner or 4 * config.n_embd,
                heads=config.n_head,
                kv_heads=config.n_head,
                head_dim=config.n_embd // config.n_head,
                vocab=config.vocab_size,
                tied_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
                qkv_bias=True,
                output_bias=True,
                mlp_bias=True,
                positions=config.n_positions,
                activation_saves=ACTIVATION_SAVES.get(config.activation_function, 1),
            )
        raise ValueError(
            f"no IG cost model for model_type {model_type!r}; supported: {', '.join(LLAMA_FAMILY + GPT2_FAMILY)}"
        )

    @property
    def q(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv(self) -> int:
        return self.kv_heads * self.head_dim

    def parameters(self) -> int:
        """Number of parameters (weights and biases), as ``sum(p.numel() for p in model.parameters())``."""
        h, i = self.hidden, self.intermediate
        embeddings = self.vocab * h + self.positions * h
        head = 0 if self.tied_embeddings else self.vocab * h
        if self.family == "llama":
            attention = h * (self.q + 2 * self.kv) + self.q * h
            attention += (self.q + 2 * self.kv) * self.qkv_bias + h * self.output_bias
            mlp = 3 * h * i + (2 * i + h) * self.mlp_bias
            layer = attention + mlp + 2 * h  # two RMSNorm weights
            final_norm = h
        else:
            layer = (h * 3 * h + 3 * h) + (h * h + h) + (h * i + i) + (i * h + h) + 2 * 2 * h
            final_norm = 2 * h
        return embeddings + self.layers * layer + final_norm + head

    def saved_bytes_per_layer(self, b: int) -> int:
        """Bytes a decoder layer saves for the backward pass, per token and path point (table above)."""
        h = self.hidden
        if self.family == "llama":
            norms = 2 * (4 * h + 4)
            attention = b * (2 * self.q + 2 * self.kv) + 4 * self.heads
            mlp = 3 * b * self.intermediate
        else:
            norms = 2 * (b * h + 8)
            attention = b * (3 * h + h) + 4 * self.heads
            mlp = self.activation_saves * b * self.intermediate
        return norms + attention + mlp

    def linear_flops_per_token_per_layer(self) -> int:
        h, i = self.hidden, self.intermediate
        if self.family == "llama":
            return 2 * (h * (self.q + 2 * self.kv) + self.q * h + 3 * h * i)
        return 2 * (4 * h * h + 2 * h * i)

    def attention_flops_per_layer(self, seq_len: int) -> int:
        """QK^T and PV of one causal sequence: 2 products x 2 FLOPs x heads x head_dim x L^2 / 2."""
        return 2 * self.heads * self.head_dim * seq_len * seq_len


@dataclass(frozen=True)
class IGCost:
    """The predicted cost of one trace's token IG (see the module docstring for every term).

    Bytes: ``weight_bytes`` (the model), ``working_bytes`` (the largest extra memory of one chunk of
    ``points_per_chunk`` path points), ``peak_bytes`` (their sum). Per token and path point: ``layer_bytes``
    (one decoder layer's saved activations) and ``kept_bytes_per_layer`` (what each layer keeps until the
    backward pass: ``layer_bytes``, or one hidden state with checkpointing). ``flops``: the whole trace, all
    ``n_steps`` points; ``seconds``: at ``flops_per_second`` when given.
    """

    model_type: str
    layers: int
    seq_len: int
    n_steps: int
    points_per_chunk: int
    activation_checkpointing: bool
    dtype: str
    answer_tokens: int
    weight_bytes: int
    working_bytes: int
    layer_bytes: int
    kept_bytes_per_layer: int
    flops: float
    flops_per_second: float | None = None

    @property
    def peak_bytes(self) -> int:
        return self.weight_bytes + self.working_bytes

    @property
    def passes(self) -> int:
        """Forward/backward passes over path points (chunks) per trace."""
        return math.ceil(self.n_steps / self.points_per_chunk)

    @property
    def seconds(self) -> float | None:
        return None if not self.flops_per_second else self.flops / self.flops_per_second


def estimate_ig_cost(
    config: Any,
    seq_len: int,
    *,
    points_per_chunk: int = 1,
    activation_checkpointing: bool = False,
    dtype: str | torch.dtype = "bfloat16",
    n_steps: int = 50,
    answer_tokens: int = 8,
    flops_per_second: float | None = None,
) -> IGCost:
    """Peak memory and FLOPs of ``token_attributions`` on a sequence of ``seq_len`` tokens for a model
    described by ``config`` (a transformers config: Llama, Qwen2, Mistral or GPT-2).

    ``points_per_chunk`` is the engine's ``internal_batch_size`` (path points per forward/backward pass),
    ``n_steps`` the number of path points J, ``answer_tokens`` the length T of the answer whose
    log-probability is attributed. Seconds are ``flops / flops_per_second`` when a throughput is given.
    """
    for name, value in (("seq_len", seq_len), ("points_per_chunk", points_per_chunk), ("n_steps", n_steps)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(answer_tokens, numbers.Integral) or not 1 <= answer_tokens <= seq_len:
        raise ValueError(f"answer_tokens must be an int between 1 and seq_len, got {answer_tokens!r}")
    seq_len, points_per_chunk, n_steps, answer_tokens = map(int, (seq_len, points_per_chunk, n_steps, answer_tokens))
    arch = Architecture.from_config(config)
    dtype = _dtype_name(dtype)
    b = DTYPE_BYTES[dtype]
    h, points, length = arch.hidden, min(points_per_chunk, n_steps), seq_len

    layer = arch.saved_bytes_per_layer(b)
    kept = b * h if activation_checkpointing else layer
    recomputed = layer if activation_checkpointing else 0
    transient = 4 * h + 3 * b * arch.intermediate + b * h
    per_token_point = arch.layers * kept + recomputed + transient
    logits = 12 * answer_tokens * arch.vocab
    per_token = 8 * h + (4 * h if n_steps > points else 0)
    working = points * length * per_token_point + length * per_token + points * logits

    linear = arch.layers * length * arch.linear_flops_per_token_per_layer()
    attention = arch.layers * arch.attention_flops_per_layer(length)
    head = 2 * h * arch.vocab * answer_tokens
    forward = linear + attention + head
    backward = linear + ATTENTION_BACKWARD_FACTOR * attention + head
    recompute = linear + attention if activation_checkpointing else 0
    flops = 4 * forward + n_steps * (forward + backward + recompute)

    return IGCost(
        model_type=arch.model_type,
        layers=arch.layers,
        seq_len=seq_len,
        n_steps=n_steps,
        points_per_chunk=points,
        activation_checkpointing=activation_checkpointing,
        dtype=dtype,
        answer_tokens=answer_tokens,
        weight_bytes=arch.parameters() * b,
        working_bytes=int(working),
        layer_bytes=layer,
        kept_bytes_per_layer=kept,
        flops=float(flops),
        flops_per_second=flops_per_second,
    )


def default_chunk_sizes(n_steps: int) -> tuple[int, ...]:
    """``CHUNK_CANDIDATES`` below J, and J itself (every path point in one pass)."""
    return tuple(sorted({c for c in CHUNK_CANDIDATES if c < n_steps} | {n_steps}))


def candidate_settings(
    n_steps: int,
    internal_batch_size: int | str = "auto",
    activation_checkpointing: bool | str = "auto",
    chunk_sizes: tuple[int, ...] | None = None,
) -> list[tuple[int, bool]]:
    """The (points per chunk, checkpointing) pairs that ``auto`` settings choose from (a fixed setting
    is the only candidate on its axis)."""
    if internal_batch_size == "auto":
        chunks = [c for c in (chunk_sizes or default_chunk_sizes(n_steps)) if c <= n_steps]
    elif isinstance(internal_batch_size, int) and not isinstance(internal_batch_size, bool) and internal_batch_size > 0:
        chunks = [min(internal_batch_size, n_steps)]
    else:
        raise ValueError(f"internal_batch_size must be a positive int or 'auto', got {internal_batch_size!r}")
    if activation_checkpointing == "auto":
        modes = [False, True]
    elif isinstance(activation_checkpointing, bool):
        modes = [activation_checkpointing]
    else:
        raise ValueError(f"activation_checkpointing must be true, false or 'auto', got {activation_checkpointing!r}")
    return [(chunk, mode) for mode in modes for chunk in chunks]


def _speed_key(cost: IGCost) -> tuple[float, int]:
    # Fewer FLOPs first (checkpointing costs one more forward pass per point), then fewer passes: a larger
    # chunk does the same FLOPs in fewer, larger matrix products, which a GPU runs faster.
    return cost.flops, cost.passes


def choose_ig_settings(
    config: Any,
    seq_len: int,
    available_bytes: int,
    *,
    n_steps: int = 50,
    dtype: str | torch.dtype = "bfloat16",
    answer_tokens: int = 8,
    internal_batch_size: int | str = "auto",
    activation_checkpointing: bool | str = "auto",
    chunk_sizes: tuple[int, ...] | None = None,
    weights_loaded: bool = True,
    margin: float = DEFAULT_MARGIN,
    flops_per_second: float | None = None,
) -> IGCost | None:
    """The fastest (chunk size, checkpointing) whose predicted memory fits ``available_bytes`` less a
    ``margin`` share; None when none fits. ``weights_loaded``: the weights already sit in the memory that
    ``available_bytes`` measured (free memory beside a loaded model), so only the working memory must fit;
    otherwise (a GPU's total memory) weights + working memory must."""
    budget = available_bytes * (1 - margin)
    fitting = []
    for chunk, checkpointing in candidate_settings(n_steps, internal_batch_size, activation_checkpointing, chunk_sizes):
        cost = estimate_ig_cost(
            config,
            seq_len,
            points_per_chunk=chunk,
            activation_checkpointing=checkpointing,
            dtype=dtype,
            n_steps=n_steps,
            answer_tokens=answer_tokens,
            flops_per_second=flops_per_second,
        )
        if (cost.working_bytes if weights_loaded else cost.peak_bytes) <= budget:
            fitting.append(cost)
    return min(fitting, key=_speed_key) if fitting else None


def available_memory(device: torch.device | str, cpu_budget_bytes: int | None = None) -> int:
    """Bytes the IG engine may still allocate on ``device``: on CUDA the free memory plus what PyTorch's
    caching allocator holds unused (``mem_get_info`` counts that as taken); on the CPU ``cpu_budget_bytes``
    when given, else the memory the OS reports as available (psutil)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if cpu_budget_bytes is not None:
        return int(cpu_budget_bytes)
    import psutil

    return int(psutil.virtual_memory().available)


def cost_table(
    config: Any,
    seq_len: int,
    memory_bytes: int,
    *,
    n_steps: int = 50,
    dtype: str | torch.dtype = "bfloat16",
    answer_tokens: int = 8,
    flops_per_second: float | None = None,
    chunk_sizes: tuple[int, ...] | None = None,
    margin: float = DEFAULT_MARGIN,
) -> tuple[list[dict], IGCost | None]:
    """For a device with ``memory_bytes`` in all: one row per (chunk size, checkpointing) with the peak
    memory (weights included), whether it fits (less ``margin``), the TFLOPs and seconds of a trace; and
    the setting :func:`choose_ig_settings` picks (None when nothing fits)."""
    rows = []
    for chunk, checkpointing in candidate_settings(n_steps, "auto", "auto", chunk_sizes):
        cost = estimate_ig_cost(
            config,
            seq_len,
            points_per_chunk=chunk,
            activation_checkpointing=checkpointing,
            dtype=dtype,
            n_steps=n_steps,
            answer_tokens=answer_tokens,
            flops_per_second=flops_per_second,
        )
        rows.append(
            {
                "points_per_chunk": chunk,
                "checkpointing": checkpointing,
                "peak_GiB": cost.peak_bytes / 2**30,
                "activations_GiB": cost.working_bytes / 2**30,
                "fits": cost.peak_bytes <= memory_bytes * (1 - margin),
                "TFLOP_per_trace": cost.flops / 1e12,
                "seconds_per_trace": cost.seconds,
            }
        )
    choice = choose_ig_settings(
        config,
        seq_len,
        memory_bytes,
        n_steps=n_steps,
        dtype=dtype,
        answer_tokens=answer_tokens,
        chunk_sizes=chunk_sizes,
        weights_loaded=False,
        margin=margin,
        flops_per_second=flops_per_second,
    )
    return rows, choice
