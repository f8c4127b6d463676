"""Evaluation of a model on question suites (Sec. 4.1): greedy accuracy, pass@k with the unbiased
estimator, and mean output tokens; answers graded by the last ``\\boxed{}`` with math-verify.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import comb

import numpy as np
import pandas as pd

from ..artifacts import RecordStore
from .generation import GenerationTask, SamplingSettings, run_generation_tasks, sample_jobs
from .grading import grade


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021): 1 - C(n - c, k) / C(n, k) for c correct of n samples."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def summarise_outputs(graded: pd.DataFrame, ks: Sequence[int] = (1,)) -> dict:
    """Accuracy (mean correctness), pass@k per question averaged, and mean output tokens."""
    per_question = graded.groupby("question_id")["correct"].agg(["sum", "count"])
    summary = {
        "questions": int(len(per_question)),
        "accuracy": float(graded["correct"].mean()),
        "mean_tokens": float(graded["n_tokens"].mean()),
        "finished": float(graded["finished"].mean()),
    }
    for k in ks:
        if k <= per_question["count"].min():
            summary[f"pass@{k}"] = float(
                np.mean([pass_at_k(int(n), int(c), k) for c, n in per_question.itertuples(index=False)])
            )
    return summary


@dataclass(frozen=True)
class Benchmark:
    """One evaluation suite: its ``questions`` (``id``, ``question``, ``answer``), ``n_samples`` sampled
    answers per question besides the greedy one, and ``choices`` (option letters) for multiple choice."""

    name: str
    domain: str
    questions: pd.DataFrame
    n_samples: int = 0
    choices: str | None = None


def _wanted_outputs(benchmarks: Sequence[Benchmark], greedy: SamplingSettings, sampled: SamplingSettings | None):
    """``(benchmark, tag, n, settings)`` of every output set: greedy on each benchmark, sampled where it
    asks for samples."""
    wanted = []
    for bench in benchmarks:
        wanted.append((bench, f"greedy-{bench.name}", 1, greedy))
        if bench.n_samples > 0:
            wanted.append((bench, f"sample-{bench.name}", bench.n_samples, sampled))
    return wanted


def generate_outputs(
    load: Callable[[], tuple],
    benchmarks: Sequence[Benchmark],
    store_path,
    greedy: SamplingSettings,
    sampled: SamplingSettings | None,
    batch_size: int,
    seed: int,
    make_prompt: Callable,
) -> int:
    """Generate (resumably) every missing greedy and sampled output of one model on every benchmark into
    the record store at ``store_path`` (tags ``greedy-<benchmark>`` and ``sample-<benchmark>``), through
    :func:`~segattr_utils.llm.generation.run_generation_tasks` (vLLM: every missing output of every
    benchmark, in chunks stored as they finish). ``load()`` returns ``(generator, tokenizer)``
    (:func:`segattr_utils.services.load_generator`); it is called only when something is left to
    generate, and the generator is closed afterwards, so that the next model finds the GPUs free.
    ``make_prompt(tokenizer, question)`` builds the templated prompt. Returns how many output sets
    (benchmark x mode) had something to generate."""
    store = RecordStore(store_path)
    pending = [
        (bench, tag, n, settings)
        for bench, tag, n, settings in _wanted_outputs(benchmarks, greedy, sampled)
        if any([qid, tag, s] not in store for qid, s in sample_jobs(list(bench.questions["id"]), n))
    ]
    if pending:
        generator, tokenizer = load()
        try:
            tasks = [
                GenerationTask(
                    tag, {r.id: make_prompt(tokenizer, r.question) for r in bench.questions.itertuples()}, n, settings
                )
                for bench, tag, n, settings in pending
            ]
            run_generation_tasks(generator, tasks, store, batch_size, seed)
        finally:
            generator.close()
    return len(pending)


def grade_outputs(benchmarks: Sequence[Benchmark], store_path, model_name: str = "") -> pd.DataFrame:
    """The outputs in the record store at ``store_path`` graded against each benchmark's answers; one row
    per output (``model``, ``benchmark``, ``domain``, ``mode``, ``question_id``, ``sample``, ``correct``,
    ``n_tokens``, ``finished``), ordered as the jobs are (benchmark, greedy before sampled, question, sample),
    whatever the order of the store's lines (a resumed run, or vLLM chunks that finished in another order)."""
    records = RecordStore(store_path).records()
    rows = []
    for bench in benchmarks:
        answers = dict(zip(bench.questions["id"], bench.questions["answer"]))
        position = {qid: i for i, qid in enumerate(bench.questions["id"])}

        def order(record, position=position):
            return record["tag"].partition("-")[0] != "greedy", position[record["question_id"]], record["sample"]

        for record in sorted((r for r in records if r["question_id"] in answers), key=order):
            mode, _, name = record["tag"].partition("-")
            if name != bench.name or record["question_id"] not in answers:
                continue
            verdict = grade(record["text"], answers[record["question_id"]], choices=bench.choices)
            rows.append(
                {
                    "model": model_name,
                    "benchmark": bench.name,
                    "domain": bench.domain,
                    "mode": mode,
                    "question_id": record["question_id"],
                    "sample": record["sample"],
                    "correct": verdict["correct"],
                    "n_tokens": record["n_tokens"],
                    "finished": record["finished"],
                }
            )
    return pd.DataFrame(rows)


def evaluate_model(
    load: Callable[[], tuple],
    benchmarks: Sequence[Benchmark],
    store_path,
    greedy: SamplingSettings,
    sampled: SamplingSettings | None,
    batch_size: int,
    seed: int,
    make_prompt: Callable,
    model_name: str = "",
) -> pd.DataFrame:
    """Greedy (and, where a benchmark asks for samples, sampled) answers of one model on every benchmark,
    graded: :func:`generate_outputs` (resumable) then :func:`grade_outputs`."""
    generate_outputs(load, benchmarks, store_path, greedy, sampled, batch_size, seed, make_prompt)
    return grade_outputs(benchmarks, store_path, model_name)
