"""GPU-hours per stage of the paper profile, and the wall time on one 8-GPU node.

An ESTIMATE, not a measurement: no GPU was available when it was written. It combines the paper
profile's settings (``segattr_utils/profiles/paper.yaml``, read with ``load_profile("paper")``; the SFT
runs are counted by stage 08's own ``plan_runs``) with the assumptions of :class:`Assumptions`, every one
printed beside the table. Three cost models:

- Forward/backward passes (IG, stage 03 and 08; removal perplexity, stage 05): FLOPs of a forward pass
  of L tokens are ``2·N·L + 2·L²·d·layers`` (N: parameters a token passes through, i.e. without the
  input embedding; d: query heads × head dim; the attention term counts QKᵀ and AV under a causal
  mask). Sequence lengths are spread (:class:`Lengths`: lognormal, ``sequence_length_cv``), so the
  attention term takes E[L²] = (1 + cv²)·E[L]², not E[L]², and a per-trace count of passes that grows with
  the trace (one per segment, stages 05 and 06) takes E[L³]. One IG path point is a forward and a
  backward pass, counted as 3 forward passes (Eq. 2 evaluated at J points); a trace too long to fit the GPU
  without activation checkpointing (``attribution.activation_checkpointing: auto``, decided by the code's own
  cost model, :func:`ig_checkpoint_from`) recomputes every layer's forward in the backward pass: 4. The
  achieved FLOP/s comes from the paper's published cost: 7 GPU-hours for IG of the 817 LIMO traces with the
  7B (J = 50), at ``paper_ig_passes_per_point``.
- SFT (stage 08, Sec. 4, App. C.3): ``3`` forward passes per trained token and epoch (``6·N·tokens``
  plus the attention term, each sequence capped at ``training.sft.max_length``); the achieved FLOP/s comes
  from the paper's 8 GPU-hours for one 7B SFT run on LIMO, and is used unchanged for the 1.5B student.
- vLLM decoding (stages 01, 04, 07, 09): memory-bound. Each decode step reads the weights and the KV
  cache of every running sequence, so an engine's rate is ``concurrency / step time`` with
  ``step = (weights + concurrency·context·KV bytes per token) / (HBM bandwidth · efficiency) + overhead``
  per GPU of the engine; concurrency is vLLM's ``max_num_seqs`` or what the KV cache holds at the mean
  context, whichever is smaller. Every request of the stages carries its own seed, and vLLM draws a seeded
  request's sampling noise with its own generator, one small kernel per request and step: each step costs
  ``seeded_sampling_s_per_token`` more per running sampled sequence (greedy requests draw none). Prefill is compute-bound (``2·N·L`` per prompt token at an assumed MFU);
  each call ends with a tail in which the longest outputs decode nearly alone; every engine start costs a
  fixed time.

vLLM engines as the code lays them out (``generation.vllm``, resolved by the code's own
``segattr_utils.llm.vllm_parallel.parallel_sizes``): ``tensor_parallel_size: auto`` gives each model the
smallest TP that divides its heads and leaves half of the memory share to the KV cache (1 for all three
models on H100 and H200), ``data_parallel_size: auto`` one engine per TP group of the node's GPUs, the
requests of each call split evenly between them. A vLLM stage's wall time is one engine's share (its
requests / DP, plus its own tail and start); its GPU-hours are that wall time x DP x TP. Stage 09's
greedy and sampled outputs have their own mean lengths (paper Table 1), and the running sequences' mean
context weights each output by its length.

Wall time on one node: stages run one after another (``make reproduce`` runs the notebooks in order). Two
columns: "as configured" is what the code and ``paper.yaml`` do (vLLM as above; IG and stage 05's perplexity
passes in ``attribution.processes`` / ``analysis.linguistics.processes`` processes under accelerate launch,
``auto`` = one per GPU in ``paper.yaml``; SFT one run per GPU, eight at once), "ideal" puts IG and stage 05 on
all 8 GPUs whatever the profile says (the same as configured for ``paper.yaml``).

Usage: ``python benchmarks/gpu_hours.py [--gpu h100|h200] [--out results/benchmarks/gpu_hours.md]``
(``make gpu-hours``).
"""

from __future__ import annotations

import argparse
import copy
import heapq
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from statistics import NormalDist
from types import SimpleNamespace

from segattr_utils.config import Profile, load_profile
from segattr_utils.llm import architectures
from segattr_utils.llm.vllm_parallel import DEFAULT_UTILISATION, Devices, ModelLayout, parallel_sizes
from segattr_utils.method.ig_cost import DEFAULT_MARGIN, estimate_ig_cost

GIB = 2**30
HOUR = 3600.0
TARGET_WALL_HOURS = 24.0

# ---------------------------------------------------------------------------------------------
# Models and GPUs


