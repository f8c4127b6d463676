"""GPU checks: what only a GPU machine can tell, run once on the first one lent.

Run: ``python benchmarks/gpu_checks.py [--out results/gpu_checks.json] [--only NAME ...] [--quick]``
(``make gpu-checks``). Every check is a small function in :data:`REGISTRY`; each runs on its own (an
exception is recorded as a failed row and the next check runs) and gives one row ``{check, status,
passed, values, seconds, error}``. The rows are written as JSON and as a Markdown table (same path,
``.md``) and printed.

Nothing is downloaded: the models are random weights of the REAL configs (R1-Distill-Qwen-7B and
-1.5B, written below), and vLLM gets a folder holding the random 1.5B and a locally built R1-like
tokenizer (byte-level BPE, Qwen2's split, R1's special tokens and chat template, BOS added by
``add_special_tokens=True`` as R1-Distill's tokenizer does, filled to the model's vocabulary so that
every sampled id decodes).

Checks, in the order they run:

1. ``environment``: torch/CUDA versions, GPU name and memory, package versions, ``pip check``.
2. ``sdpa_flash_gqa``: flash SDPA with GQA at 7B shapes (28 q / 4 kv heads, head dim 128, L = 16k,
   bf16), forward + backward, against the math backend at a short length.
4. ``vllm_engine_memory``: the stage path (``services.load_generator``: the engine and only the
   tokenizer beside it) starts, closes and starts again; free GPU memory at each step.
3. ``vllm_seed_diversity``: K copies of a prompt with seeds ``derive_seed(...)`` give K distinct
   samples, the same seeds the same samples, one shared seed K identical samples.
5. ``vllm_throughput``: output tokens/s with 64 and with 2048 requests per call (256 tokens, ignore_eos).
7. ``prompt_token_ids``: the prompt ids vLLM reports for what ``VLLMGenerator`` sends equal the chat
   template's (no doubled BOS).
-. ``vllm_data_parallel``: ``data_parallel_size`` 2 (two worker processes, one engine each) answers a call
   split by prompt, the workers exit on ``close()``; outputs compared with one in-process engine's.
6. ``sft_16k``: 20 SFT steps of the 1.5B at 16k tokens with the project's ``train_sft`` (TRL), float32 master
   weights under bf16 autocast (``training.sft.precision: fp32_master``), gradient checkpointing, batch 2: peak
   memory, s/step, achieved FLOP/s.
-. ``sft_fp32_master``: one SFT step of the 1.5B loaded in bf16, with paper.yaml's ``training.sft``: the weights
   train in float32 (bf16 autocast in the passes on CUDA), the step moves them, and how many of its updates bf16
   weights would have lost (below half a bf16 step).
8. ``ig_memory``: ``token_attributions`` one path point per pass on the 7B config with 2 layers at L = 2k, 4k.

A check whose dependency is missing (CUDA, vLLM) is skipped with the reason. ``--quick`` shrinks every
shape so that the script runs on a CPU in about a minute: the CUDA-only checks are skipped, the others
(pip check, SDPA's math path, the HF token ids, a tiny SFT and IG) run.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import itertools
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch

from segattr_utils.llm.architectures import R1_DISTILL_QWEN_1_5B, R1_DISTILL_QWEN_7B

GIB = 2**30

# ---------------------------------------------------------------------------------------------
# Model configs (config.json of the hub models, segattr_utils.llm.architectures; nothing is downloaded)

# --quick: the same head counts (28:4, 12:2), tiny widths, depths and vocabularies; the student keeps a head
# dim of 32, which vLLM's attention kernels support, so --quick also runs on a GPU
QUICK_7B = dict(R1_DISTILL_QWEN_7B, hidden_size=224, intermediate_size=448, num_hidden_layers=2, vocab_size=4096)
QUICK_1_5B = dict(R1_DISTILL_QWEN_1_5B, hidden_size=384, intermediate_size=768, num_hidden_layers=2, vocab_size=4096)


@dataclass(frozen=True)
class Shapes:
    """Sizes of every check: the real ones, or ``--quick``'s CPU-sized ones."""

    student: dict
    generator: dict
    dtype: torch.dtype
    sdpa_length: int
    sdpa_compare_length: int
    vllm_copies: int
    vllm_max_tokens: int
    throughput_requests: tuple[int, ...]
    throughput_max_tokens: int
    sft_length: int
    sft_steps: int
    ig_lengths: tuple[int, ...]
    sft_master_length: int

    @classmethod
    def for_mode(cls, quick: bool) -> Shapes:
        if quick:
            return cls(QUICK_1_5B, QUICK_7B, torch.float32, 256, 128, 4, 16, (8, 32), 16, 128, 2, (64, 128), 64)
        return cls(
            R1_DISTILL_QWEN_1_5B,
            R1_DISTILL_QWEN_7B,
            torch.bfloat16,
            16384,
            1024,
            8,
            64,
            (64, 2048),
            256,
            16384,
            20,
            (2048, 4096),
            1024,
        )


# ---------------------------------------------------------------------------------------------
# The registry


class Skip(Exception):
    """Raised by a check that cannot run here; the message is the reason."""


@dataclass(frozen=True)
class Check:
    name: str
    function: Callable
    needs: tuple[str, ...] = ()  # always (e.g. CUDA and vLLM for the engine checks)
    full_needs: tuple[str, ...] = ()  # only without --quick (real shapes need a GPU)
    uses_engine: bool = False  # shares the one vLLM engine of :class:`Resources`

    def requirements(self, quick: bool) -> tuple[str, ...]:
        return self.needs if quick else self.needs + self.full_needs


REGISTRY: list[Check] = []


def check(name: str, needs: Iterable[str] = (), full_needs: Iterable[str] = (), uses_engine: bool = False):
    """Register ``function(resources) -> values`` as a check; ``values["passed"]`` is its verdict."""

    def register(function: Callable) -> Callable:
        REGISTRY.append(Check(name, function, tuple(needs), tuple(full_needs), uses_engine))
        return function

    return register


