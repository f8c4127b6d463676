"""Sampling reasoning traces (Sec. 3 setup, Sec. 4.1): batched Hugging Face ``generate``, or vLLM
when it is installed and the profile asks for it.

Every (question, sample) job has a seed derived from the run seed, and finished records go to a record
store, so a resumed run generates only the records it lacks:

- Hugging Face: fixed batches of jobs, each batch seeded from the run seed and its index (the rows of a
  batch are independent draws from one torch generator).
- vLLM: the missing jobs of a stage go to the engine in chunks of ``generation.vllm_chunk_requests``
  requests per engine (:func:`~segattr_utils.llm.vllm_requests.chunk_groups`), and each finished chunk's records are appended to the
  store at once, so a crash loses at most the chunks in flight. Each request carries its own seed
  ``derive_seed(seed, tag, question_id, sample)``: vLLM seeds one generator per request from
  ``SamplingParams.seed``, so the K copies of a prompt under one shared seed would be K identical
  samples. Prompts go to vLLM as token ids encoded as the HF paths encode them (one BOS); with
  ``generation.vllm.data_parallel_size`` > 1 the chunks are spread over one engine per GPU group
  (:mod:`segattr_utils.llm.vllm_parallel`, :mod:`segattr_utils.llm.vllm_worker`).

What is reproduced, and how exactly:

- Hugging Face backend: bitwise on one machine (same hardware, library versions and batch size): a
  resumed run regenerates the missing batches whole, with their seeds, and gets the records of an
  uninterrupted run.
- vLLM with ``generation.vllm.batch_invariant: true`` (sets ``VLLM_BATCH_INVARIANT=1`` for the engine
  processes before vLLM starts): a request's logits no longer depend on which other requests share its
  batch, so with the per-request seeds a resumed run, another chunk size or another data parallel split
  gives the same records, on the same GPU type with the same vLLM version. vLLM documents batch invariant
  mode as slower than its default kernels; the cost is not measured here.
- vLLM by default: the logits of a request depend (in their last bits) on the batch it was scheduled
  with, which the chunk size, the data parallel split, the set of missing requests and the engine's
  timing all change. A resumed or differently split run then gives other samples from the same
  distribution: equal in distribution (statistically), not in bytes. The per-request seeds still make
  the K samples of a prompt independent draws.

Cost of the per-request seeds: vLLM draws the noise of every seeded sampled request with that request's
own ``torch.Generator``, one call per request per decoding step in a Python loop of its sampler, which is
slower than one batched draw for unseeded requests (not measured here). Greedy requests (temperature 0)
are sampled greedily whatever their seed and skip that loop. The project keeps one seed per sampled
request all the same: without them no vLLM run could be repeated at all, not even with batch invariance.

Host memory: vLLM's engine keeps each request's prompt ids twice (``vllm/v1/request.py``:
``prompt_token_ids`` and the ``_all_token_ids`` copy), as Python lists of ints decoded per request:
about 2 x 8 bytes of list slots + 28 bytes of int object = ~44 bytes per prompt token per request
(an estimate from CPython object sizes, not measured). Only one chunk per engine is inside an engine at
a time, so an engine holds about ``44 x mean prompt tokens x vllm_chunk_requests`` bytes of prompt ids
(see :mod:`segattr_utils.stages.stage04_confidence_delta` for that stage's numbers).
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..artifacts import RecordStore
from ..progress import progress
from .vllm_requests import (
    DEFAULT_CHUNK_REQUESTS,
    check_chunk_requests,
    chunk_groups,
    group_requests,
    prompt_token_ids,
    run_groups,
    shutdown_engine,
)


@dataclass(frozen=True)
class SamplingSettings:
    """Decoding settings; ``temperature == 0`` means greedy."""

    temperature: float = 0.6
    top_p: float = 1.0
    max_new_tokens: int = 512
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be positive, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def derive_seed(*parts) -> int:
    """A 31-bit seed from any parts (stable across processes, unlike ``hash``)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


#: The environment variable that switches vLLM to batch invariant kernels.
BATCH_INVARIANT_ENV = "VLLM_BATCH_INVARIANT"


def check_batch_invariant(value) -> bool:
    """``generation.vllm.batch_invariant`` as a bool, or a one-line ``ValueError``."""
    if not isinstance(value, bool):
        raise ValueError(f"generation.vllm.batch_invariant must be true or false, got {value!r}")
    return value


def engine_environment(batch_invariant: bool) -> dict[str, str]:
    """The variables the engine processes need before vLLM is imported: ``VLLM_BATCH_INVARIANT=1`` with
    ``batch_invariant``, else nothing (the caller's environment is left as it is)."""
    return {BATCH_INVARIANT_ENV: "1"} if batch_invariant else {}


