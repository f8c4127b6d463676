"""Sampling reasoning traces (Sec. 3 setup, Sec. 4.1): batched Hugging Face ``generate``, or vLLM
when it is installed and the profile asks for it.

Generation is organised in fixed batches of (question, sample) jobs; each batch is seeded from the
run seed and its index, so a resumed run regenerates exactly the batches it had not finished, with
the same results as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..artifacts import RecordStore
from ..progress import progress


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


def left_padded_batch(tokenizer, prompts: Sequence[str], device) -> dict:
    """Prompts tokenised as one left-padded batch (the generated tokens then line up on the right), on
    ``device``; the tokenizer's own padding side is left as it was."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    return {k: v.to(device) for k, v in batch.items()}


class HFGenerator:
    """Batched sampling with ``model.generate`` (left padding, one seed per batch)."""

    name = "hf"

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], settings: SamplingSettings, seed: int) -> list[dict]:
        tokenizer = self.tokenizer
        batch = left_padded_batch(tokenizer, prompts, next(self.model.parameters()).device)
        torch.manual_seed(seed)
        kwargs = dict(
            max_new_tokens=settings.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
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
            output = self.model.generate(**batch, **kwargs)
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


class VLLMGenerator:
    """Sampling with vLLM (paper profile on GPUs). Loaded lazily: vLLM is optional."""

    name = "vllm"

    def __init__(self, model_path: str, dtype: str = "bfloat16", **engine_kwargs):
        if not vllm_available():
            raise ImportError("vLLM is not installed; install it on a GPU machine or use the 'hf' backend")
        from vllm import LLM

        self.llm = LLM(model=model_path, dtype=dtype, **engine_kwargs)

    def generate(self, prompts: Sequence[str], settings: SamplingSettings, seed: int) -> list[dict]:
        from vllm import SamplingParams

        params = SamplingParams(
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_tokens=settings.max_new_tokens,
            repetition_penalty=settings.repetition_penalty,
            seed=seed,
        )
        outputs = self.llm.generate(list(prompts), params, use_tqdm=False)
        results = []
        for out in outputs:
            completion = out.outputs[0]
            results.append(
                {
                    "text": completion.text,
                    "n_tokens": len(completion.token_ids),
                    "finished": completion.finish_reason == "stop",
                }
            )
        return results


def make_generator(backend: str, model=None, tokenizer=None, model_path: str | None = None, **kwargs):
    """``backend``: "hf", "vllm" or "auto" (vLLM when installed and a model path is known, else HF)."""
    if backend == "auto":
        backend = "vllm" if vllm_available() and model_path else "hf"
    if backend == "vllm":
        return VLLMGenerator(model_path, **kwargs)
    if backend == "hf":
        if model is None or tokenizer is None:
            raise ValueError("the 'hf' backend needs a loaded model and tokenizer")
        return HFGenerator(model, tokenizer)
    raise ValueError(f"unknown generation backend {backend!r}; use 'hf', 'vllm' or 'auto'")


def sample_jobs(question_ids: Sequence[str], n_samples: int) -> list[tuple[str, int]]:
    """All (question id, sample index) jobs, question-major."""
    return [(qid, s) for qid in question_ids for s in range(n_samples)]


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
    """Generate ``n_samples`` completions for every prompt into ``store`` (resumable).

    Records: ``{"key": [question_id, tag, sample], "question_id", "sample", "tag", "text",
    "n_tokens", "finished"}``. Batches are fixed by job order; a batch is skipped when all of its
    records exist and otherwise regenerated whole, with the seed ``derive_seed(seed, tag, index)``.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    jobs = sample_jobs(list(prompts), n_samples)
    batches = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
    todo = [(i, b) for i, b in enumerate(batches) if not all([qid, tag, s] in store for qid, s in b)]
    for index, batch in progress(todo, desc=f"generate[{tag}]", unit="batch"):
        outputs = generator.generate([prompts[qid] for qid, _ in batch], settings, derive_seed(seed, tag, index))
        records = []
        for (qid, sample), out in zip(batch, outputs):
            if [qid, tag, sample] in store:
                continue
            records.append(
                {"key": [qid, tag, sample], "question_id": qid, "sample": sample, "tag": tag, **out, **(extra or {})}
            )
        store.append(records)