def missing_requirement(need: str) -> str | None:
    """Why ``need`` ("cuda", "vllm") is not met here, or None."""
    if need == "cuda":
        return None if torch.cuda.is_available() else "needs CUDA (torch.cuda.is_available() is False)"
    if need == "vllm":
        return None if importlib.util.find_spec("vllm") else "needs vLLM (not installed; make setup-gpu)"
    raise ValueError(f"unknown requirement {need!r}")


# ---------------------------------------------------------------------------------------------
# Shared resources: tokenizer, the saved random student, one vLLM engine


def build_r1_like_tokenizer(vocab_size: int, corpus: Iterable[str] = ()):
    """A tokenizer that behaves like R1-Distill-Qwen's for these checks, built locally.

    The project's byte-level BPE (Qwen2's split regex, R1's special tokens and chat template) is trained
    on a small corpus; its vocabulary is then filled with 3-byte tokens (decodable, never produced by
    encoding) to ``vocab_size`` with the special tokens last, so that every id a random model samples
    decodes; and, as R1-Distill's tokenizer (``add_bos_token: true``), it prepends BOS when called with
    ``add_special_tokens=True``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from segattr_utils.world.tokenizer import ADDED_TOKENS, BOS, EOS, SPECIAL_TOKENS, build_bpe_tokenizer

    text = (
        list(corpus)
        or [
            "Let me think. Wait, 3 + 4 = 7, but let me double-check: 7 - 4 = 3.\n\nSo the answer is \\boxed{7}.",
            "Alternatively, consider the triangle with sides 3, 4 and 5. Hmm, its area is 6.",
            "The quick brown fox jumps over the lazy dog. Question: what is 12 times 12? Answer: 144.",
        ]
        * 8
    )
    base = build_bpe_tokenizer(text, vocab_size=512)
    state = json.loads(base.backend_tokenizer.to_str())
    specials = set(SPECIAL_TOKENS) | set(ADDED_TOKENS)
    vocab = [
        token for token, _ in sorted(state["model"]["vocab"].items(), key=lambda kv: kv[1]) if token not in specials
    ]
    n_regular = vocab_size - len(SPECIAL_TOKENS) - len(ADDED_TOKENS)
    known = set(vocab)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    for chars in itertools.product(alphabet, repeat=3):
        if len(vocab) >= n_regular:
            break
        if "".join(chars) not in known:
            vocab.append("".join(chars))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["model"]["merges"]]
    core = Tokenizer(models.BPE({token: i for i, token in enumerate(vocab)}, merges))
    core.pre_tokenizer = base.backend_tokenizer.pre_tokenizer
    core.decoder = base.backend_tokenizer.decoder
    core.add_special_tokens(list(SPECIAL_TOKENS))
    core.add_tokens(list(ADDED_TOKENS))
    core.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, core.token_to_id(BOS))]
            ),
        ]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=EOS)
    tokenizer.chat_template = base.chat_template
    if len(tokenizer) != vocab_size:
        raise AssertionError(f"tokenizer has {len(tokenizer)} tokens, wanted {vocab_size}")
    return tokenizer


def random_causal_lm(config_values: dict, dtype: torch.dtype, device: str, tokenizer=None):
    """A ``Qwen2ForCausalLM`` with random weights of the given config, built directly on ``device``; with
    ``tokenizer``, its BOS/EOS ids are the config's (vLLM stops at the config's EOS)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    special = (
        {} if tokenizer is None else {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    )
    config = Qwen2Config(**config_values, **special, pad_token_id=None, use_cache=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM._from_config(config, dtype=dtype)
    return model


def device_name() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def engine_profile():
    """The paper profile with ``generation.vllm`` as the stages use it (``tensor_parallel_size: auto``: 1 for
    the 1.5B), but ONE engine in this process (``data_parallel_size: 1``): checks 4, 3, 5 and 7 measure a
    single engine and call its ``LLM`` directly; check ``vllm_data_parallel`` starts the workers itself."""
    from segattr_utils.config import Profile, load_profile

    profile = Profile(copy.deepcopy(dict(load_profile("paper"))))
    profile["generation"]["vllm"]["data_parallel_size"] = 1
    return profile


@dataclass
class Resources:
    """What several checks share, built on first use: the tokenizer, the saved random student (for
    vLLM) and one vLLM engine over it. A failed build is remembered, so each later check fails fast."""

    quick: bool
    workdir: Path
    shapes: Shapes = field(init=False)
    _tokenizer: object = None
    _student_folder: Path | None = None
    _engine: object = None
    _engine_error: Exception | None = None

    def __post_init__(self):
        self.shapes = Shapes.for_mode(self.quick)

    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = build_r1_like_tokenizer(self.shapes.student["vocab_size"])
        return self._tokenizer

    def student_folder(self) -> Path:
        """The random student (1.5B config) and the tokenizer, saved as vLLM loads a model."""
        if self._student_folder is None:
            folder = self.workdir / "student"
            model = random_causal_lm(self.shapes.student, torch.bfloat16, device_name(), self.tokenizer())
            model.save_pretrained(folder)
            self.tokenizer().save_pretrained(folder)
            del model
            release_memory()
            self._student_folder = folder
        return self._student_folder

    def start_engine(self):
        """``(generator, tokenizer)`` by the stages' own path (``services.load_generator``)."""
        from segattr_utils import services

        return services.load_generator(engine_profile(), "student", "vllm", path=self.student_folder())

    def engine(self):
        if self._engine_error is not None:
            raise RuntimeError(f"the shared vLLM engine failed to start: {self._engine_error!r}")
        if self._engine is None:
            try:
                self._engine, _ = self.start_engine()
            except Exception as error:
                self._engine_error = error
                raise
        return self._engine

    def close_engine(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


def release_memory() -> None:
    from segattr_utils.llm.generation import release_gpu_memory

    release_gpu_memory()


def free_gpu_memory_gib() -> float | None:
    """Free memory of GPU 0 as the driver sees it (other processes included, e.g. vLLM's engine core)."""
    if not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info()
    return round(free / GIB, 2)


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib() -> float | None:
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    return round(torch.cuda.max_memory_allocated() / GIB, 2)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# 1. Environment


PACKAGES = ("torch", "transformers", "trl", "accelerate", "vllm", "deepspeed", "bitsandbytes", "numpy", "captum")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@check("environment")
def check_environment(res: Resources) -> dict:
    """Versions (torch, CUDA, cuDNN, the GPU packages), the GPUs, and ``pip check`` (the GPU set of
    constraints-gpu.txt must be consistent once installed)."""
    pip = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=300)
    values = {
        "python": platform.python_version(),
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "packages": package_versions(),
        "gpus": [
            {
                "name": torch.cuda.get_device_name(i),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / GIB, 1),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
            }
            for i in range(torch.cuda.device_count())
        ],
        "free_gpu_memory_gib": free_gpu_memory_gib(),
        "pip_check_rc": pip.returncode,
        "pip_check": (pip.stdout + pip.stderr).strip(),
    }
    values["passed"] = pip.returncode == 0
    return values


# ---------------------------------------------------------------------------------------------
# 2. SDPA: flash kernel with GQA at 7B shapes


def gqa_inputs(length: int, dtype: torch.dtype, device: str, config: dict, seed: int = 0):
    """(q, k, v) of one sequence with the config's query/KV heads and head dim, requiring grad."""
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = R1_DISTILL_QWEN_7B["hidden_size"] // R1_DISTILL_QWEN_7B["num_attention_heads"]  # 128
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def tensor(n_heads):
        x = torch.randn(1, n_heads, length, head_dim, generator=generator)
        return x.to(device=device, dtype=dtype).requires_grad_(True)

    return tensor(heads), tensor(kv_heads), tensor(kv_heads)


def sdpa_forward_backward(q, k, v, backend) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Causal SDPA with ``enable_gqa`` forced onto one backend; output and (dq, dk, dv)."""
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(backend):
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    grads = torch.autograd.grad(out, (q, k, v), grad_outputs=torch.ones_like(out))
    return out.detach(), tuple(g.detach() for g in grads)


def repeat_kv_reference(q, k, v) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """GQA written out (K/V heads repeated, softmax in float64): the reference for the math backend."""
    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    groups = q.shape[1] // k.shape[1]
    keys, values = k64.repeat_interleave(groups, 1), v64.repeat_interleave(groups, 1)
    scores = q64 @ keys.transpose(-1, -2) / q.shape[-1] ** 0.5
    mask = torch.ones(q.shape[2], q.shape[2], dtype=torch.bool, device=q.device).tril()
    out = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ values
    grads = torch.autograd.grad(out, (q64, k64, v64), grad_outputs=torch.ones_like(out))
    return out.detach(), grads


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (both in float64)."""
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def max_relative_error(result, reference) -> float:
    (out, grads), (ref_out, ref_grads) = result, reference
    return max(relative_error(x, y) for x, y in zip((out, *grads), (ref_out, *ref_grads)))


@check("sdpa_flash_gqa", full_needs=("cuda",))
def check_sdpa(res: Resources) -> dict:
    """Flash SDPA with ``enable_gqa`` at 7B shapes (28 q heads, 4 KV heads, head dim 128, L = 16k, bf16),
    forward + backward; then flash vs the math backend (float32) at a short length. On a CPU (--quick):
    the math backend vs GQA written out."""
    from torch.nn.attention import SDPBackend

    config = res.shapes.generator
    values: dict = {"heads": config["num_attention_heads"], "kv_heads": config["num_key_value_heads"]}
    if not torch.cuda.is_available():
        q, k, v = gqa_inputs(res.shapes.sdpa_compare_length, torch.float32, "cpu", config)
        error = max_relative_error(sdpa_forward_backward(q, k, v, SDPBackend.MATH), repeat_kv_reference(q, k, v))
        values.update(
            flash="not run: needs CUDA",
            math_vs_reference_length=res.shapes.sdpa_compare_length,
            math_vs_reference_relative_error=error,
            passed=error < 1e-5,
        )
        return values
    q, k, v = gqa_inputs(res.shapes.sdpa_length, torch.bfloat16, "cuda", config)
    sdpa_forward_backward(q[:, :, :128], k[:, :, :128], v[:, :, :128], SDPBackend.FLASH_ATTENTION)  # warm-up
    reset_peak_memory()
    started = time.perf_counter()
    out, grads = sdpa_forward_backward(q, k, v, SDPBackend.FLASH_ATTENTION)
    synchronize()
    values.update(
        length=res.shapes.sdpa_length,
        flash_forward_backward_s=round(time.perf_counter() - started, 4),
        flash_peak_gib=peak_memory_gib(),
        finite=bool(torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)),
    )
    del out, grads, q, k, v
    short = gqa_inputs(res.shapes.sdpa_compare_length, torch.bfloat16, "cuda", config, seed=1)
    flash = sdpa_forward_backward(*short, SDPBackend.FLASH_ATTENTION)
    as_float = [t.detach().float().requires_grad_(True) for t in short]
    math = sdpa_forward_backward(*as_float, SDPBackend.MATH)
    error = max_relative_error(flash, math)
    values.update(
        compare_length=res.shapes.sdpa_compare_length,
        flash_bf16_vs_math_fp32_relative_error=error,
        passed=values["finite"] and error < 2e-2,  # bf16 has 8 mantissa bits: ~1e-2 is its rounding
    )
    return values