def release_gpu_memory() -> None:
    """Collect garbage and return PyTorch's cached CUDA memory to the device."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def pad_token_id(tokenizer) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its EOS (Llama-3.1 has no pad token; the
    attention mask hides the padding either way)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token: batches cannot be padded")
    return int(pad)


def left_padded_batch(tokenizer, prompts: Sequence[str], device) -> dict:
    """Prompts tokenised as one left-padded batch (the generated tokens then line up on the right) with
    :func:`pad_token_id`, on ``device``; the tokenizer's own padding side and pad token are left as they were."""
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if pad is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_token_id(tokenizer))
    try:
        batch = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = None
    return {k: v.to(device) for k, v in batch.items()}


class HFGenerator:
    """Batched sampling with ``model.generate`` (left padding, one seed per batch)."""

    name = "hf"
    per_request_seeds = False

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[str], settings: SamplingSettings, seed: int, stopping_criteria=None
    ) -> list[dict]:
        """``stopping_criteria``: ``model.generate``'s (a row it stops is padded after its last token)."""
        tokenizer = self.tokenizer
        batch = left_padded_batch(tokenizer, prompts, next(self.model.parameters()).device)
        torch.manual_seed(seed)
        kwargs = dict(
            max_new_tokens=settings.max_new_tokens,
            pad_token_id=pad_token_id(tokenizer),
            eos_token_id=tokenizer.eos_token_id,
            repetition_penalty=settings.repetition_penalty,
        )
        if settings.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=0)
        was_training = self.model.training
        self.model.eval()
        try:
            output = self.model.generate(**batch, **kwargs, stopping_criteria=stopping_criteria)
        finally:
            self.model.train(was_training)
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        results = []
        for row in new_tokens:
            ids = row.tolist()
            finished = tokenizer.eos_token_id in ids
            if finished:
                ids = ids[: ids.index(tokenizer.eos_token_id)]
            results.append(
                {"text": tokenizer.decode(ids, skip_special_tokens=True), "n_tokens": len(ids), "finished": finished}
            )
        return results

    def close(self) -> None:
        """Drop the model and release its GPU memory (the caller's own references keep it alive)."""
        self.model = None
        release_gpu_memory()


def sampling_kwargs(settings: SamplingSettings, seed: int) -> dict:
    """``vllm.SamplingParams`` keyword arguments of one request (JSON-serialisable: they travel to the data
    parallel workers in files)."""
    return {
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_tokens": settings.max_new_tokens,
        "repetition_penalty": settings.repetition_penalty,
        "seed": int(seed),
    }


