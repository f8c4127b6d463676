"""Figures named after the paper's (saved under ``results/<profile>/figures/``)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # notebooks run headless under papermill; inline display still works in Jupyter

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

CORRECT_COLORS = {True: "#2a9d8f", False: "#e76f51"}


def fig1_right_top(traces: pd.DataFrame):
    """Fig. 1 right-top: segments and tokens of correct vs incorrect traces of the same questions."""
    paired = traces.groupby("question_id").filter(lambda g: g["correct"].nunique() == 2)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3))
    for ax, metric, label in zip(axes, ("n_segments", "n_tokens"), ("segments per trace", "tokens per trace")):
        means = [paired[paired["correct"] == c][metric].mean() for c in (True, False)]
        errors = [paired[paired["correct"] == c][metric].sem() for c in (True, False)]
        ax.bar(["correct", "incorrect"], means, yerr=errors, color=[CORRECT_COLORS[True], CORRECT_COLORS[False]], capsize=4)
        ax.set_title(label)
    fig.suptitle(f"Same questions, correct vs incorrect trace (n = {paired['question_id'].nunique()} questions)", fontsize=10)
    fig.tight_layout()
    return fig


def completeness_histogram(completeness: pd.DataFrame, threshold: float):
    """Distribution of the relative completeness error |delta| / |F(x) - F(x')| of every attributed trace."""
    fig, ax = plt.subplots(figsize=(5, 3))
    values = completeness["relative_delta"].clip(lower=1e-8)
    bins = np.logspace(np.log10(values.min()), np.log10(max(values.max(), threshold * 2)), 30)
    for correct, group in completeness.groupby("correct"):
        ax.hist(group["relative_delta"].clip(lower=1e-8), bins=bins, alpha=0.6, color=CORRECT_COLORS[bool(correct)],
                label="correct" if correct else "incorrect")
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"flag > {threshold:.0%}")
    ax.set_xscale("log")
    ax.set_xlabel("relative completeness error")
    ax.set_ylabel("traces")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def correct_per_question(samples: pd.DataFrame):
    """How many of the K samples of each training question are correct."""
    sampled = samples[samples["tag"] == "sample"]
    counts = sampled.groupby("question_id")["correct"].sum()
    k = int(sampled.groupby("question_id").size().max())
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(counts, bins=np.arange(-0.5, k + 1.5, 1), color="#457b9d")
    ax.set_xlabel(f"correct samples out of {k}")
    ax.set_ylabel("questions")
    fig.tight_layout()
    return fig