# ---------------------------------------------------------------------------------------------
# vLLM checks (3, 4, 5, 7)


def question_prompts(tokenizer, n: int) -> list[str]:
    """``n`` distinct chat-templated prompts, built as the stages build theirs (``services.prompt``)."""
    from segattr_utils import services

    return [services.prompt(tokenizer, f"Question {i}: what is {i} + {2 * i + 1}?") for i in range(n)]


@check("vllm_engine_memory", needs=("cuda", "vllm"))
def check_engine_memory(res: Resources) -> dict:
    """the stages' path (``services.load_generator``: the engine, and only the tokenizer
    beside it) starts with the paper profile's engine settings, generates, and ``close()`` frees the GPU
    so that a second engine starts (stage 09 evaluates one model after another)."""
    from segattr_utils.llm.generation import SamplingSettings, derive_seed

    values: dict = {"free_gib_before": free_gpu_memory_gib()}
    folder = res.student_folder()
    values["free_gib_after_saving_model"] = free_gpu_memory_gib()
    for attempt in (1, 2):
        started = time.perf_counter()
        generator, tokenizer = res.start_engine()
        values[f"engine{attempt}_start_s"] = round(time.perf_counter() - started, 1)
        values[f"free_gib_engine{attempt}_running"] = free_gpu_memory_gib()
        values["beside_engine"] = type(tokenizer).__name__
        values["model_beside_engine"] = isinstance(tokenizer, torch.nn.Module)
        prompts = question_prompts(tokenizer, 4)
        outputs = generator.generate(prompts, SamplingSettings(max_new_tokens=8), [derive_seed(0, i) for i in range(4)])
        values[f"engine{attempt}_outputs"] = len(outputs)
        generator.close()
        values[f"free_gib_after_close{attempt}"] = free_gpu_memory_gib()
    values["model_folder"] = str(folder)
    before, after = values["free_gib_after_saving_model"], values["free_gib_after_close2"]
    released = before is None or after is None or after >= before - 2.0  # 2 GiB: CUDA contexts, allocator slack
    values["passed"] = (
        released and values["engine1_outputs"] == values["engine2_outputs"] == 4 and not values["model_beside_engine"]
    )
    return values