class VLLMGenerator:
    """Sampling with vLLM (paper profile on GPUs). Loaded lazily: vLLM is optional.

    ``engine_kwargs`` are the profile's ``generation.vllm`` section (tensor_parallel_size,
    data_parallel_size, max_model_len, gpu_memory_utilization, ..., batch_invariant).
    ``tensor_parallel_size`` and ``data_parallel_size`` may be ``auto`` and are resolved for the model and
    ``devices`` (default: the visible GPUs) by :func:`~segattr_utils.llm.vllm_parallel.plan_engines`;
    ``batch_invariant`` (default false) sets ``VLLM_BATCH_INVARIANT=1`` in this process before vLLM is
    imported, or in the workers' environment (:func:`engine_environment`); the rest goes to ``vllm.LLM`` as
    it is. With one engine (DP 1) it runs in this process; with DP > 1 each engine runs in a worker process
    on its own GPUs (:class:`~segattr_utils.llm.vllm_worker.WorkerPool`), since vLLM refuses
    ``data_parallel_size > 1`` in one process. Either way no process holds two engines.

    ``chunk_requests`` (``generation.vllm_chunk_requests``) bounds the requests of one engine call:
    :meth:`generate_chunks` yields the outputs of every finished chunk, so that the caller can store them
    before the next chunk ends. Each chunk ends with the engine draining its last, longest requests at a
    smaller batch: larger chunks waste less of that tail, smaller ones lose less work on a crash and hold
    less host memory (module docstring).

    Prompts are sent as token ids, encoded by ``tokenizer`` (default: the model folder's) exactly as the
    Hugging Face paths encode them (:func:`~segattr_utils.llm.vllm_requests.prompt_token_ids`: one BOS). Every request has its own seed;
    :meth:`close` shuts the engine(s) down so that the next model fits on the GPUs.
    """

    name = "vllm"
    per_request_seeds = True

    def __init__(
        self,
        model_path: str,
        dtype: str = "bfloat16",
        tokenizer=None,
        devices=None,
        chunk_requests: int = DEFAULT_CHUNK_REQUESTS,
        batch_invariant: bool = False,
        **engine_kwargs,
    ):
        self.chunk_requests = check_chunk_requests(chunk_requests)
        self.batch_invariant = check_batch_invariant(batch_invariant)
        if not vllm_available():
            raise ImportError("vLLM is not installed; install it on a GPU machine or use the 'hf' backend")
        from .vllm_parallel import plan_engines, visible_devices

        if tokenizer is None:
            from .models import load_tokenizer

            tokenizer = load_tokenizer(model_path)
        self.tokenizer = tokenizer
        self.plan = plan_engines(
            model_path, dtype, engine_kwargs, devices if devices is not None else visible_devices()
        )
        self.llm = self.workers = None
        environment = engine_environment(self.batch_invariant)
        if self.plan.data_parallel_size == 1:
            # vLLM reads VLLM_BATCH_INVARIANT in this process and in the engine core processes it starts,
            # which inherit this environment: set before the import and the engine's start.
            os.environ.update(environment)
            from vllm import LLM

            self.llm = LLM(model=model_path, dtype=dtype, **self.plan.engine_kwargs)
        else:
            from .vllm_worker import WorkerPool

            self.workers = WorkerPool(
                model_path, dtype, self.plan.engine_kwargs, self.plan.device_groups, environment=environment
            )

    def engine_prompts(self, prompts: Sequence[str]) -> list[dict]:
        """The token prompts :meth:`generate` hands the engine for ``prompts`` (one per prompt)."""
        return [{"prompt_token_ids": prompt_token_ids(self.tokenizer, p), "prompt": p} for p in prompts]

    def generate_chunks(
        self, prompts: Sequence[str], settings: SamplingSettings | Sequence[SamplingSettings], seeds: Sequence[int]
    ) -> Iterator[list[tuple[int, dict]]]:
        """Request ``i`` sampled with ``settings`` (one for all, or one per prompt) and its own seed
        ``seeds[i]``, so copies of a prompt under distinct seeds are independent. Yields, as each chunk
        of at most ``chunk_requests`` requests finishes, its ``(i, {"text", "n_tokens", "finished"})``
        pairs; every request is yielded once.

        One engine: the chunks (:func:`~segattr_utils.llm.vllm_requests.chunk_groups`, in call order) run one after the other. DP > 1:
        the prompt groups are split between the engines and each engine works through its own chunks
        (:meth:`~segattr_utils.llm.vllm_worker.WorkerPool.run_chunks`); a worker that dies loses its
        chunk in flight only: the other workers' chunks are still yielded before the error is raised.
        Without batch invariance a request's output depends on the batch it ran in (module docstring)."""
        if isinstance(settings, SamplingSettings):
            settings = [settings] * len(prompts)
        if not len(prompts) == len(settings) == len(seeds):
            raise ValueError(f"{len(prompts)} prompts, {len(settings)} settings and {len(seeds)} seeds")
        if self.llm is None and self.workers is None:
            raise RuntimeError("this generator is closed")
        groups = group_requests(self.tokenizer, prompts, [sampling_kwargs(s, seed) for s, seed in zip(settings, seeds)])
        if self.workers is not None:
            chunks = self.workers.run_chunks(groups, self.chunk_requests)
        else:
            chunks = (run_groups(self.llm, chunk) for chunk in chunk_groups(groups, self.chunk_requests))
        for outputs in chunks:
            yield [(out["index"], {k: v for k, v in out.items() if k != "index"}) for out in outputs]

    def generate(
        self, prompts: Sequence[str], settings: SamplingSettings | Sequence[SamplingSettings], seeds: Sequence[int]
    ) -> list[dict]:
        """Every output of :meth:`generate_chunks`, in call order (for callers that store nothing
        before the last chunk)."""
        by_index = dict(pair for chunk in self.generate_chunks(prompts, settings, seeds) for pair in chunk)
        return [by_index[i] for i in range(len(prompts))]

    def close(self) -> None:
        """Shut the engine down and free its GPU memory (:func:`~segattr_utils.llm.vllm_requests.shutdown_engine`), or stop the data parallel
        workers (each shuts its engine down and exits, which frees its GPUs). Idempotent."""
        if self.llm is not None:
            llm, self.llm = self.llm, None
            shutdown_engine(llm)
            del llm
            release_gpu_memory()
        if self.workers is not None:
            workers, self.workers = self.workers, None
            workers.close()


def generate_in_chunks(
    generator, prompts: Sequence[str], settings, seeds, desc: str
) -> Iterator[list[tuple[int, dict]]]:
    """``generator.generate_chunks`` with a progress bar of requests (:func:`segattr_utils.progress.progress`:
    updated once per finished chunk; quiet in executed notebooks)."""
    with progress(total=len(prompts), desc=desc, unit="request") as bar:
        for chunk in generator.generate_chunks(prompts, settings, seeds):
            yield chunk
            bar.update(len(chunk))


