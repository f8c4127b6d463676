"""Evaluation of a model on question suites (Sec. 4.1): greedy accuracy, pass@k with the unbiased
estimator, and mean output tokens; answers graded by the last ``\\boxed{}`` with math-verify.
"""

from __future__ import annotations

from math import comb
from typing import Sequence

import numpy as np
import pandas as pd

from ..artifacts import RecordStore
from .generation import SamplingSettings, run_generation
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


def generate_and_grade(generator, prompts: dict[str, str], answers: dict[str, str], n_samples: int,
                       settings: SamplingSettings, store: RecordStore, batch_size: int, seed: int, tag: str) -> pd.DataFrame:
    """Generate (resumably) and grade ``n_samples`` outputs per prompt; one row per output."""
    run_generation(generator, prompts, n_samples, settings, store, batch_size, seed, tag)
    rows = []
    for record in store.records():
        if record["tag"] != tag or record["question_id"] not in prompts:
            continue
        verdict = grade(record["text"], answers[record["question_id"]])
        rows.append({"question_id": record["question_id"], "tag": tag, "sample": record["sample"],
                     "n_tokens": record["n_tokens"], "finished": record["finished"],
                     "pred": verdict["pred"], "correct": verdict["correct"], "text": record["text"]})
    return pd.DataFrame(rows).sort_values(["question_id", "sample"]).reset_index(drop=True)


def summarise_outputs(graded: pd.DataFrame, ks: Sequence[int] = (1,)) -> dict:
    """Accuracy (mean correctness), pass@k per question averaged, and mean output tokens."""
    per_question = graded.groupby("question_id")["correct"].agg(["sum", "count"])
    summary = {"questions": int(len(per_question)), "accuracy": float(graded["correct"].mean()),
               "mean_tokens": float(graded["n_tokens"].mean()), "finished": float(graded["finished"].mean())}
    for k in ks:
        if k <= per_question["count"].min():
            summary[f"pass@{k}"] = float(np.mean([pass_at_k(int(n), int(c), k) for c, n in per_question.itertuples(index=False)]))
    return summary