@check("vllm_seed_diversity", needs=("cuda", "vllm"), uses_engine=True)
def check_seed_diversity(res: Resources) -> dict:
    """K copies of one prompt with per-request seeds ``derive_seed(seed, tag, question,
    sample)`` (what stage 01 sends) are K distinct samples; the same seeds again give the same samples;
    one shared seed gives K identical samples (vLLM seeds each request on its own: why the project
    derives one seed per request)."""
    from segattr_utils.llm.generation import SamplingSettings, derive_seed

    generator = res.engine()
    k = res.shapes.vllm_copies
    prompts = question_prompts(res.tokenizer(), 1) * k
    settings = SamplingSettings(temperature=0.6, top_p=1.0, max_new_tokens=res.shapes.vllm_max_tokens)
    seeds = [derive_seed(0, "sample", "q0", s) for s in range(k)]
    first = [o["text"] for o in generator.generate(prompts, settings, seeds)]
    again = [o["text"] for o in generator.generate(prompts, settings, seeds)]
    shared = [o["text"] for o in generator.generate(prompts, settings, [seeds[0]] * k)]
    values = {
        "copies": k,
        "distinct_with_derived_seeds": len(set(first)),
        "same_seeds_reproduce": first == again,
        "distinct_with_one_shared_seed": len(set(shared)),
    }
    values["passed"] = values["distinct_with_derived_seeds"] == k and values["same_seeds_reproduce"]
    return values


@check("vllm_throughput", needs=("cuda", "vllm"), uses_engine=True)
def check_throughput(res: Resources) -> dict:
    """output tokens/s of the random 1.5B with 64 and with 2048 requests in one call
    (256 tokens each, ignore_eos). ``LLM.generate`` is called directly: the project's generator has no
    ``ignore_eos`` (the stages stop at EOS)."""
    from vllm import SamplingParams

    from segattr_utils.llm.generation import derive_seed

    llm = res.engine().llm
    sizes, max_tokens = res.shapes.throughput_requests, res.shapes.throughput_max_tokens
    prompts = question_prompts(res.tokenizer(), max(sizes))

    def params(n):
        return [
            SamplingParams(temperature=0.6, top_p=1.0, max_tokens=max_tokens, ignore_eos=True, seed=derive_seed(0, i))
            for i in range(n)
        ]

    llm.generate(prompts[:8], params(8), use_tqdm=False)  # warm-up
    values: dict = {"max_tokens": max_tokens}
    complete = True
    for n in sizes:
        started = time.perf_counter()
        outputs = llm.generate(prompts[:n], params(n), use_tqdm=False)
        seconds = time.perf_counter() - started
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        complete &= tokens == n * max_tokens
        values[f"requests_{n}_s"] = round(seconds, 2)
        values[f"requests_{n}_tokens_per_s"] = round(tokens / seconds, 1)
    values["every_request_ran_to_max_tokens"] = complete
    values["passed"] = complete
    return values


