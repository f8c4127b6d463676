"""A CPU stand-in for the parts of vLLM the project calls (tests only; ``tests/conftest.py`` puts this folder
first on ``sys.path`` through the ``fake_vllm`` fixture).

It mirrors vLLM's API: ``LLM(model=..., dtype=..., **engine_kwargs)``, ``LLM.generate(prompts,
sampling_params, use_tqdm=..., tokenization_kwargs=...)`` with one ``SamplingParams`` for all prompts or one per
prompt, returning one ``RequestOutput`` per prompt whose ``outputs[0]`` has ``text``, ``token_ids`` and
``finish_reason``; ``LLM.llm_engine.engine_core.shutdown()`` as in vLLM's V1 engine. ``SamplingParams(ignore_eos=True)``
runs every request to ``max_tokens``.

Prompts take vLLM 0.30.0's forms (``vllm.inputs.llm``, ``parse_dec_only_prompt``): a string or
``{"prompt": text}`` (a text prompt), a list of ids or ``{"prompt_token_ids": ids}`` (a token prompt, optionally
with its ``"prompt"`` text). ``RequestOutput.prompt_token_ids`` is the prompt as vLLM 0.30.0 sees it: a token
prompt's ids as given; a text prompt tokenised with the model folder's ``AutoTokenizer`` and
``add_special_tokens=True`` unless ``tokenization_kwargs`` says otherwise (``BaseRenderer.default_cmpl_tok_params``),
None when the folder holds no tokenizer (e.g. a hub id). As vLLM, a prompt longer than ``max_model_len`` raises
``ValueError``. A completion depends on the prompt's text (a token prompt without text: its decoded ids): like
real vLLM, a request with a seed is sampled from a generator seeded with that seed alone, so its text is a pure
function of (prompt, seed, temperature, max_tokens), and two requests with the same prompt and seed give the same
sample. A request without a seed draws from the process-wide random state.

Module state records what happened: ``ENGINES`` (every LLM built, in order), and each engine's ``calls``
(one ``(prompt texts, params)`` pair per ``generate``), ``prompt_token_ids`` (the ids of every request, one
list per ``generate``), ``alive_at_start`` (engines not shut down when it was built) and
``llm_engine.engine_core.shutdown_calls``. When ``FAKE_VLLM_LOG`` names a file, every engine start (with
``CUDA_VISIBLE_DEVICES``), ``generate`` call and shutdown is also appended to it as one JSON line, so that a test
can see what other processes (notebook kernels, data parallel workers) did with vLLM. Each engine also records
``environment``: the value of ``VLLM_BATCH_INVARIANT`` when it was built (None when unset), also in its start event.

Failures on demand, to test what a crash leaves behind: with ``FAKE_VLLM_FAIL_AFTER_CALLS=N`` an engine's
``generate`` raises ``RuntimeError`` once this process's engines have answered N calls; with
``FAKE_VLLM_KILL_ON=text`` a ``generate`` call holding a prompt that contains ``text`` kills its own process with
SIGKILL (no cleanup, no output: as a node losing a worker).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path

ENGINES: list[LLM] = []
#: ``generate`` calls answered by this process's engines (for ``FAKE_VLLM_FAIL_AFTER_CALLS``).
ANSWERED: list[int] = [0]


def _log(event: str, engine: LLM, **fields) -> None:
    path = os.environ.get("FAKE_VLLM_LOG")
    if path:
        record = {"event": event, "pid": os.getpid(), "engine": id(engine), "model": engine.model, **fields}
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def reset() -> None:
    ENGINES.clear()
    ANSWERED[0] = 0
    from .distributed import parallel_state

    parallel_state.CALLS.clear()


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = 16
    repetition_penalty: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str
    outputs: list[CompletionOutput] = field(default_factory=list)
    prompt_token_ids: list[int] | None = None


class _EngineCore:
    def __init__(self, owner=None):
        self.shutdown_calls = 0
        self.owner = owner

    def shutdown(self) -> None:
        self.shutdown_calls += 1
        if self.owner is not None:
            _log("shutdown", self.owner)


class _LLMEngine:
    def __init__(self, owner=None):
        self.engine_core = _EngineCore(owner)


#: The dtypes vLLM's ``ModelConfig`` accepts (``_STR_DTYPE_TO_TORCH_DTYPE``).
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")


class LLM:
    def __init__(self, model: str, dtype: str = "auto", **engine_kwargs):
        if dtype not in DTYPES:
            raise ValueError(f"Unknown dtype: {dtype!r}")
        self.model, self.dtype, self.engine_kwargs = model, dtype, engine_kwargs
        self.llm_engine = _LLMEngine(self)
        self.calls: list[tuple[list[str], list[SamplingParams]]] = []
        self.prompt_token_ids: list[list[list[int] | None]] = []
        # engines alive when this one started (real vLLM would find their GPU memory taken)
        self.alive_at_start = sum(engine.llm_engine.engine_core.shutdown_calls == 0 for engine in ENGINES)
        self._tokenizer = None
        self.environment = os.environ.get("VLLM_BATCH_INVARIANT")
        ENGINES.append(self)
        _log(
            "start",
            self,
            dtype=dtype,
            engine_kwargs=engine_kwargs,
            cuda_visible_devices=_visible_devices(),
            vllm_batch_invariant=self.environment,
        )

    def _get_tokenizer(self):
        """The model folder's ``AutoTokenizer``, as vLLM loads it (None without a tokenizer.json)."""
        if self._tokenizer is None and (Path(self.model) / "tokenizer.json").is_file():
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model)
        return self._tokenizer

    def _parse(self, prompt, add_special_tokens: bool) -> tuple[str, list[int] | None]:
        """(text the completion depends on, prompt ids the engine sees) of one prompt in any vLLM form."""
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                ids = list(prompt["prompt_token_ids"])
                return prompt.get("prompt") or self._decode(ids), ids
            if not isinstance(prompt.get("prompt"), str):
                raise TypeError("Prompt dictionary must contain text, tokens, or embeddings")
            prompt = prompt["prompt"]
        if isinstance(prompt, list):
            if not all(isinstance(t, int) for t in prompt):
                raise TypeError("Token prompt should be a list of integers")
            return self._decode(prompt), list(prompt)
        if not isinstance(prompt, str):
            raise TypeError("Prompt should be a string, list of tokens, or dictionary")
        tokenizer = self._get_tokenizer()
        if tokenizer is None:
            return prompt, None
        return prompt, list(tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])

    def _decode(self, ids: list[int]) -> str:
        tokenizer = self._get_tokenizer()
        return " ".join(map(str, ids)) if tokenizer is None else tokenizer.decode(ids)

    def generate(self, prompts, sampling_params=None, use_tqdm=True, tokenization_kwargs=None):
        single = isinstance(prompts, (str, dict)) or (bool(prompts) and all(isinstance(t, int) for t in prompts))
        prompts = [prompts] if single else list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError("the lengths of prompts and sampling_params must be the same")
        add_special_tokens = (tokenization_kwargs or {}).get("add_special_tokens", True)
        parsed = [self._parse(p, add_special_tokens) for p in prompts]
        limit = self.engine_kwargs.get("max_model_len")
        for _, ids in parsed:
            if limit is not None and ids is not None and len(ids) > limit:
                raise ValueError(
                    f"The decoder prompt (length {len(ids)}) is longer than the maximum model length of {limit}."
                )
        texts = [text for text, _ in parsed]
        fail_after = os.environ.get("FAKE_VLLM_FAIL_AFTER_CALLS")
        if fail_after is not None and ANSWERED[0] >= int(fail_after):
            raise RuntimeError(f"fake engine failure after {ANSWERED[0]} calls")
        kill_on = os.environ.get("FAKE_VLLM_KILL_ON")
        if kill_on and any(kill_on in text for text in texts):
            os.kill(os.getpid(), signal.SIGKILL)
        ANSWERED[0] += 1
        self.calls.append((texts, list(sampling_params)))
        self.prompt_token_ids.append([ids for _, ids in parsed])
        _log(
            "generate",
            self,
            requests=[
                {"prompt": hashlib.sha256(p.encode()).hexdigest()[:16], "seed": q.seed, "temperature": q.temperature}
                for p, q in zip(texts, sampling_params)
            ],
        )
        return [
            RequestOutput(str(i), text, [_complete(text, params)], ids)
            for i, ((text, ids), params) in enumerate(zip(parsed, sampling_params))
        ]