@dataclass(frozen=True)
class ModelShape:
    """The shapes of a Qwen2/Qwen3 decoder that its costs depend on (from each model's config.json)."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int = 128
    qkv_bias: bool = True  # Qwen2 has biases on q, k, v; Qwen3 has none (and RMSNorm on q and k)

    @property
    def attention_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def layer_params(self) -> int:
        q = self.hidden * self.attention_width + (self.attention_width if self.qkv_bias else 0)
        kv = 2 * (self.hidden * self.kv_heads * self.head_dim + (self.kv_heads * self.head_dim if self.qkv_bias else 0))
        out = self.attention_width * self.hidden
        mlp = 3 * self.hidden * self.intermediate
        norms = 2 * self.hidden + (0 if self.qkv_bias else 2 * self.head_dim)
        return q + kv + out + mlp + norms

    @property
    def compute_params(self) -> int:
        """Parameters every token is multiplied with: the layers, the final norm and the (untied) LM head;
        the input embedding is a lookup."""
        return self.layers * self.layer_params + self.hidden + self.hidden * self.vocab

    @property
    def params(self) -> int:
        return self.compute_params + self.vocab * self.hidden

    @property
    def weight_bytes(self) -> int:
        return 2 * self.params  # bfloat16

    @property
    def layout(self) -> ModelLayout:
        """What ``tensor_parallel_size: auto`` looks at (segattr_utils.llm.vllm_parallel)."""
        return ModelLayout(self.heads, self.kv_heads, float(self.weight_bytes))

    def kv_bytes_per_token_per_gpu(self, tp: int) -> int:
        """bf16 K and V of one token on one GPU of a ``tp``-way engine. With fewer KV heads than GPUs,
        vLLM replicates them: each GPU still holds one."""
        heads_per_gpu = max(self.kv_heads // tp, 1)
        return 2 * self.layers * heads_per_gpu * self.head_dim * 2


def shape_of(name: str, config: dict, qkv_bias: bool = True) -> ModelShape:
    """The :class:`ModelShape` of a ``config.json`` (segattr_utils.llm.architectures)."""
    heads = config["num_attention_heads"]
    return ModelShape(
        name,
        config["hidden_size"],
        config["intermediate_size"],
        config["num_hidden_layers"],
        heads,
        config["num_key_value_heads"],
        config["vocab_size"],
        head_dim=config.get("head_dim", config["hidden_size"] // heads),
        qkv_bias=qkv_bias,
    )


# models.generator, models.student, models.judge of paper.yaml
R1_DISTILL_QWEN_7B = shape_of("R1-Distill-Qwen-7B", architectures.R1_DISTILL_QWEN_7B)
R1_DISTILL_QWEN_1_5B = shape_of("R1-Distill-Qwen-1.5B", architectures.R1_DISTILL_QWEN_1_5B)
QWEN3_8B = shape_of("Qwen3-8B", architectures.QWEN3_8B, qkv_bias=False)


@dataclass(frozen=True)
class GPU:
    name: str
    bf16_flops: float  # dense peak, FLOP/s
    hbm_bandwidth: float  # bytes/s
    memory_bytes: float


GPUS = {
    "h100": GPU("H100 SXM 80 GB", 989e12, 3.35e12, 79.6 * GIB),
    "h200": GPU("H200 141 GB", 989e12, 4.8e12, 139.8 * GIB),
}


# ---------------------------------------------------------------------------------------------
# Assumptions


@dataclass(frozen=True)
class Assumptions:
    """Every number the estimate rests on that the profile does not give. Units in the names."""

    limo_questions: int = 817  # GAIR/LIMO train split
    reference_trace_tokens: float = 6000  # mean tokens of LIMO's reference CoTs (not measured here)
    prompt_tokens: float = 150  # chat template + a LIMO/benchmark question
    answer_tokens: float = 30  # "</think> ... \boxed{...}" after the trace (IG suffix, SFT answer part)
    sample_tokens: float = 14000  # mean output of R1-Distill-Qwen-7B on LIMO questions (hard: many hit 32k)
    kept_correct_tokens: float = 7000  # shortest correct of 32 samples (stage 01 keeps it)
    kept_incorrect_tokens: float = 9000  # shortest finished incorrect sample
    share_with_correct: float = 0.75  # LIMO questions with >= 1 correct finished sample (of 32)
    share_with_incorrect: float = 0.80  # ... with >= 1 finished incorrect sample
    segments_per_1k_tokens: float = 8  # transition-keyword segments (App. C.2): ~125 tokens per segment
    eval_greedy_tokens: float = 16520  # mean greedy output on the benchmarks (Table 1, R1-Distill-Qwen-1.5B)
    eval_sample_tokens: float = 10043  # mean sampled output (T = 0.6) on the benchmarks (Table 1, idem)
    judge_prompt_tokens: float = 1000  # task + few-shot block (~550) + three segments (segattr_utils.measures.judge)
    judge_round1_tokens: float = 1500  # mean thinking output of Qwen3-8B under the 2000-token cap
    judge_round2_share: float = 0.4  # segments undecided after round 1 (cap reached)
    judge_round2_tokens: float = 500  # mean round-2 output (cap 1000)
    forced_answer_tokens: float = 64  # vLLM samples every forced answer to max_new_tokens (cut at its brace after)
    forced_answer_lead_in_tokens: float = 31  # lead-in + the partial KV block not shared by prefix caching
    sequence_length_cv: float = 0.5  # spread of sequence lengths within a group (lognormal): E[L²] = 1.25 E[L]²
    paper_ig_gpu_hours: float = 7.0  # published: IG of the 817 LIMO traces, 7B, J = 50
    paper_ig_passes_per_point: float = 3.0  # the authors' IG: forward + backward, no activation checkpointing
    paper_sft_gpu_hours: float = 8.0  # published: one 7B SFT run on LIMO (App. C.3 schedule)
    hbm_efficiency: float = 0.6  # share of peak HBM bandwidth a decode step achieves
    decode_step_overhead_s: float = 0.005  # scheduling, sampling over 152k logits, launches per step
    seeded_sampling_s_per_token: float = 1.5e-5  # per running seeded (sampled) sequence and decode step
    max_num_seqs: int = 1024  # vLLM 0.30.0's default for LLM() on H100/H200 (EngineArgs.get_batch_defaults)
    reserve_gib_per_gpu: float = 4.0  # activations, CUDA graphs, NCCL buffers outside the KV cache
    prefill_mfu: float = 0.4
    engine_start_s: float = 90.0  # load weights, torch.compile (cached after the first), CUDA graphs
    node_gpus: int = 8


ASSUMPTION_NOTES = {
    "limo_questions": "GAIR/LIMO's train split",
    "reference_trace_tokens": "a working value; LIMO's CoTs were not downloaded here",
    "prompt_tokens": "R1 chat template + a question; a guess",
    "answer_tokens": "the answer suffix after the trace; a guess",
    "sample_tokens": "LIMO keeps questions a strong model rarely solves, so long outputs; a guess",
    "kept_correct_tokens": "shortest of the correct samples, so well below the mean; a guess",
    "kept_incorrect_tokens": "unfinished outputs are not kept; a guess",
    "share_with_correct": "a guess; sets how many traces stages 03-07 handle",
    "share_with_incorrect": "a guess",
    "segments_per_1k_tokens": "a guess from R1-style traces (a 'Wait'/'But' every ~125 tokens)",
    "eval_greedy_tokens": "paper Table 1, 1.5B greedy: 16,520 full CoT, 13,506 selective; the larger, for every model",
    "eval_sample_tokens": "paper Table 1, 1.5B sampling: 10,043 full CoT, 9,388 selective; the larger, for every model",
    "judge_prompt_tokens": "segattr_utils.measures.judge: ~2,200 characters of task and few-shot + 3 segments",
    "judge_round1_tokens": "a guess; Qwen3 thinking often runs to the cap",
    "judge_round2_share": "a guess",
    "judge_round2_tokens": "a guess under the 1,000-token cap",
    "forced_answer_tokens": "vLLM has no stop rule that counts braces: an answer runs to max_new_tokens (64)",
    "sequence_length_cv": "assumed (R1-style traces range from a few hundred to 32k tokens); lognormal within a group",
    "forced_answer_lead_in_tokens": "the lead-in + the partial 16-token KV block each prefix recomputes",
    "paper_ig_gpu_hours": "calibrates the achieved FLOP/s of IG and forward passes (taken as H100-hours)",
    "paper_ig_passes_per_point": "assumed: the authors' script (bf16, full logits) is not known to checkpoint",
    "paper_sft_gpu_hours": "calibrates the achieved FLOP/s of SFT (taken as H100-hours)",
    "hbm_efficiency": "paged-attention decode typically reaches 50-70% of peak bandwidth",
    "decode_step_overhead_s": "a guess, with CUDA graphs",
    "seeded_sampling_s_per_token": "assumed, not measured: vLLM's sampler draws a seeded request's noise with "
    "its own torch.Generator (one exponential_ kernel per request and step, ~15 us)",
    "max_num_seqs": "read in vLLM 0.30.0's source",
    "reserve_gib_per_gpu": "a guess",
    "prefill_mfu": "a guess",
    "engine_start_s": "a guess for a 1.5-8B model; per engine, the DP engines of a model start at once",
    "node_gpus": "one 8-GPU node (the target)",
}


# ---------------------------------------------------------------------------------------------
# Cost models


@dataclass(frozen=True)
class Lengths:
    """Sequence lengths of a group of traces, in tokens: lognormal with this ``mean`` and coefficient of
    variation ``cv`` (``cv = 0``: every sequence has the mean length). With s² = ln(1 + cv²) and
    mu = ln(mean) - s²/2, the moments are E[L^k] = mean^k (1 + cv²)^(k(k-1)/2) (E[L²] = (1 + cv²) mean²)
    and the partial ones E[L^k; lower < L <= upper] = e^(k mu + k² s²/2) (Phi(z(upper)) - Phi(z(lower))),
    z(x) = (ln x - mu - k s²) / s."""

    mean: float
    cv: float = 0.0

    def partial_moment(self, k: int, lower: float = 0.0, upper: float = math.inf) -> float:
        if self.cv == 0:
            return self.mean**k if lower < self.mean <= upper else 0.0
        s2 = math.log1p(self.cv**2)
        mu, s = math.log(self.mean) - s2 / 2, math.sqrt(s2)

        def below(x: float) -> float:
            if x <= 0:
                return 0.0
            return 1.0 if math.isinf(x) else NormalDist().cdf((math.log(x) - mu - k * s2) / s)

        return math.exp(k * mu + k * k * s2 / 2) * (below(upper) - below(lower))

    def expect(self, coefficients: Sequence[float], lower: float = 0.0, upper: float = math.inf) -> float:
        """E[sum_k c_k L^k ; lower < L <= upper] for ``coefficients`` c_0, c_1, ..."""
        return sum(c * self.partial_moment(k, lower, upper) for k, c in enumerate(coefficients) if c)

    def share_above(self, length: float) -> float:
        return self.partial_moment(0, lower=length)

    def scaled(self, factor: float) -> Lengths:
        return Lengths(self.mean * factor, self.cv)


def _lengths(length: Lengths | float) -> Lengths:
    return length if isinstance(length, Lengths) else Lengths(float(length))


def poly_mul(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """The coefficients of the product of two polynomials in L."""
    out = [0.0] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            out[i + j] += x * y
    return out


def forward_coefficients(model: ModelShape) -> tuple[float, float, float]:
    """A forward pass over L tokens as a polynomial in L: 2·N·L + 2·d·layers·L²."""
    return 0.0, 2.0 * model.compute_params, 2.0 * model.attention_width * model.layers


def forward_flops(model: ModelShape, length: float) -> float:
    """FLOPs of one forward pass over ``length`` tokens: the matrix products (2·N per token) and causal
    attention (QKᵀ and AV, 2·L²·d per layer)."""
    return 2 * model.compute_params * length + 2 * length**2 * model.attention_width * model.layers


def expected_forward_flops(
    model: ModelShape, lengths: Lengths | float, lower: float = 0.0, upper: float = math.inf
) -> float:
    """E[forward FLOPs; lower < L <= upper] over ``lengths``: the attention term takes E[L²], not E[L]²."""
    return _lengths(lengths).expect(forward_coefficients(model), lower, upper)


#: Forward-pass equivalents of one IG path point: forward + backward (~2), and with activation checkpointing
#: the forward of every layer again in the backward pass.
IG_PASSES_PLAIN = 3
IG_PASSES_CHECKPOINTED = 4


def ig_trace_flops(
    model: ModelShape, lengths: Lengths | float, n_steps: int, checkpoint_from: float = math.inf
) -> float:
    """Expected IG FLOPs of one sequence (Eq. 2): ``n_steps`` path points, each a forward and a backward pass,
    counted as 3 forward passes, or 4 for a sequence longer than ``checkpoint_from`` tokens (activation
    checkpointing recomputes the layers). The backward needs no weight gradients (the parameters are frozen),
    so the real ratio is nearer 2 than 3; the calibration on the published IG cost absorbs the constant."""
    plain = expected_forward_flops(model, lengths, upper=checkpoint_from)
    checkpointed = expected_forward_flops(model, lengths, lower=checkpoint_from)
    return n_steps * (IG_PASSES_PLAIN * plain + IG_PASSES_CHECKPOINTED * checkpointed)


def sft_flops(
    model: ModelShape, lengths: Lengths | float, n_examples: float, epochs: float, max_length: float = math.inf
) -> float:
    """SFT FLOPs: 3 forward passes per trained sequence and epoch (6·N·tokens + attention), each sequence
    cut to ``max_length`` tokens: E[f(min(L, max_length))]. Gradient checkpointing adds a fourth forward; it
    is inside the calibrated FLOP/s (the authors' runs checkpoint too)."""
    lengths = _lengths(lengths)
    per_sequence = expected_forward_flops(model, lengths, upper=max_length)
    if not math.isinf(max_length):
        per_sequence += forward_flops(model, max_length) * lengths.share_above(max_length)
    return epochs * n_examples * 3 * per_sequence


def ig_checkpoint_from(profile: Profile, gpu: GPU, model_config: dict = architectures.R1_DISTILL_QWEN_7B) -> float:
    """Sequence length (tokens) from which stage 03 attributes with activation checkpointing on ``gpu``:
    ``attribution.activation_checkpointing`` true: every sequence (0), false: none (inf); auto: the shortest
    length at which no chunk of path points fits without checkpointing, by the code's own cost model
    (``segattr_utils.method.ig_cost``: the weights and one path point, less its margin of the memory, capped by
    ``attribution.memory_budget_gb``), as stage 03 decides per trace."""
    att = profile.get_path("attribution")
    mode = att["activation_checkpointing"]
    if mode is True:
        return 0.0
    if mode is False:
        return math.inf
    config = SimpleNamespace(model_type="qwen2", **model_config)
    chunk = att.get("internal_batch_size")
    chunk = chunk if isinstance(chunk, int) and not isinstance(chunk, bool) else 1
    budget_gb = att.get("memory_budget_gb")

    def fits(length: int) -> bool:
        cost = estimate_ig_cost(config, length, points_per_chunk=chunk, n_steps=int(att["n_steps"]))
        room = gpu.memory_bytes - cost.weight_bytes
        room = room if budget_gb is None else min(room, budget_gb * GIB)
        return cost.working_bytes <= room * (1 - DEFAULT_MARGIN)

    low, high = 8, 1 << 22  # fits(low); the first length that does not fit lies in (low, high]
    if not fits(low):
        return 0.0
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return float(high)


@dataclass(frozen=True)
class Calibration:
    """Achieved FLOP/s per GPU, from the paper's published GPU-hours."""

    ig_flops_per_s: float
    sft_flops_per_s: float

    @classmethod
    def from_paper(cls, profile: Profile, a: Assumptions) -> Calibration:
        """The published costs over the FLOPs of the authors' runs: LIMO's reference traces (spread as every
        group), ``paper_ig_passes_per_point`` per IG path point, SFT sequences capped at ``max_length``."""
        lengths = Lengths(a.prompt_tokens + a.reference_trace_tokens + a.answer_tokens, a.sequence_length_cv)
        n_steps = int(profile.get_path("attribution.n_steps"))
        ig_flops = n_steps * a.paper_ig_passes_per_point * expected_forward_flops(R1_DISTILL_QWEN_7B, lengths)
        ig = a.limo_questions * ig_flops / (a.paper_ig_gpu_hours * HOUR)
        cap = float(profile.get_path("training.sft.max_length"))
        sft = sft_flops(R1_DISTILL_QWEN_7B, lengths, a.limo_questions, sft_epochs(profile), cap) / (
            a.paper_sft_gpu_hours * HOUR
        )
        return cls(ig, sft)


def sft_epochs(profile: Profile) -> float:
    """Epochs actually trained: the authors' callback stops 10-epoch runs after epoch 9."""
    sft = profile.get_path("training.sft")
    return float(sft.get("stop_after_epoch") or sft["epochs"])


@dataclass(frozen=True)
class DecodeRate:
    tokens_per_s: float  # per engine
    concurrency: float
    step_s: float


def decode_rate(
    model: ModelShape,
    gpu: GPU,
    a: Assumptions,
    tp: int,
    utilisation: float,
    context: float,
    seeded_share: float = 0.0,
) -> DecodeRate:
    """Memory-bound decode rate of one ``tp``-GPU engine at mean ``context`` tokens per sequence; a share
    ``seeded_share`` of the running sequences is sampled with its own seed (``seeded_sampling_s_per_token``
    each per step)."""
    weights = model.weight_bytes / tp
    kv_per_token = model.kv_bytes_per_token_per_gpu(tp)
    kv_room = gpu.memory_bytes * utilisation - weights - a.reserve_gib_per_gpu * GIB
    if kv_room <= 0:
        raise ValueError(f"{model.name} does not fit on {tp} x {gpu.name} at gpu_memory_utilization {utilisation}")
    concurrency = max(1.0, min(a.max_num_seqs, kv_room / kv_per_token / context))
    memory_s = (weights + concurrency * context * kv_per_token) / (gpu.hbm_bandwidth * a.hbm_efficiency)
    compute_s = concurrency * forward_flops(model, 1) / tp / (gpu.bf16_flops * a.prefill_mfu)
    seeded_s = concurrency * seeded_share * a.seeded_sampling_s_per_token
    step = max(memory_s, compute_s) + a.decode_step_overhead_s + seeded_s
    return DecodeRate(concurrency / step, concurrency, step)


@dataclass(frozen=True)
class VllmWork:
    """One stage's requests to one model: ``n_requests`` outputs of ``output_tokens`` (mean) from prompts
    of ``prompt_tokens`` (mean), of which ``prefill_tokens`` in all are not served from the prefix cache."""

    model: ModelShape
    n_requests: float
    prompt_tokens: float
    output_tokens: float
    max_new_tokens: float
    prefill_tokens: float
    n_calls: int = 1  # LLM.generate calls (each ends with a tail)
    n_engine_starts: int = 1
    context_tokens: float | None = None  # mean KV tokens of a running sequence; default prompt + output / 2
    seeded_share: float = 1.0  # running sequences sampled with a per-request seed (greedy ones draw no noise)

    @property
    def context(self) -> float:
        return self.context_tokens if self.context_tokens is not None else self.prompt_tokens + self.output_tokens / 2

    def share(self, engines: int) -> VllmWork:
        """One of ``engines`` data parallel engines' part: its share of the requests and of the prefill; each
        engine has its own tail per call and its own start (all at once)."""
        return replace(self, n_requests=self.n_requests / engines, prefill_tokens=self.prefill_tokens / engines)


def vllm_engine_seconds(work: VllmWork, gpu: GPU, a: Assumptions, tp: int, utilisation: float) -> float:
    """Engine-seconds (multiply by ``tp`` for GPU-seconds): decoding at the memory-bound rate, prefill at
    ``prefill_mfu``, one tail per call (the longest output decoding nearly alone) and the engine starts."""
    context = work.context
    rate = decode_rate(work.model, gpu, a, tp, utilisation, context, work.seeded_share)
    decode = work.n_requests * work.output_tokens / rate.tokens_per_s
    prefill = work.prefill_tokens * forward_flops(work.model, 1) / (tp * gpu.bf16_flops * a.prefill_mfu)
    alone = decode_rate(work.model, gpu, replace(a, max_num_seqs=1), tp, utilisation, context, work.seeded_share)
    tail = work.n_calls * work.max_new_tokens * alone.step_s
    return decode + prefill + tail + work.n_engine_starts * a.engine_start_s


def lpt_makespan(durations: list[float], workers: int) -> float:
    """Wall time of independent jobs on ``workers`` GPUs, longest first to the least loaded GPU (how
    ``training.launcher: per_gpu`` spreads the runs, up to their order)."""
    loads = [0.0] * max(1, workers)
    for duration in sorted(durations, reverse=True):
        heapq.heapreplace(loads, loads[0] + duration)
    return max(loads)


# ---------------------------------------------------------------------------------------------
# Stages


@dataclass(frozen=True)
class Row:
    stage: str
    work: str
    gpu_hours: float
    wall_ideal_h: float
    wall_configured_h: float
    parallel: str


@dataclass(frozen=True)
class Workload:
    """Trace counts and lengths shared by the stages."""

    n_correct: int
    n_incorrect: int
    correct_length: float  # tokens of an attribution/SFT sequence of a kept correct trace
    incorrect_length: float
    reference_length: float
    segments_per_trace: float  # kept correct traces
    reference_segments: float

    @classmethod
    def from_assumptions(cls, profile: Profile, a: Assumptions) -> Workload:
        attribute_incorrect = bool(profile.get_path("attribution.attribute_incorrect"))
        wrap = a.prompt_tokens + a.answer_tokens
        return cls(
            n_correct=round(a.limo_questions * a.share_with_correct),
            n_incorrect=round(a.limo_questions * a.share_with_incorrect) if attribute_incorrect else 0,
            correct_length=wrap + a.kept_correct_tokens,
            incorrect_length=wrap + a.kept_incorrect_tokens,
            reference_length=wrap + a.reference_trace_tokens,
            segments_per_trace=a.kept_correct_tokens * a.segments_per_1k_tokens / 1000,
            reference_segments=a.reference_trace_tokens * a.segments_per_1k_tokens / 1000,
        )


@dataclass(frozen=True)
class Context:
    profile: Profile
    a: Assumptions
    gpu: GPU
    calibration: Calibration
    load: Workload

    @property
    def utilisation(self) -> float:
        return float(self.profile.get_path("generation.vllm.gpu_memory_utilization", DEFAULT_UTILISATION))

    def engines(self, model: ModelShape) -> tuple[int, int]:
        """(TP, DP) of ``model``'s engines on the node, resolved as the code resolves ``generation.vllm``."""
        return engine_layout(self.profile, model, self.gpu, self.a.node_gpus)

    def lengths(self, mean: float) -> Lengths:
        """A group of sequences of ``mean`` tokens, spread as every group (``sequence_length_cv``)."""
        return Lengths(mean, self.a.sequence_length_cv)

    @property
    def checkpoint_from(self) -> float:
        return ig_checkpoint_from(self.profile, self.gpu)

    def processes(self, section: str) -> int:
        """``<section>.processes`` on the node: ``auto`` is one per GPU, as the code resolves it on 8 GPUs."""
        value = self.profile.get_path(f"{section}.processes")
        return self.a.node_gpus if value == "auto" else min(int(value), self.a.node_gpus)


def engine_layout(profile: Profile, model: ModelShape, gpu: GPU, node_gpus: int) -> tuple[int, int]:
    """(TP, DP) for ``model`` on one node of ``node_gpus`` x ``gpu``: ``generation.vllm``'s
    ``tensor_parallel_size`` / ``data_parallel_size`` (integers or ``auto``) through the code's own
    ``parallel_sizes``."""
    vllm = profile.get_path("generation.vllm")
    devices = Devices(tuple(str(i) for i in range(node_gpus)), gpu.memory_bytes)
    utilisation = float(vllm.get("gpu_memory_utilization", DEFAULT_UTILISATION))
    tp, dp = parallel_sizes(
        vllm.get("tensor_parallel_size"), vllm.get("data_parallel_size", 1), lambda: model.layout, devices, utilisation
    )
    return tp or 1, dp


def vllm_row(ctx: Context, stage: str, work: str, load: VllmWork) -> Row:
    """A vLLM stage: DP engines of TP GPUs each run their share of the requests at once (the code's split);
    wall = one engine's seconds, GPU-hours = wall x DP x TP. Ideal and as configured are the same."""
    tp, dp = ctx.engines(load.model)
    wall_h = vllm_engine_seconds(load.share(dp), ctx.gpu, ctx.a, tp, ctx.utilisation) / HOUR
    parallel = f"vLLM TP {tp} x DP {dp}: {dp} engine{'s' if dp > 1 else ''} at once"
    return Row(stage, work, wall_h * tp * dp, wall_h, wall_h, parallel)


def ig_row(ctx: Context, stage: str, work: str, traces: list[tuple[float, float, int]]) -> Row:
    """IG rows: ``traces`` holds (count, mean sequence length, J) groups; one trace per GPU."""
    start = ctx.checkpoint_from
    flops = sum(
        count * ig_trace_flops(R1_DISTILL_QWEN_7B, ctx.lengths(length), j, start) for count, length, j in traces
    )
    gpu_h = flops / ctx.calibration.ig_flops_per_s / HOUR
    return per_trace_row(ctx, stage, work, gpu_h, "attribution")


def per_trace_row(ctx: Context, stage: str, work: str, gpu_h: float, section: str) -> Row:
    """Work split by trace over ``<section>.processes`` processes, one per GPU (accelerate launch)."""
    processes = ctx.processes(section)
    parallel = f"accelerate launch, one process per GPU: {section}.processes = {processes}"
    return Row(stage, work, gpu_h, gpu_h / ctx.a.node_gpus, gpu_h / processes, parallel)


def stage00(ctx: Context) -> Row:
    return Row("00", "availability check (hub profile); the base model is evaluated in 09", 0.0, 0.0, 0.0, "CPU")


def stage01(ctx: Context) -> Row:
    """K samples + 1 greedy output per LIMO question with the 7B (Sec. 3 setup)."""
    gen = ctx.profile["generation"]
    n = ctx.a.limo_questions * (int(gen["n_samples"]) + 1)
    load = VllmWork(
        R1_DISTILL_QWEN_7B,
        n,
        ctx.a.prompt_tokens,
        ctx.a.sample_tokens,
        gen["max_new_tokens"],
        prefill_tokens=ctx.a.limo_questions * ctx.a.prompt_tokens,  # the K copies share the prompt's KV
        seeded_share=int(gen["n_samples"]) / (int(gen["n_samples"]) + 1),  # the greedy output draws no noise
    )
    work = f"{ctx.a.limo_questions} x ({gen['n_samples']} samples + greedy) x {ctx.a.sample_tokens:,.0f} tokens, 7B"
    return vllm_row(ctx, "01", work, load)


def stage03(ctx: Context) -> Row:
    """IG of every kept trace (Eq. 2, J from the profile) + the J sensitivity check (App. C.4)."""
    att = ctx.profile["attribution"]
    j = int(att["n_steps"])
    load = ctx.load
    groups = [(load.n_correct, load.correct_length, j), (load.n_incorrect, load.incorrect_length, j)]
    sensitivity = att.get("sensitivity") or {}
    for extra_j in sensitivity.get("n_steps", []):
        groups.append((min(int(sensitivity.get("n_traces", 0)), load.n_correct), load.correct_length, int(extra_j)))
    work = (
        f"IG J={j} of {load.n_correct} correct + {load.n_incorrect} incorrect kept traces "
        f"(~{load.correct_length:,.0f}/{load.incorrect_length:,.0f} tokens) + sensitivity, 7B"
    )
    return ig_row(ctx, "03", work, groups)


def forced_answer_work(ctx: Context, n_traces: int, trace_tokens: float, segments: float) -> VllmWork:
    """Forced answers after every prefix (Sec. 3.1): (n+1) prefixes x K answers; prefix caching shares
    each trace's KV across its prefixes and samples."""
    spec = ctx.profile.get_path("analysis.confidence")
    prefixes = n_traces * (segments + 1)
    return VllmWork(
        R1_DISTILL_QWEN_7B,
        prefixes * int(spec["n_samples"]),
        ctx.a.prompt_tokens + trace_tokens / 2,
        min(ctx.a.forced_answer_tokens, spec["max_new_tokens"]),
        spec["max_new_tokens"],
        prefill_tokens=n_traces * (ctx.a.prompt_tokens + trace_tokens) + prefixes * ctx.a.forced_answer_lead_in_tokens,
    )


def stage04(ctx: Context) -> Row:
    load = ctx.load
    k = int(ctx.profile.get_path("analysis.confidence.n_samples"))
    work = f"{load.n_correct} correct traces x {load.segments_per_trace + 1:.0f} prefixes x {k} answers, 7B"
    return vllm_row(
        ctx, "04", work, forced_answer_work(ctx, load.n_correct, ctx.a.kept_correct_tokens, load.segments_per_trace)
    )


def segments_polynomial(ctx: Context, constant: float, per_segment: float) -> tuple[float, float]:
    """``constant + per_segment x segments`` of a sequence of L tokens as a polynomial in L: its trace
    (L - prompt - answer tokens) has ``segments_per_1k_tokens`` segments per 1,000 tokens."""
    rate = ctx.a.segments_per_1k_tokens / 1000
    wrap = ctx.a.prompt_tokens + ctx.a.answer_tokens
    return constant - per_segment * rate * wrap, per_segment * rate


def passes_gpu_hours(ctx: Context, n_traces: int, length: float, constant: float, per_segment: float) -> float:
    """GPU-hours of ``constant + per_segment x segments`` whole-sequence forward passes of the 7B per trace, at
    the IG-calibrated FLOP/s: E[passes(L) x f(L)] over the spread lengths (a long trace has more segments
    and longer passes, so this takes E[L³], not E[L]³)."""
    passes = segments_polynomial(ctx, constant, per_segment)
    flops = ctx.lengths(length).expect(poly_mul(passes, forward_coefficients(R1_DISTILL_QWEN_7B)))
    return n_traces * flops / ctx.calibration.ig_flops_per_s / HOUR


def linguistics_gpu_hours(ctx: Context, n_traces: int, length: float) -> float:
    """Stage 05 on the HF model: one pass for perplexity/entropy, n+1 passes for the removal perplexity
    (Cui et al.), each about a whole sequence; forward passes at the IG-calibrated FLOP/s."""
    return passes_gpu_hours(ctx, n_traces, length, 2, 1)


def stage05(ctx: Context) -> Row:
    load = ctx.load
    gpu_h = linguistics_gpu_hours(ctx, load.n_correct, load.correct_length)
    work = f"{load.n_correct} correct traces x ({load.segments_per_trace:.0f} + 2) forward passes, 7B (HF)"
    return per_trace_row(ctx, "05", work, gpu_h, "analysis.linguistics")


def stage06(ctx: Context) -> Row:
    """Stage 06's segment faithfulness (beyond the paper): per trace, every distinct masked sequence of the
    deletion and insertion curves of the ranked orderings once (at most 2 + 2 (n - 1) x orderings; six orderings
    on hub traces, no ground-truth oracle), whole-sequence forward passes of the 7B at the IG-calibrated FLOP/s, in
    one process (stage 06 has no accelerate launch)."""
    load, cfg = ctx.load, ctx.profile.get_path("analysis.faithfulness", {}) or {}
    if not cfg.get("enabled", False):
        return Row("06", "segment faithfulness disabled (analysis.faithfulness.enabled)", 0.0, 0.0, 0.0, "-")
    limit = cfg.get("n_traces")
    n_traces = load.n_correct if limit is None else min(int(limit), load.n_correct)
    # 2 + 2 (n - 1) x orderings passes of a trace of n segments
    orderings = FAITHFULNESS_ORDERINGS
    gpu_h = passes_gpu_hours(ctx, n_traces, load.correct_length, 2 - 2 * orderings, 2 * orderings)
    work = (
        f"{n_traces} correct traces x <= {2 + 2 * (load.segments_per_trace - 1) * FAITHFULNESS_ORDERINGS:.0f} "
        "forward passes (deletion/insertion curves), 7B (HF)"
    )
    return Row("06", work, gpu_h, gpu_h, gpu_h, "one process on one GPU")


def judge_work(ctx: Context, n_segments: float) -> VllmWork:
    """Two rounds (App. B); the few-shot block is a prefix shared by every request."""
    judge = ctx.profile["judge"]
    a = ctx.a
    round2 = n_segments * a.judge_round2_share
    requests = n_segments + round2
    output = (n_segments * a.judge_round1_tokens + round2 * a.judge_round2_tokens) / requests
    prompt = (n_segments * a.judge_prompt_tokens + round2 * (a.judge_prompt_tokens + a.judge_round1_tokens)) / requests
    return VllmWork(
        QWEN3_8B,
        requests,
        prompt,
        output,
        judge["round1"]["max_new_tokens"],
        prefill_tokens=n_segments * a.judge_prompt_tokens * 0.5 + round2 * (a.judge_round1_tokens + 30),
        n_calls=2,
    )


def stage07(ctx: Context) -> Row:
    n_segments = ctx.load.n_correct * ctx.load.segments_per_trace
    work = f"{n_segments:,.0f} segments judged (round 2 for {ctx.a.judge_round2_share:.0%}), Qwen3-8B"
    return vllm_row(ctx, "07", work, judge_work(ctx, n_segments))


def stage08_ig(ctx: Context) -> Row:
    j = int(ctx.profile.get_path("attribution.n_steps"))
    work = (
        f"IG J={j} of the {ctx.a.limo_questions} LIMO reference traces (~{ctx.load.reference_length:,.0f} tokens), 7B"
    )
    return replace(ig_row(ctx, "08", work, [(ctx.a.limo_questions, ctx.load.reference_length, j)]), stage="08 IG")


def planned_runs(profile: Profile) -> list:
    """Stage 08's own run plan (the variant registry decides which runs each table needs)."""
    from segattr_utils.stages.stage08_selective_sft import plan_runs

    return plan_runs(profile)


def run_gpu_hours(ctx: Context, spec) -> float:
    """GPU-hours of one SFT run of the student: its source's traces (spread, each capped at ``max_length``),
    pruned variants on ``1 - prune_token_share`` of the tokens."""
    from segattr_utils.llm.variants import get_variant

    training = ctx.profile["training"]
    cap = float(training["sft"]["max_length"])
    if spec.source == "reference":
        n, length = ctx.a.limo_questions, ctx.load.reference_length
    else:
        n, length = ctx.load.n_correct, ctx.load.correct_length
    if get_variant(spec.variant).mode == "pruned":
        length *= 1 - float(training["prune_token_share"])
    flops = sft_flops(R1_DISTILL_QWEN_1_5B, ctx.lengths(length), n, sft_epochs(ctx.profile), cap)
    return flops / ctx.calibration.sft_flops_per_s / HOUR


def stage08_sft(ctx: Context) -> Row:
    runs = planned_runs(ctx.profile)
    hours = [run_gpu_hours(ctx, spec) for spec in runs]
    gpus = ctx.profile.get_path("training.gpus") or ctx.a.node_gpus
    wall = lpt_makespan(hours, min(int(gpus), ctx.a.node_gpus))
    work = f"{len(runs)} SFT runs (plan_runs) of the 1.5B, {sft_epochs(ctx.profile):g} epochs each"
    return Row(
        "08 SFT", work, sum(hours), wall, wall, f"per_gpu: one run per GPU, {min(int(gpus), ctx.a.node_gpus)} at once"
    )


def evaluation_request_counts(profile: Profile) -> tuple[int, int]:
    """(greedy, sampled) outputs per evaluated model: every benchmark question (at most
    ``evaluation.limit``) once greedily and ``n_samples`` times sampled (Sec. 4.1)."""
    from segattr_utils.stages.stage09_evaluation import benchmarks

    limit = profile.get_path("evaluation.limit")
    greedy = sampled = 0
    for bench in benchmarks(profile):
        questions = BENCHMARK_SIZES[bench["name"]]
        questions = min(questions, int(limit)) if limit else questions
        greedy += questions
        sampled += questions * int(bench["n_samples"])
    return greedy, sampled


# Questions per benchmark as published (MATH-500, AMC 2023, AIME 2024/2025, GPQA-Diamond, Minerva Math,
# OlympiadBench's English math split used by math-ai/olympiadbench).
BENCHMARK_SIZES = {
    "MATH500": 500,
    "AMC23": 40,
    "AIME24": 30,
    "AIME25": 30,
    "GPQA": 198,
    "Minerva": 272,
    "OlympiadBench": 675,
}


def evaluation_lengths(a: Assumptions, greedy: int, sampled: int) -> tuple[float, float]:
    """(mean output, mean KV context of a running sequence) of a model's greedy and sampled outputs. A
    sequence stays in the batch for as many steps as it has tokens, so the running ones are weighted by
    their length: mean context = prompt + E[L²] / (2·E[L])."""
    lengths = ((greedy, a.eval_greedy_tokens), (sampled, a.eval_sample_tokens))
    tokens = sum(n * length for n, length in lengths)
    mean_output = tokens / (greedy + sampled)
    return mean_output, a.prompt_tokens + sum(n * length**2 for n, length in lengths) / (2 * tokens)


def evaluation_seeded_share(a: Assumptions, greedy: int, sampled: int) -> float:
    """The share of running sequences that are sampled (seeded): sampled tokens over all tokens (a sequence
    runs as many steps as it has tokens); greedy outputs draw no noise."""
    sampled_tokens = sampled * a.eval_sample_tokens
    return sampled_tokens / (sampled_tokens + greedy * a.eval_greedy_tokens)


def stage09(ctx: Context) -> Row:
    models = 1 + len(planned_runs(ctx.profile))  # the base student and every SFT run
    greedy, sampled = evaluation_request_counts(ctx.profile)
    per_model = greedy + sampled
    mean_output, context = evaluation_lengths(ctx.a, greedy, sampled)
    cfg = ctx.profile["evaluation"]
    load = VllmWork(
        R1_DISTILL_QWEN_1_5B,
        models * per_model,
        ctx.a.prompt_tokens,
        mean_output,
        cfg["max_new_tokens"],
        prefill_tokens=models * per_model * ctx.a.prompt_tokens / 4,  # samples share their question's prompt
        n_calls=models,
        n_engine_starts=models,
        context_tokens=context,
        seeded_share=evaluation_seeded_share(ctx.a, greedy, sampled),
    )
    work = (
        f"{models} models x ({greedy:,} greedy x {ctx.a.eval_greedy_tokens:,.0f} + {sampled:,} sampled x "
        f"{ctx.a.eval_sample_tokens:,.0f} tokens), 7 benchmarks, 1.5B"
    )
    return vllm_row(ctx, "09", work, load)


def reference_signals(ctx: Context) -> list[Row]:
    """Stages 04 and 05 on the reference traces: Tables 3-4's confidence-gain, perplexity and entropy
    variants train on ``training.ablation_source: reference`` and need these signals, which stages 04 and
    05 measure on LIMO's 817 CoTs (``measured_sources``); stage 04 with the engine of its self traces."""
    if ctx.profile.get_path("training.ablation_source") != "reference":
        return []
    load = ctx.load
    forced = vllm_row(
        ctx,
        "04 ref.",
        f"forced answers on the {ctx.a.limo_questions} reference traces, 7B (stage 04's engines)",
        replace(
            forced_answer_work(ctx, ctx.a.limo_questions, ctx.a.reference_trace_tokens, load.reference_segments),
            n_engine_starts=0,
        ),
    )
    gpu_h = linguistics_gpu_hours(ctx, ctx.a.limo_questions, load.reference_length)
    work = f"perplexity passes on the {ctx.a.limo_questions} reference traces, 7B (HF)"
    ling = per_trace_row(ctx, "05 ref.", work, gpu_h, "analysis.linguistics")
    return [forced, ling]


#: Rankings whose curves stage 06 computes on hub traces: IG, random, length, perplexity, entropy, confidence gain.
FAITHFULNESS_ORDERINGS = 6
STAGES = (stage00, stage01, stage03, stage04, stage05, stage06, stage07, stage08_ig, stage08_sft, stage09)


def estimate(profile: Profile, a: Assumptions | None = None, gpu: str = "h100") -> list[Row]:
    """One row per stage (02 runs on the CPU and is left out), then stages 04-05 on the reference
    traces where the run plan needs them."""
    a = a or Assumptions()
    ctx = Context(profile, a, GPUS[gpu], Calibration.from_paper(profile, a), Workload.from_assumptions(profile, a))
    return [stage(ctx) for stage in STAGES] + reference_signals(ctx)


@dataclass(frozen=True)
class Totals:
    gpu_hours: float
    wall_ideal_h: float
    wall_configured_h: float


def totals(rows: list[Row]) -> Totals:
    return Totals(
        sum(r.gpu_hours for r in rows), sum(r.wall_ideal_h for r in rows), sum(r.wall_configured_h for r in rows)
    )


def longest_stage(rows: list[Row]) -> Row:
    """The row with the most wall time with IG on 8 GPUs (the ideal column)."""
    return max(rows, key=lambda r: r.wall_ideal_h)


# ---------------------------------------------------------------------------------------------
# What fits in 24 hours


def with_settings(profile: Profile, settings: dict) -> Profile:
    """A copy of ``profile`` with dotted ``settings`` replaced; ``evaluation.benchmarks.<NAME>.n_samples``
    changes one benchmark (``*``: every benchmark with more samples than the value)."""
    changed = Profile(copy.deepcopy(dict(profile)))
    for dotted, value in settings.items():
        parts = dotted.split(".")
        if parts[:2] == ["evaluation", "benchmarks"]:
            name, key = parts[2], parts[3]
            for bench in changed["evaluation"]["benchmarks"]:
                if name == bench["name"] or (name == "*" and int(bench.get(key, 0)) > value):
                    bench[key] = value
            continue
        node = changed
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    return changed


ONE_GPU_PASSES = {"attribution.processes": 1, "analysis.linguistics.processes": 1}
BEFORE = {"generation.vllm.tensor_parallel_size": 4, "generation.vllm.data_parallel_size": 1}
SCENARIOS: tuple[tuple[str, dict], ...] = (
    ("paper.yaml as it is", {}),
    ("for comparison, one engine of TP 4: tensor_parallel_size: 4, data_parallel_size: 1", BEFORE),
    (
        "for comparison, tensor_parallel_size: 2 for every model (4 engines)",
        {"generation.vllm.tensor_parallel_size": 2},
    ),
    (
        "for comparison, IG and stage 05 in one process on one GPU (attribution.processes: 1, "
        "analysis.linguistics.processes: 1)",
        ONE_GPU_PASSES,
    ),
    ("6 samples on AMC23/AIME24/AIME25 (32 in paper.yaml)", {"evaluation.benchmarks.*.n_samples": 6}),
    ("evaluation.limit: 300", {"evaluation.limit": 300}),
    ("evaluation.limit: 100", {"evaluation.limit": 100}),
    ("training.tables: [] (Table 1 only: 4 runs + base)", {"training.tables": []}),
)


def scenario_totals(profile: Profile, a: Assumptions, gpu: str) -> list[tuple[str, Totals]]:
    """Totals of each scenario of :data:`SCENARIOS`."""
    return [(name, totals(estimate(with_settings(profile, settings), a, gpu))) for name, settings in SCENARIOS]


def largest_fitting_limit(profile: Profile, a: Assumptions, gpu: str, extra: dict | None = None) -> int | None:
    """The largest ``evaluation.limit`` (questions per benchmark) whose wall time as configured fits 24 h."""
    for limit in (675, 600, 500, 450, 400, 350, 300, 250, 200, 150, 100, 75, 50, 40, 30, 20, 10):
        settings = {"evaluation.limit": limit, **(extra or {})}
        if totals(estimate(with_settings(profile, settings), a, gpu)).wall_configured_h <= TARGET_WALL_HOURS:
            return limit
    return None


# ---------------------------------------------------------------------------------------------
# Report


def _hours(value: float) -> str:
    return f"{value:,.1f}"


def stage_table(rows: list[Row]) -> str:
    lines = [
        "| stage | work | GPU-hours | wall, ideal [h] | wall, as configured [h] | parallelism |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.stage} | {r.work} | {_hours(r.gpu_hours)} | {_hours(r.wall_ideal_h)} | "
            f"{_hours(r.wall_configured_h)} | {r.parallel} |"
        )
    t = totals(rows)
    lines.append(
        f"| **total** | | **{_hours(t.gpu_hours)}** | **{_hours(t.wall_ideal_h)}** | "
        f"**{_hours(t.wall_configured_h)}** | one 8-GPU node, stages in order |"
    )
    return "\n".join(lines)


def decode_rate_table(profile: Profile, a: Assumptions, gpu: GPU) -> str:
    """Tokens/s per GPU of each model at TP 1, 2, 4 (the memory-bound model above, at each stage's mean
    context; TP 4 copies the 1.5B's 2 KV heads); the TP the code chooses in bold."""
    util = float(profile.get_path("generation.vllm.gpu_memory_utilization", DEFAULT_UTILISATION))
    greedy, sampled = evaluation_request_counts(profile)
    lines = [
        "| model (stage, mean context) | TP 1 | TP 2 | TP 4 | concurrency at the chosen TP |",
        "|---|---:|---:|---:|---|",
    ]
    k = int(profile.get_path("generation.n_samples"))
    for model, context, what, seeded in (
        (R1_DISTILL_QWEN_7B, a.prompt_tokens + a.sample_tokens / 2, "01 sampling", k / (k + 1)),
        (QWEN3_8B, a.judge_prompt_tokens + a.judge_round1_tokens / 2, "07 judge", 1.0),
        (
            R1_DISTILL_QWEN_1_5B,
            evaluation_lengths(a, greedy, sampled)[1],
            "09 evaluation",
            evaluation_seeded_share(a, greedy, sampled),
        ),
    ):
        chosen, _ = engine_layout(profile, model, gpu, a.node_gpus)
        cells = []
        for tp in (1, 2, 4):
            per_gpu = f"{decode_rate(model, gpu, a, tp, util, context, seeded).tokens_per_s / tp:,.0f}"
            cells.append(f"**{per_gpu}**" if tp == chosen else per_gpu)
        rate = decode_rate(model, gpu, a, chosen, util, context, seeded)
        lines.append(
            f"| {model.name} ({what}, {context:,.0f} tokens) | {' | '.join(cells)} | {rate.concurrency:,.0f} "
            f"sequences per engine, {rate.step_s * 1000:.0f} ms per step |"
        )
    return "\n".join(lines)


def assumption_table(profile: Profile, a: Assumptions, gpu: GPU) -> str:
    cal = Calibration.from_paper(profile, a)
    lines = ["| assumption | value | why |", "|---|---:|---|"]
    for f in fields(a):
        value = getattr(a, f.name)
        lines.append(f"| {f.name} | {value:,} | {ASSUMPTION_NOTES.get(f.name, '')} |")
    lines.append(
        f"| GPU | {gpu.name} | {gpu.bf16_flops / 1e12:.0f} TFLOP/s bf16 dense, {gpu.hbm_bandwidth / 1e12:.2f} TB/s, "
        f"{gpu.memory_bytes / GIB:.1f} GiB |"
    )
    start = ig_checkpoint_from(profile, gpu)
    share = Lengths(a.prompt_tokens + a.answer_tokens + a.kept_correct_tokens, a.sequence_length_cv).share_above(start)
    lines.append(
        f"| IG with activation checkpointing from | {start:,.0f} tokens | attribution.activation_checkpointing "
        f"on {gpu.name} by segattr_utils.method.ig_cost ({share:.1%} of the kept correct traces): 4 passes per "
        "path point instead of 3 |"
    )
    lines.append(
        f"| achieved IG FLOP/s per GPU | {cal.ig_flops_per_s / 1e12:.0f} T | from paper_ig_gpu_hours "
        f"({cal.ig_flops_per_s / gpu.bf16_flops:.0%} of peak) |"
    )
    lines.append(
        f"| achieved SFT FLOP/s per GPU | {cal.sft_flops_per_s / 1e12:.0f} T | from paper_sft_gpu_hours "
        f"({cal.sft_flops_per_s / gpu.bf16_flops:.0%} of peak), used for the 1.5B too |"
    )
    return "\n".join(lines)


def scenario_table(profile: Profile, a: Assumptions, gpu: str) -> str:
    lines = [
        "| settings (not applied to paper.yaml) | GPU-hours | wall, ideal [h] | wall, as configured [h] | fits 24 h |",
        "|---|---:|---:|---:|---|",
    ]
    for name, t in scenario_totals(profile, a, gpu):
        fits = "yes" if t.wall_configured_h <= TARGET_WALL_HOURS else "no"
        lines.append(
            f"| {name} | {_hours(t.gpu_hours)} | {_hours(t.wall_ideal_h)} | {_hours(t.wall_configured_h)} | {fits} |"
        )
    return "\n".join(lines)


def _limit_text(limit: int | None) -> str:
    if limit is None:
        return "none (even 10 questions per benchmark do not fit)"
    if limit >= max(BENCHMARK_SIZES.values()):
        return "no limit at all (every question fits)"
    return f"{limit} questions per benchmark"


def _fits(hours: float) -> str:
    return "fits" if hours <= TARGET_WALL_HOURS else "does NOT fit"


def verdict(profile: Profile, a: Assumptions, gpu: str) -> str:
    """The plain answer, as configured, on this GPU and the other; the longest stage; the settings that fit
    when it does not."""
    other = "h200" if gpu == "h100" else "h100"
    t, t_other = totals(estimate(profile, a, gpu)), totals(estimate(profile, a, other))
    top = longest_stage(estimate(profile, a, gpu))
    text = (
        f"**Verdict: the paper profile as configured {_fits(t.wall_configured_h)} in 24 h on one 8-GPU "
        f"{GPUS[gpu].name} node**: {_hours(t.wall_configured_h)} h and {_hours(t.gpu_hours)} GPU-hours (IG and "
        f"stage 05 in one process per GPU, `processes: auto`). On {GPUS[other].name} GPUs: "
        f"{_hours(t_other.wall_configured_h)} h ({_fits(t_other.wall_configured_h)}); {_hours(t_other.gpu_hours)} "
        f"GPU-hours. The longest stage is {top.stage} ({_hours(top.wall_configured_h)} h, "
        f"{top.wall_configured_h / t.wall_configured_h:.0%} of the wall time)."
    )
    if t.wall_configured_h > TARGET_WALL_HOURS:
        runs = len(planned_runs(profile))
        text += (
            f" With all {1 + runs} models evaluated, the largest `evaluation.limit` that fits is "
            f"{_limit_text(largest_fitting_limit(profile, a, gpu))} (AMC23/AIME keep their 32 samples); with "
            f"Table 1 only (`training.tables: []`) it is "
            f"{_limit_text(largest_fitting_limit(profile, a, gpu, {'training.tables': []}))}. "
            "paper.yaml's method settings are left unchanged."
        )
    return text


def report(profile: Profile, a: Assumptions, gpu: str) -> str:
    return "\n\n".join(
        [
            f"GPU-hours per stage of the paper profile on {GPUS[gpu].name} GPUs "
            f"(`python benchmarks/gpu_hours.py --gpu {gpu}`; estimated, not measured).",
            stage_table(estimate(profile, a, gpu)),
            verdict(profile, a, gpu),
            "What brings it within 24 h (each row from paper.yaml with the settings named):",
            scenario_table(profile, a, gpu),
            "Decode rate per GPU by tensor parallel size [tokens/s] (the code's choice in bold):",
            decode_rate_table(profile, a, GPUS[gpu]),
            "Assumptions (every number not in paper.yaml):",
            assumption_table(profile, a, GPUS[gpu]),
        ]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", choices=sorted(GPUS), default="h100")
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--out", default=None, help="also write the Markdown here")
    args = parser.parse_args(argv)
    text = report(load_profile(args.profile), Assumptions(), args.gpu)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