@check("prompt_token_ids", uses_engine=True)
def check_prompt_token_ids(res: Resources) -> dict:
    """the prompt ids the model sees equal ``apply_chat_template``'s (no doubled BOS).

    Always: the ids of the project's HF paths (``add_special_tokens=False``) against the template's, and
    whether ``add_special_tokens=True`` (vLLM 0.30.0's default for a text prompt) doubles the BOS with an
    R1-like tokenizer. With vLLM and CUDA: ``RequestOutput.prompt_token_ids`` of the stages' engine for the
    token prompt ``VLLMGenerator.generate`` sends (``engine_prompts``: the HF ids with the text), and, for
    the record, for the bare text prompt."""
    from segattr_utils import services

    tokenizer = res.tokenizer()
    messages = [{"role": "user", "content": services.user_message("What is 3 + 4?")}]
    template = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    template_ids = list(template["input_ids"] if hasattr(template, "keys") else template)
    text = services.prompt(tokenizer, "What is 3 + 4?")
    hf_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    default_ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    values: dict = {
        "template_starts_with_bos": template_ids[:1] == [bos],
        "hf_ids_equal_template": hf_ids == template_ids,
        "add_special_tokens_true_doubles_bos": default_ids[:2] == [bos, bos],
    }
    reasons = [r for r in (missing_requirement("cuda"), missing_requirement("vllm")) if r]
    if reasons:
        values["vllm"] = "not run: " + "; ".join(reasons)
        values["passed"] = values["hf_ids_equal_template"]
        return values
    from vllm import SamplingParams

    def leading_bos(ids: list[int]) -> int:
        return next((i for i, t in enumerate(ids) if t != bos), len(ids))

    generator = res.engine()
    greedy = SamplingParams(temperature=0.0, max_tokens=1)
    sent, as_text = generator.llm.generate(generator.engine_prompts([text]) + [text], greedy, use_tqdm=False)
    vllm_ids, text_ids = list(sent.prompt_token_ids or []), list(as_text.prompt_token_ids or [])
    values.update(
        vllm_ids_equal_template=vllm_ids == template_ids,
        vllm_leading_bos_count=leading_bos(vllm_ids),
        vllm_first_ids=vllm_ids[:4],
        template_first_ids=template_ids[:4],
        text_prompt_leading_bos_count=leading_bos(text_ids),
    )
    values["passed"] = values["hf_ids_equal_template"] and values["vllm_ids_equal_template"]
    return values


@check("vllm_data_parallel", needs=("cuda", "vllm"))
def check_data_parallel(res: Resources) -> dict:
    """``data_parallel_size`` 2 as the stages run it: two worker processes (``segattr_utils.llm.vllm_worker``,
    one engine each, on GPUs 0 and 1, or both on GPU 0 at ``gpu_memory_utilization`` 0.4 on a one-GPU
    machine) answer one call split by prompt, and exit on ``close()``, freeing the GPU. The outputs are
    compared with the in-process engine's for the same requests: the seeds are the same, but vLLM does not
    promise batch-invariant numerics, so the shares of identical texts are reported, not required."""
    from segattr_utils.llm.generation import SamplingSettings, VLLMGenerator, derive_seed
    from segattr_utils.llm.vllm_parallel import Devices, visible_devices

    visible = visible_devices()
    ids = visible.ids or ("0",)
    groups = ids[:2] if len(ids) >= 2 else (ids[0], ids[0])
    settings_of_profile = engine_profile().get_path("generation.vllm")
    engine = {k: v for k, v in settings_of_profile.items() if k != "data_parallel_size"} | {"tensor_parallel_size": 1}
    if len(set(groups)) == 1:
        engine["gpu_memory_utilization"] = 0.4  # two engines share the GPU
    folder, tokenizer = res.student_folder(), res.tokenizer()
    k = res.shapes.vllm_copies
    prompts = [p for p in question_prompts(tokenizer, 6) for _ in range(k)]
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=res.shapes.vllm_max_tokens)
    sampled = SamplingSettings(temperature=0.6, top_p=1.0, max_new_tokens=res.shapes.vllm_max_tokens)
    settings = [greedy if i % k == 0 else sampled for i in range(len(prompts))]
    seeds = [derive_seed(0, "dp", i) for i in range(len(prompts))]

    values: dict = {"workers_on": list(groups), "requests": len(prompts), "free_gib_before": free_gpu_memory_gib()}

    def outputs(dp: int, devices: Devices) -> list[dict]:
        generator = VLLMGenerator(
            str(folder), dtype="bfloat16", tokenizer=tokenizer, devices=devices, **engine, data_parallel_size=dp
        )
        pool = generator.workers
        try:
            return generator.generate(prompts, settings, seeds)
        finally:
            generator.close()
            values[f"dp{dp}_exit_codes"] = pool.exit_codes() if pool else None

    one = outputs(1, Devices(()))
    started = time.perf_counter()
    two = outputs(2, Devices(tuple(groups), visible.memory_bytes))
    values["dp2_seconds"] = round(time.perf_counter() - started, 1)
    values["free_gib_after_close"] = free_gpu_memory_gib()
    same = [a["text"] == b["text"] for a, b in zip(one, two)]
    values["identical_greedy_share"] = round(sum(s for i, s in enumerate(same) if i % k == 0) / (len(same) / k), 3)
    values["identical_sampled_share"] = round(
        sum(s for i, s in enumerate(same) if i % k) / (len(same) - len(same) / k), 3
    )
    before, after = values["free_gib_before"], values["free_gib_after_close"]
    released = before is None or after is None or after >= before - 2.0
    values["passed"] = len(two) == len(prompts) and values["dp2_exit_codes"] == [0, 0] and released
    return values


# ---------------------------------------------------------------------------------------------
# 6. SFT at 16k tokens


def sft_optimizer() -> str:
    """paper.yaml's 8-bit AdamW where bitsandbytes is importable (and CUDA present), else AdamW."""
    if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes"):
        return "adamw_bnb_8bit"
    return "adamw_torch"


def random_examples(n: int, length: int, vocab: int, seed: int = 0):
    """``n`` training examples of exactly ``length`` random regular token ids, every token trained."""
    from segattr_utils.llm.training import TrainingExample

    generator = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (length,), generator=generator).tolist()
        examples.append(TrainingExample(input_ids=ids, labels=list(ids)))
    return examples