def _visible_devices() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")


#: Sentences of the fake reasoning: the first opens the trace, the others start with the paper's
#: transition words, so the traces have several segments (Sec. 2.1).
OPENINGS = ("Okay, let me work through this.", "First, I restate the problem.", "Let me compute step by step.")
CONTINUATIONS = (
    "\n\nWait, let me check that again.",
    "\n\nAlternatively, I can verify it another way.",
    "\n\nHmm, that seems consistent.",
    "\n\nBut wait, maybe I made an arithmetic slip.",
    "\n\nAnother approach gives the same value.",
)


def _complete(prompt: str, params: SamplingParams) -> CompletionOutput:
    """A sample that depends on (prompt, seed, temperature, max_tokens) alone: an R1-style trace of 1-4
    segments and a boxed answer (a letter when the prompt lists options "(A)"..., else 0-3); after a
    prompt ending in an open ``\\boxed{`` (a forced answer) only the answer and its closing brace."""
    if params.temperature == 0:
        draw = "greedy"
    elif params.seed is None:
        draw = str(random.random())
    else:
        draw = f"seed={params.seed}"
    digest = hashlib.sha256(f"{prompt}|{draw}|{params.temperature}|{params.max_tokens}".encode()).hexdigest()
    n_tokens = min(int(digest[:4], 16) % 12 + 1, params.max_tokens or 16)
    finished = int(digest[4], 16) % 4 != 0
    answer = "ABCD"[int(digest[13], 16) % 4] if "(A)" in prompt else str(int(digest[13], 16) % 4)
    if prompt.endswith("\\boxed{"):
        return CompletionOutput(0, answer + "}", [0, 1], "stop")
    segments = [OPENINGS[int(digest[6], 16) % len(OPENINGS)], f" Think {digest[5:13]}."]
    segments += [CONTINUATIONS[int(digest[14 + i], 16) % len(CONTINUATIONS)] for i in range(int(digest[7], 16) % 4)]
    text = "".join(segments) + f"\n</think>\n\nThe final answer is \\boxed{{{answer}}}."
    if params.ignore_eos:
        n_tokens, finished = params.max_tokens or 16, False
    return CompletionOutput(0, text, list(range(n_tokens)), "stop" if finished else "length")