def make_generator(backend: str, model=None, tokenizer=None, model_path: str | None = None, **kwargs):
    """``backend``: "hf", "vllm" or "auto" (vLLM when installed and a model path is known, else HF)."""
    if backend == "auto":
        backend = "vllm" if vllm_available() and model_path else "hf"
    if backend == "vllm":
        return VLLMGenerator(model_path, tokenizer=tokenizer, **kwargs)
    if backend == "hf":
        if model is None or tokenizer is None:
            raise ValueError("the 'hf' backend needs a loaded model and tokenizer")
        return HFGenerator(model, tokenizer)
    raise ValueError(f"unknown generation backend {backend!r}; use 'hf', 'vllm' or 'auto'")


def sample_jobs(question_ids: Sequence[str], n_samples: int) -> list[tuple[str, int]]:
    """All (question id, sample index) jobs, question-major."""
    return [(qid, s) for qid in question_ids for s in range(n_samples)]


@dataclass(frozen=True)
class GenerationTask:
    """``n_samples`` completions of every prompt (``{question_id: prompt}``) under one record ``tag``,
    decoded with ``settings`` (e.g. stage 01's greedy output and K = 32 samples per question, Sec. 3 setup;
    one benchmark's greedy or sampled answers, Sec. 4.1)."""

    tag: str
    prompts: dict[str, str]
    n_samples: int
    settings: SamplingSettings


def run_generation(
    generator,
    prompts: dict[str, str],
    n_samples: int,
    settings: SamplingSettings,
    store: RecordStore,
    batch_size: int,
    seed: int,
    tag: str,
    extra: dict | None = None,
) -> None:
    """Generate ``n_samples`` completions for every prompt into ``store`` (resumable): one
    :class:`GenerationTask` of :func:`run_generation_tasks`."""
    run_generation_tasks(generator, [GenerationTask(tag, prompts, n_samples, settings)], store, batch_size, seed, extra)


def run_generation_tasks(
    generator,
    tasks: Sequence[GenerationTask],
    store: RecordStore,
    batch_size: int,
    seed: int,
    extra: dict | None = None,
) -> None:
    """Generate every task's records into ``store`` (resumable; a record that exists is never redone).

    Records: ``{"key": [question_id, tag, sample], "question_id", "sample", "tag", "text",
    "n_tokens", "finished"}`` (plus ``extra``).

    - A generator with per-request seeds (vLLM) gets every missing job of every task, job
      ``(question_id, sample)`` of a task seeded with ``derive_seed(seed, tag, question_id, sample)``, and
      runs them in chunks (:meth:`VLLMGenerator.generate_chunks`); the records of each finished chunk are
      appended at once (one ``RecordStore.append``: whole lines, flushed and synced), so an interrupted
      run keeps every finished chunk and a resumed one sends only what is missing. ``batch_size`` is not
      used.
    - Otherwise (Hugging Face) each task in turn is cut into fixed batches of ``batch_size`` jobs (job
      order); a batch is skipped when all of its records exist and otherwise regenerated whole, with
      the seed ``derive_seed(seed, tag, index)``, and appended when it finishes.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")

    def record(task, qid, sample, out):
        return {"key": [qid, task.tag, sample], "question_id": qid, "sample": sample, "tag": task.tag, **out}

    if getattr(generator, "per_request_seeds", False):
        jobs = [
            (task, qid, s)
            for task in tasks
            for qid, s in sample_jobs(list(task.prompts), task.n_samples)
            if [qid, task.tag, s] not in store
        ]
        if jobs:
            tags = ", ".join(dict.fromkeys(task.tag for task, _, _ in jobs))
            for chunk in generate_in_chunks(
                generator,
                [task.prompts[qid] for task, qid, _ in jobs],
                [task.settings for task, _, _ in jobs],
                [derive_seed(seed, task.tag, qid, s) for task, qid, s in jobs],
                desc=f"generate[{tags}]",
            ):
                store.append(
                    [{**record(*jobs[i], out), **(extra or {})} for i, out in sorted(chunk, key=lambda p: p[0])]
                )
        return
    for task in tasks:
        jobs = sample_jobs(list(task.prompts), task.n_samples)
        batches = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
        todo = [(i, b) for i, b in enumerate(batches) if not all([qid, task.tag, s] in store for qid, s in b)]
        for index, batch in progress(todo, desc=f"generate[{task.tag}]", unit="batch"):
            outputs = generator.generate(
                [task.prompts[qid] for qid, _ in batch], task.settings, derive_seed(seed, task.tag, index)
            )
            store.append(
                [
                    {**record(task, qid, sample, out), **(extra or {})}
                    for (qid, sample), out in zip(batch, outputs)
                    if [qid, task.tag, sample] not in store
                ]
            )