def sibling_module(name: str):
    """A module of this folder (benchmarks/ is no package), loaded once."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules[name]


def sft_flops_per_step(config: dict, length: int, batch: int) -> float:
    """6·N·tokens + attention, as benchmarks/gpu_hours.py counts SFT (so the two compare)."""
    gpu_hours = sibling_module("gpu_hours")
    shape = gpu_hours.ModelShape(
        "student",
        config["hidden_size"],
        config["intermediate_size"],
        config["num_hidden_layers"],
        config["num_attention_heads"],
        config["num_key_value_heads"],
        config["vocab_size"],
        head_dim=config["hidden_size"] // config["num_attention_heads"],
    )
    return batch * 3 * gpu_hours.forward_flops(shape, length)


@check("sft_16k", full_needs=("cuda",))
def check_sft(res: Resources) -> dict:
    """20 optimizer steps of the 1.5B (random weights) on 16k-token sequences, batch 2,
    float32 master weights under bf16 autocast (TrainSettings' default precision), gradient checkpointing,
    through ``segattr_utils.llm.training.train_sft`` (TRL's SFTTrainer): peak memory, seconds per step and the
    achieved FLOP/s (compare with gpu_hours.py's SFT assumption)."""
    from segattr_utils.llm.training import TrainSettings, train_sft

    shapes, cuda = res.shapes, torch.cuda.is_available()
    batch, optim = 2, sft_optimizer()
    model = random_causal_lm(shapes.student, shapes.dtype if cuda else torch.float32, device_name(), res.tokenizer())
    examples = random_examples(batch * shapes.sft_steps, shapes.sft_length, len(res.tokenizer()) - 8)
    settings = TrainSettings(
        epochs=1,
        learning_rate=3e-5,
        batch_size=batch,
        max_length=shapes.sft_length,
        bf16=cuda,
        gradient_checkpointing=True,
        optim=optim,
        save_strategy="no",
        logging_steps=5,
    )
    reset_peak_memory()
    summary = train_sft(model, res.tokenizer(), examples, settings, res.workdir / "sft", seed=0)
    seconds_per_step = summary["train_runtime"] / max(summary["steps"], 1)
    flops = sft_flops_per_step(shapes.student, shapes.sft_length, batch)
    values = {
        "optimizer": optim,
        "steps": summary["steps"],
        "sequence_tokens": shapes.sft_length,
        "batch": batch,
        "peak_gib": peak_memory_gib(),
        "seconds_per_step": round(seconds_per_step, 3),
        "achieved_tflops_6n": round(flops / seconds_per_step / 1e12, 3),
        "mean_train_loss": summary["mean_train_loss"],
    }
    del model
    values["passed"] = summary["steps"] == shapes.sft_steps and bool(
        torch.isfinite(torch.tensor(values["mean_train_loss"]))
    )
    return values


@check("sft_fp32_master", full_needs=("cuda",))
def check_sft_fp32_master(res: Resources) -> dict:
    """One optimizer step of the 1.5B (random weights, built in bf16 as the hub's checkpoint is) through
    ``train_sft`` with paper.yaml's ``training.sft`` (one sequence, a constant lr of 3e-5): the weights
    train as float32 master weights, a decoder layer's matrix products run under bf16 autocast (on CUDA;
    the CPU trains without autocast), the step moves every weight that got a gradient, and the share of
    those updates that bf16 weights would have lost (``bf16(w + update) == w``) is reported."""
    from segattr_utils.config import load_profile
    from segattr_utils.llm.training import TrainSettings, train_sft
    from segattr_utils.stages.stage08_selective_sft import schedule

    shapes, cuda = res.shapes, torch.cuda.is_available()
    (paper,) = schedule(load_profile("paper"))
    settings = TrainSettings.from_dict(
        {
            **vars(paper),
            "epochs": 1,
            "stop_after_epoch": None,
            "batch_size": 1,
            "warmup_ratio": 0.0,
            "lr_scheduler_type": "constant",
            "max_length": shapes.sft_master_length,
            "bf16": paper.bf16 and cuda,  # the CPU: float32 without autocast
            "optim": sft_optimizer(),
            "save_strategy": "no",
        }
    )
    model = random_causal_lm(shapes.student, torch.bfloat16, device_name(), res.tokenizer())
    before = {name: p.detach().clone() for name, p in model.named_parameters()}  # bf16: exact as float32
    seen = []
    hook = model.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda module, args, output: seen.append((str(module.weight.dtype), str(output.dtype)))
    )
    examples = random_examples(1, shapes.sft_master_length, len(res.tokenizer()) - 8)
    try:
        summary = train_sft(model, res.tokenizer(), examples, settings, res.workdir / "sft_fp32_master", seed=0)
    finally:
        hook.remove()
    moved = changed_total = lost = 0
    for name, p in model.named_parameters():
        if name == "model.embed_tokens.weight":  # rows of tokens not in the sequence get no gradient
            continue
        start, now = before[name].float(), p.detach()
        step = now != start
        moved += int(step.sum())
        changed_total += step.numel()
        lost += int((now.bfloat16() == before[name])[step].sum())  # the same update on bf16 weights
    weight_dtypes = sorted({str(p.dtype) for p in model.parameters()})
    autocast = "torch.bfloat16" if settings.bf16 else "torch.float32"
    values = {
        "optimizer": settings.optim,
        "precision": settings.precision,
        "bf16_autocast": settings.bf16,
        "sequence_tokens": shapes.sft_master_length,
        "steps": summary["steps"],
        "weight_dtypes": weight_dtypes,
        "layer0_mlp_weight_and_output_dtype": sorted(set(seen)),
        "moved_share": round(moved / changed_total, 4),
        "lost_in_bf16_share": round(lost / max(moved, 1), 4),
        "loss": summary["mean_train_loss"],
    }
    del model, before
    values["passed"] = (
        summary["steps"] == 1
        and weight_dtypes == ["torch.float32"]
        and set(seen) == {("torch.float32", autocast)}
        and values["moved_share"] > 0.9
        and bool(torch.isfinite(torch.tensor(values["loss"])))
    )
    return values


# ---------------------------------------------------------------------------------------------
# 8. IG memory


@check("ig_memory", full_needs=("cuda",))
def check_ig_memory(res: Resources) -> dict:
    """``token_attributions`` (Eq. 2) with one path point per forward/backward pass
    (``internal_batch_size=1``) on the 7B config cut to 2 layers, at L = 2k and 4k (bf16): peak memory
    and seconds, for the memory estimator (:mod:`segattr_utils.method.ig_cost`). The engine needs J >= 2, so two points run; the
    peak is one point's, and seconds per point include half of the two no-grad passes F(x), F(x')."""
    from segattr_utils.method.attribution import token_attributions

    config = dict(res.shapes.generator, num_hidden_layers=2)
    cuda = torch.cuda.is_available()
    model = random_causal_lm(config, res.shapes.dtype if cuda else torch.float32, device_name())
    weights_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / GIB
    values: dict = {"layers": 2, "weights_gib": round(weights_gib, 2)}
    finite = True
    generator = torch.Generator().manual_seed(0)
    for length in res.shapes.ig_lengths:
        ids = torch.randint(0, config["vocab_size"] - 1, (length,), generator=generator)  # the last id is the baseline
        reset_peak_memory()
        started = time.perf_counter()
        result = token_attributions(
            model,
            ids,
            (length - 3, length),
            baseline_token_id=config["vocab_size"] - 1,
            n_steps=2,
            method="gausslegendre",
            internal_batch_size=1,
        )
        synchronize()
        values[f"L{length}_s_per_point"] = round((time.perf_counter() - started) / 2, 3)
        peak = peak_memory_gib()
        values[f"L{length}_peak_gib"] = peak
        values[f"L{length}_peak_above_weights_gib"] = None if peak is None else round(peak - weights_gib, 2)
        finite &= bool(torch.isfinite(result.values).all())
    del model
    values["passed"] = finite
    return values


# ---------------------------------------------------------------------------------------------
# segattr score of a long trace, planned for the GPU


def long_r1_output(tokenizer, n_tokens: int) -> str:
    """An R1-format output (``<think>``, segments opened by transition words, ``</think>``, a boxed answer)
    of about ``n_tokens`` tokens under ``tokenizer``."""
    paragraphs = [
        "Okay, let me compute 17 * 23 step by step.",
        "Wait, 17 * 20 = 340 and 17 * 3 = 51, so 340 + 51 = 391.",
        "Alternatively, 23 * 17 = 23 * 10 + 23 * 7 = 230 + 161 = 391.",
        "Hmm, let me double-check by subtracting: 391 - 340 = 51, and 51 / 17 = 3.",
    ]
    body, length, i = [], 0, 0
    while length < n_tokens:
        paragraph = paragraphs[i % len(paragraphs)]
        body.append(paragraph if i == 0 else "\n\n" + paragraph)
        length += len(tokenizer(body[-1], add_special_tokens=False)["input_ids"])
        i += 1
    return "<think>\n" + "".join(body) + "\n</think>\n\nSo the product is \\boxed{391}."


@check("score_long_trace", full_needs=("cuda",))
def check_score_long_trace(res: Resources) -> dict:
    """``score_trace`` (what ``segattr score`` runs per trace) of a 16k-token trace on the 7B config (28
    layers, random bf16 weights) with ``internal_batch_size`` and ``activation_checkpointing`` ``auto``: one
    plain path point needs ~85 GiB at this length, so the planner must checkpoint; the trace is scored, not
    skipped, the settings it ran with are recorded, and the peak memory is compared with the estimator's.
    ``--quick``: the quick 7B shapes at 512 tokens with a memory budget of half a plain point, which must
    also make the planner checkpoint."""
    from segattr_utils.method.ig_cost import estimate_ig_cost
    from segattr_utils.scored_trace import score_trace

    cuda = torch.cuda.is_available()
    tokenizer = res.tokenizer()
    length = 512 if res.quick else 16384
    config = dict(res.shapes.generator)
    dtype = res.shapes.dtype if cuda else torch.float32
    model = random_causal_lm(config, dtype, device_name(), tokenizer)
    output = long_r1_output(tokenizer, length)
    plain = estimate_ig_cost(model.config, length, points_per_chunk=1, activation_checkpointing=False, dtype=dtype)
    checkpointed = estimate_ig_cost(
        model.config, length, points_per_chunk=1, activation_checkpointing=True, dtype=dtype
    )
    budget = plain.working_bytes / 2 / GIB if res.quick else None
    reset_peak_memory()
    started = time.perf_counter()
    scored = score_trace(
        model,
        tokenizer,
        "What is 17 * 23?",
        output,
        "391",
        n_steps=4,
        internal_batch_size="auto",
        activation_checkpointing="auto",
        memory_budget_gb=budget,
        warn_relative_delta=None,
    )
    synchronize()
    peak = peak_memory_gib()
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / GIB
    settings = scored.settings
    values = {
        "n_tokens": scored.n_tokens,
        "segments": scored.n_segments,
        "internal_batch_size": settings["internal_batch_size"],
        "activation_checkpointing": settings["activation_checkpointing"],
        "out_of_memory_retries": settings["out_of_memory_retries"],
        "plain_point_predicted_gib": round(plain.working_bytes / GIB, 2),
        "checkpointed_point_predicted_gib": round(checkpointed.working_bytes / GIB, 2),
        "peak_above_weights_gib": None if peak is None else round(peak - weights, 2),
        "seconds": round(time.perf_counter() - started, 1),
        "relative_delta": scored.relative_delta,
    }
    finite = all(math.isfinite(v) for segment in scored.token_attributions for v in segment)
    values["passed"] = bool(settings["activation_checkpointing"]) and finite and scored.n_tokens >= length
    del model
    return values


# ---------------------------------------------------------------------------------------------
# A chunked vLLM stage resumed after a killed worker


@check("vllm_chunked_resume", needs=("cuda", "vllm"))
def check_vllm_chunked_resume(res: Resources) -> dict:
    """The stages' chunked generation (``run_generation_tasks``) over two data parallel workers with chunks
    of 8 requests (128 requests): one worker is killed (SIGKILL) once the first chunk is stored. Every chunk stored before
    the failure stays; a resume with fresh workers sends only the missing requests and ends with every
    record. Sampled texts need not equal an uninterrupted run's (vLLM is not batch invariant by default)."""
    from segattr_utils.artifacts import RecordStore
    from segattr_utils.llm.generation import GenerationTask, SamplingSettings, VLLMGenerator, run_generation_tasks
    from segattr_utils.llm.vllm_parallel import Devices, visible_devices
    from segattr_utils.llm.vllm_worker import WorkerError

    visible = visible_devices()
    ids = visible.ids or ("0",)
    groups = ids[:2] if len(ids) >= 2 else (ids[0], ids[0])
    engine = {k: v for k, v in engine_profile().get_path("generation.vllm").items() if k != "data_parallel_size"}
    engine = {k: v for k, v in engine.items() if k != "batch_invariant"} | {"tensor_parallel_size": 1}
    if len(set(groups)) == 1:
        engine["gpu_memory_utilization"] = 0.4  # two engines share the GPU
    folder, tokenizer = res.student_folder(), res.tokenizer()
    prompts = dict(enumerate(question_prompts(tokenizer, 64)))  # 8 chunks per worker: some still to run
    sampled = SamplingSettings(temperature=0.6, top_p=1.0, max_new_tokens=res.shapes.vllm_max_tokens)
    tasks = [GenerationTask("sample", {str(k): v for k, v in prompts.items()}, 2, sampled)]
    total = 2 * len(prompts)
    store = RecordStore(res.workdir / "chunked.jsonl")

    def generator() -> VLLMGenerator:
        return VLLMGenerator(
            str(folder),
            dtype="bfloat16",
            tokenizer=tokenizer,
            devices=Devices(tuple(groups), visible.memory_bytes),
            chunk_requests=8,
            data_parallel_size=2,
            **engine,
        )

    first = generator()
    append = store.append

    def kill_after_first_chunk(records):
        append(records)
        victim = first.workers.workers[1].process
        if victim.poll() is None:
            victim.kill()

    store.append = kill_after_first_chunk
    failed = None
    try:
        run_generation_tasks(first, tasks, store, batch_size=8, seed=0)
    except WorkerError as error:
        failed = str(error).splitlines()[0]
    finally:
        first.close()
    kept = len(RecordStore(store.path).records())
    resumed = RecordStore(store.path)
    second = generator()
    try:
        run_generation_tasks(second, tasks, resumed, batch_size=8, seed=0)
    finally:
        second.close()
    keys = [tuple(r["key"]) for r in resumed.records()]
    values = {
        "requests": total,
        "worker_error": failed,
        "records_kept_after_kill": kept,
        "records_after_resume": len(keys),
        "distinct_keys": len(set(keys)),
    }
    values["passed"] = failed is not None and 8 <= kept < total and len(keys) == len(set(keys)) == total
    return values


# ---------------------------------------------------------------------------------------------
# Running and reporting


def run_check(item: Check, res: Resources) -> dict:
    """One row; a missing requirement skips, an exception fails, and neither stops the run."""
    row = {"check": item.name, "status": None, "passed": None, "values": {}, "seconds": 0.0, "error": None}
    reasons = [r for r in map(missing_requirement, item.requirements(res.quick)) if r]
    if reasons:
        return {**row, "status": "skipped", "error": "; ".join(reasons)}
    started = time.perf_counter()
    try:
        values = item.function(res)
        passed = bool(values.pop("passed"))
        row.update(status="passed" if passed else "failed", passed=passed, values=values)
    except Skip as reason:
        row.update(status="skipped", error=str(reason))
    except Exception as error:
        row.update(
            status="failed", passed=False, error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc()
        )
    finally:
        release_memory()
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


def run_checks(
    names: Iterable[str] | None = None,
    quick: bool = False,
    workdir: Path | None = None,
    registry: list[Check] | None = None,
) -> list[dict]:
    """Run the registry's checks (or those ``names``) in order; one row each."""
    registry = REGISTRY if registry is None else registry
    names = list(names or [])
    unknown = set(names) - {c.name for c in registry}
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; choose from {[c.name for c in registry]}")
    selected = [c for c in registry if not names or c.name in names]
    with tempfile.TemporaryDirectory(prefix="gpu_checks_") as tmp:
        res = Resources(quick=quick, workdir=Path(workdir or tmp))
        rows = []
        try:
            for item in selected:
                if not item.uses_engine:
                    res.close_engine()  # the next check needs the GPU memory
                rows.append(run_check(item, res))
        finally:
            res.close_engine()
    return rows


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items() if v is not None) + "}"
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def markdown_table(rows: list[dict]) -> str:
    lines = ["| check | status | seconds | measured | error / reason |", "|---|---|---:|---|---|"]
    for row in rows:
        measured = "; ".join(f"{k} = {_short(v)}" for k, v in row["values"].items() if k not in ("pip_check",))
        error = (row["error"] or "").replace("|", "\\|").replace("\n", " ")
        lines.append(
            f"| {row['check']} | {row['status']} | {row['seconds']} | {measured.replace('|', '/')} | {error} |"
        )
    return "\n".join(lines)


def write_results(rows: list[dict], out: Path, quick: bool) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "quick": quick,
        "host": platform.node(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out.write_text(json.dumps({**header, "rows": rows}, indent=2, default=str) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown_table(rows) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/gpu_checks.json")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=[c.name for c in REGISTRY])
    parser.add_argument("--quick", action="store_true", help="CPU-sized shapes; CUDA-only checks are skipped")
    parser.add_argument("--workdir", default=None, help="keep the saved random model here (default: a temp folder)")
    args = parser.parse_args(argv)
    rows = run_checks(args.only, quick=args.quick, workdir=Path(args.workdir) if args.workdir else None)
    out = Path(args.out)
    write_results(rows, out, args.quick)
    print(markdown_table(rows))
    print(f"\nwritten: {out} and {out.with_suffix('.md')}")
    return 0 if all(row["status"] != "failed" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
