"""Every figure of the project, named after the paper's, and how it is saved and shown.

Figures are drawn with pyplot and saved by :func:`save` as ``results/<profile>/figures/<name>.png``
and ``.pdf`` (deterministic metadata); notebooks show the saved PNG with :func:`show`, so what a
notebook shows is exactly the file that was written.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .. import dag
from ..artifacts import save_figure
from ..config import Profile
from .viewer import (
    CLASS_COLORS,
    CLASS_LABELS,
    CLASSES,
    NEWLINE_MARK,
    STRIP_COLORS,
    _annotation,
    _count,
    segment_classes,
)

CORRECT_COLORS = {True: "#2a9d8f", False: "#e76f51"}


def fig1_right_top(traces: pd.DataFrame):
    """Fig. 1 right-top: segments and tokens of correct vs incorrect traces of the same questions."""
    paired = traces.groupby("question_id").filter(lambda g: g["correct"].nunique() == 2)
    fig, axes = plt.subplots(1, 2, figsize=(7, 3))
    for ax, metric, label in zip(axes, ("n_segments", "n_tokens"), ("segments per trace", "tokens per trace")):
        means = [paired[paired["correct"] == c][metric].mean() for c in (True, False)]
        errors = [paired[paired["correct"] == c][metric].sem() for c in (True, False)]
        ax.bar(
            ["correct", "incorrect"], means, yerr=errors, color=[CORRECT_COLORS[True], CORRECT_COLORS[False]], capsize=4
        )
        ax.set_title(label)
    fig.suptitle(
        f"Same questions, correct vs incorrect trace (n = {paired['question_id'].nunique()} questions)", fontsize=10
    )
    fig.tight_layout()
    return fig


def completeness_histogram(completeness: pd.DataFrame, threshold: float):
    """Distribution of the relative completeness error |delta| / |F(x) - F(x')| of every attributed trace."""
    fig, ax = plt.subplots(figsize=(5, 3))
    values = completeness["relative_delta"].clip(lower=1e-8)
    bins = np.logspace(np.log10(values.min()), np.log10(max(values.max(), threshold * 2)), 30)
    for correct, group in completeness.groupby("correct"):
        ax.hist(
            group["relative_delta"].clip(lower=1e-8),
            bins=bins,
            alpha=0.6,
            color=CORRECT_COLORS[bool(correct)],
            label="correct" if correct else "incorrect",
        )
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


# ---------------------------------------------------------------------------------------------
# Notebooks 04-06: Sec. 3 and App. A

IMPORTANCE_COLORS = {"important": "#2a9d8f", "unimportant": "#9e9e9e"}
GROUP_COLORS = ("#2a9d8f", "#8ab17d", "#e9c46a", "#9e9e9e")


def _bars(ax, labels, means, sems, counts, colors):
    """Bars of group means with SEM error bars; an empty group gets no bar and an "n = 0" label."""
    x = np.arange(len(labels))
    heights = [m if m is not None else 0.0 for m in means]
    errors = [s if s is not None else 0.0 for s in sems]
    ax.bar(x, heights, yerr=errors, color=colors, capsize=4)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, labels, fontsize=8)
    for xi, mean, count in zip(x, means, counts):
        text = f"n = {count}" if mean is not None else "n = 0\n(empty)"
        ax.annotate(text, (xi, 0), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=7)


def fig2_confidence_delta(groups: pd.DataFrame, p_value_text: str, tau: float, beta: float):
    """Fig. 2: mean Δ in correct-answer confidence (± SEM) of important vs unimportant segments and of
    the four strength × consistency groups. ``groups`` is :func:`segattr_utils.measures.confidence.group_summary`."""
    by_name = groups.set_index("group")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1, 2]})
    pair = ["important", "unimportant"]
    _bars(
        axes[0],
        pair,
        [by_name.loc[g, "mean"] for g in pair],
        [by_name.loc[g, "sem"] for g in pair],
        [int(by_name.loc[g, "n"]) for g in pair],
        [IMPORTANCE_COLORS[g] for g in pair],
    )
    axes[0].set_ylabel("Δ correct-answer confidence")
    axes[0].set_title(f"τ = {tau:g}, β = {beta:g} ({p_value_text})", fontsize=9)
    four = [g for g in by_name.index if g not in pair]
    _bars(
        axes[1],
        [g.replace(", ", "\n") for g in four],
        [by_name.loc[g, "mean"] for g in four],
        [by_name.loc[g, "sem"] for g in four],
        [int(by_name.loc[g, "n"]) for g in four],
        list(GROUP_COLORS),
    )
    axes[1].set_title("strength (top-τ) × consistency (≤ β)", fontsize=9)
    fig.tight_layout()
    return fig


def fig4_tau_search(search: pd.DataFrame, ablation: pd.DataFrame):
    """Fig. 4: mean Δ of important and unimportant segments (and the four groups) over the τ grid with
    τ* starred (left), and over the β grid under τ* (right)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, table, column in ((axes[0], search, "tau"), (axes[1], ablation, "beta")):
        x = table[column].to_numpy(dtype=float)
        for key, label, color, style in (
            ("delta_important", "important", IMPORTANCE_COLORS["important"], "-o"),
            ("delta_unimportant", "unimportant", IMPORTANCE_COLORS["unimportant"], "-o"),
        ):
            y = pd.to_numeric(table[key], errors="coerce").to_numpy(dtype=float)
            ax.plot(x, y, style, color=color, label=label, linewidth=2)
        group_columns = [c for c in table.columns if c.startswith("delta[")]
        for c, color in zip(group_columns, GROUP_COLORS):
            y = pd.to_numeric(table[c], errors="coerce").to_numpy(dtype=float)
            ax.plot(x, y, ":", color=color, linewidth=1, label=c[len("delta[") : -1])
        chosen = table[table["selected"].astype(bool)]
        if len(chosen):
            ax.plot(
                chosen[column],
                pd.to_numeric(chosen["delta_important"]),
                "*",
                color="red",
                markersize=16,
                label=f"{'τ' if column == 'tau' else 'β'}* = {float(chosen[column].iloc[0]):g}",
                zorder=5,
            )
        else:
            ax.text(
                0.5, 0.95, "no admissible value (see table)", transform=ax.transAxes, ha="center", va="top", fontsize=8
            )
        ax.axhline(0, color="black", linewidth=0.8)
        fixed = table["beta" if column == "tau" else "tau"].iloc[0] if len(table) else float("nan")
        ax.set_xlabel(
            column.replace("tau", "τ").replace("beta", "β")
            + (f"  (β = {fixed:g})" if column == "tau" else f"  (τ = {fixed:g})")
        )
    axes[0].set_ylabel("mean Δ correct-answer confidence")
    handles, labels = axes[0].get_legend_handles_labels()
    for handle, label in zip(*axes[1].get_legend_handles_labels()):
        if label.startswith("β*"):
            handles.append(handle)
            labels.append(label)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=4)
    return fig


def fig3_linguistics(table: pd.DataFrame, comparisons: dict, bleu_threshold: float):
    """Fig. 3: log-perplexity, entropy and BLEU against preceding segments for important vs unimportant
    segments (box plots; p-values of ``comparisons`` {column: text} in the titles)."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    titles = {"log_ppl": "log perplexity", "entropy": "entropy (nats)", "bleu": "BLEU vs preceding segments"}
    for ax, column in zip(axes, ("log_ppl", "entropy", "bleu")):
        groups = [table.loc[table["important"] == flag, column].to_numpy(dtype=float) for flag in (True, False)]
        present = [i for i, values in enumerate(groups) if values.size]
        if present:
            parts = ax.boxplot(
                [groups[i] for i in present],
                positions=[i + 1 for i in present],
                widths=0.6,
                patch_artist=True,
                showfliers=False,
            )
            for patch, i in zip(parts["boxes"], present):
                patch.set_facecolor(IMPORTANCE_COLORS["important" if i == 0 else "unimportant"])
        ax.set_xticks([1, 2], [f"important\nn = {groups[0].size}", f"unimportant\nn = {groups[1].size}"], fontsize=8)
        ax.set_xlim(0.4, 2.6)
        ax.set_title(f"{titles[column]}\n{comparisons.get(column, '')}", fontsize=9)
        if column == "bleu":
            ax.axhline(bleu_threshold, color="red", linestyle="--", linewidth=1, label=f"BLEU > {bleu_threshold:g}")
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fig1_right_bottom_cdf(grid, curves: dict, mass: float, shares: dict):
    """Fig. 1 right-bottom: the averaged CDF of normalised strength over segments ranked by strength,
    one curve per label of ``curves`` ({label: curve}); ``shares`` {label: share holding ``mass``}."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    colors = {"correct": CORRECT_COLORS[True], "incorrect": CORRECT_COLORS[False]}
    for label, curve in curves.items():
        share = shares.get(label)
        suffix = f" ({share:.0%} of segments hold {mass:.0%})" if share is not None else ""
        ax.plot(np.asarray(grid) * 100, curve, color=colors.get(label), linewidth=2, label=f"{label}{suffix}")
    ax.axhline(mass, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlabel("top segments by strength (% of the trace's segments)")
    ax.set_ylabel("cumulative normalised strength")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 1.02)
    if curves:
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no attributed traces", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    return fig


def app_a_positions(shares: pd.DataFrame):
    """App. A: share of each segment set before, at and after the decision segment (stacked bars)."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = [f"{row['set']}\n(n = {row['n']})" for _, row in shares.iterrows()]
    left = np.zeros(len(shares))
    for where, color in (("before", "#457b9d"), ("at", "#e9c46a"), ("after", "#e76f51")):
        values = pd.to_numeric(shares[f"share_{where}"], errors="coerce").fillna(0.0).to_numpy()
        ax.barh(labels, values, left=left, color=color, label=f"{where} the decision segment")
        left += values
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("share of the set's segments")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3)
    fig.tight_layout()
    return fig


def save(fig, profile: Profile, name: str) -> Path:
    """Save ``fig`` as ``results/<profile>/figures/<name>.png`` and ``.pdf``, close it, return the PNG."""
    png = save_figure(fig, dag.profile_path(profile, dag.FIGURES_DIR), name)[0]
    plt.close(fig)
    return png


def show(png: str | Path) -> None:
    """Display a saved figure in a notebook."""
    from IPython.display import Image, display

    display(Image(filename=str(png)))


def _block_lines(text: str, width_chars: int, max_chars: int, max_lines: int) -> list[str]:
    """A segment's text wrapped at ``width_chars`` (newlines kept, shown as ↵), cut after ``max_chars``
    characters or ``max_lines`` lines with "…", so that no segment makes a block taller than ``max_lines``."""
    cut = len(text) > max_chars
    text = text[:max_chars] if cut else text
    # Newlines opening a segment are marks only (as in the HTML viewer): the block already starts a line.
    body = text.lstrip("\n")
    text = NEWLINE_MARK * (len(text) - len(body)) + body
    lines = []
    for paragraph in text.replace("\n", f"{NEWLINE_MARK}\n").split("\n"):
        lines.extend(textwrap.wrap(paragraph, width_chars, drop_whitespace=False) or [""])
    if len(lines) > max_lines:
        lines, cut = lines[:max_lines], True
    if cut:
        lines[-1] += "…"
    return lines


def shown_segments(n_segments: int, head: int = 4, tail: int = 3) -> list[int]:
    """Positions the PNG viewer draws: every segment of a short trace, else the first ``head`` and the
    last ``tail`` (the strength strip above them covers the rest)."""
    if n_segments <= head + tail + 1:
        return list(range(n_segments))
    return [*range(head), *range(n_segments - tail, n_segments)]


def fig1_left_segment_viewer(
    view: pd.DataFrame,
    title: str = "",
    width_chars: int = 90,
    max_chars: int = 600,
    max_lines: int = 8,
    head: int = 4,
    tail: int = 3,
):
    """Fig. 1 left: a strength strip (one bar per segment, coloured by class) above one coloured block per
    segment (important green, always kept blue, masked gray; :mod:`segattr_utils.report.viewer`) with
    its annotation.

    The figure's height is bounded whatever the trace's length: a trace of more than ``head + tail + 1``
    segments shows its first ``head`` and last ``tail`` segments and one line counting the segments left
    out (the HTML viewer shows every segment), and each block is cut after ``max_chars`` characters or
    ``max_lines`` wrapped lines of ``width_chars``.
    """
    from matplotlib.patches import FancyBboxPatch, Patch
    from matplotlib.ticker import MaxNLocator

    classes = segment_classes(view)
    rows = [row for _, row in view.iterrows()]
    shown = shown_segments(len(rows), head, tail)
    blocks = [
        (position, _block_lines(str(rows[position]["text"]), width_chars, max_chars, max_lines)) for position in shown
    ]
    line_height = 7 * 1.25 / 72  # inches: 7 pt monospace text at line spacing 1.25
    strip_height, top = 0.9, 0.5 if title else 0.15
    gap_lines = 2.0 if len(shown) < len(rows) else 0.0
    body = sum(len(lines) + 1.6 for _, lines in blocks) * line_height + gap_lines * line_height
    fig_height = top + strip_height + body + 0.1
    fig = plt.figure(figsize=(9, fig_height))
    if title:
        fig.text(0.02, 1 - 0.3 / fig_height, title, fontsize=10, fontweight="bold", va="center", parse_math=False)

    strip = fig.add_axes((0.06, 1 - (top + strip_height - 0.25) / fig_height, 0.92, (strip_height - 0.45) / fig_height))
    positions = np.arange(1, len(rows) + 1)  # segment numbers, as S1..Sn in the annotations
    strip.bar(
        positions,
        view["norm_strength"].to_numpy(),
        width=0.9 if len(rows) < 60 else 1.0,
        color=[STRIP_COLORS[c] for c in classes],
    )
    strip.set_xlim(0.5, len(rows) + 0.5)
    strip.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    strip.set_xlabel("segment", fontsize=6, labelpad=1)
    strip.set_ylabel("strength", fontsize=6)
    strip.tick_params(labelsize=6)
    strip.set_title(f"normalised strength per segment ({_count(len(rows), 'segment')})", fontsize=7, loc="left")
    strip.legend(
        handles=[Patch(color=STRIP_COLORS[c], label=CLASS_LABELS[c]) for c in CLASSES],
        fontsize=6,
        ncol=3,
        loc="upper right",
        frameon=False,
        bbox_to_anchor=(1, 1.45),
    )

    ax = fig.add_axes((0, 0, 1, body / fig_height))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, body)
    ax.axis("off")
    y = body
    for index, (position, lines) in enumerate(blocks):
        if index and position != blocks[index - 1][0] + 1:
            left_out = classes[blocks[index - 1][0] + 1 : position]
            ax.text(
                0.5,
                y - line_height,
                f"⋯ S{blocks[index - 1][0] + 2}–S{position} not shown: {len(left_out)} segments "
                f"({left_out.count('important')} important, {left_out.count('kept')} always kept, "
                f"{left_out.count('masked')} masked); the HTML viewer shows every segment ⋯",
                fontsize=7,
                color="#555555",
                ha="center",
                va="center",
                parse_math=False,
            )
            y -= gap_lines * line_height
        row, cls = rows[position], classes[position]
        height = (len(lines) + 1.3) * line_height
        ax.add_patch(
            FancyBboxPatch(
                (0.02, y - height),
                0.96,
                height,
                boxstyle="round,pad=0,rounding_size=0.05",
                facecolor=CLASS_COLORS[cls],
                edgecolor="none",
                mutation_aspect=1,
            )
        )
        ax.text(
            0.03,
            y - 0.6 * line_height,
            _annotation(row, cls),
            fontsize=7,
            color="#333333",
            va="center",
            parse_math=False,
        )
        ax.text(
            0.03,
            y - 1.3 * line_height,
            "\n".join(lines),
            fontsize=7,
            family="monospace",
            va="top",
            linespacing=1.25,
            parse_math=False,
        )
        y -= height + 0.3 * line_height
    return fig


def judge_confusion_matrix(matrix: pd.DataFrame, quality: pd.Series, n_segments: int):
    """Heat map of the judge's confusion matrix (:func:`segattr_utils.stages.stage07_truncation_judge.judge_confusion`)
    with the counts, titled with accuracy / precision / recall (``quality``)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.imshow(matrix.to_numpy(), cmap="Blues")
    peak = max(int(matrix.to_numpy().max()), 1)
    for (i, j), value in np.ndenumerate(matrix.to_numpy()):
        ax.text(j, i, str(int(value)), ha="center", va="center", color="white" if value > peak / 2 else "black")
    ax.set_xticks(range(matrix.shape[1]), [f"judged\n{c}" for c in matrix.columns])
    ax.set_yticks(range(matrix.shape[0]), [f"truly\n{r}" for r in matrix.index])

    def fmt(value):
        return "n/a" if value != value else f"{value:.2f}"

    ax.set_title(
        f"Truncation judge vs ground truth (n = {n_segments})\naccuracy {fmt(quality['accuracy'])}, "
        f"precision {fmt(quality['precision'])}, recall {fmt(quality['recall'])}",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def fig5_tau_beta(points: pd.DataFrame, tau: float, beta: float):
    """Fig. 5: sampled pass@1 (and greedy accuracy) and output length against beta (tau fixed) and tau
    (beta fixed)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, sweep, fixed in ((axes[0], "beta", f"tau = {tau:g}"), (axes[1], "tau", f"beta = {beta:g}")):
        part = points[points["sweep"] == sweep].sort_values("value")
        if part.empty:
            ax.set_axis_off()
            continue
        ax.plot(part["value"], part["pass@1"], "o-", color="#2a9d8f", label="pass@1 (sampling)")
        ax.plot(part["value"], part["greedy_acc"], "s--", color="#264653", label="greedy accuracy")
        ax.set_xlabel(sweep)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{sweep} sweep ({fixed})", fontsize=10)
        twin = ax.twinx()
        twin.bar(part["value"], part["sample_tokens"], width=0.03, alpha=0.25, color="#e76f51", label="sampled length")
        twin.set_ylabel("mean output tokens")
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


#: Colours of the faithfulness orderings (notebook 06); IG strength is drawn thicker.
ORDERING_COLORS = {
    "ig": "#2a9d8f",
    "oracle": "#264653",
    "random": "#9e9e9e",
    "length": "#e9c46a",
    "perplexity": "#e76f51",
    "entropy": "#8d5a97",
    "confidence": "#457b9d",
}


def faithfulness_curves(curves: pd.DataFrame, rows: pd.DataFrame, labels: dict[str, str], reference: str = "ig"):
    """Beyond the paper (notebook 06): the mean deletion drop F_0 - F(x) and insertion gain G(x) - G_0
    (nats) over the fraction x of trace tokens removed/restored, one line per ordering (``curves``:
    ``ordering``, ``fraction``, ``deletion_drop``, ``insertion_gain``, ``n_traces``), and the per-trace
    distribution of the deletion area of each ordering (``rows``: ``ordering``, ``deletion_area``).
    ``labels`` names the orderings, in the order drawn."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    names = [name for name in labels if name in set(curves["ordering"])]
    for ax, column, title in (
        (axes[0], "deletion_drop", "deletion: mean F_0 − F(x) (nats)"),
        (axes[1], "insertion_gain", "insertion: mean G(x) − G_0 (nats)"),
    ):
        for name in names:
            part = curves[curves["ordering"] == name]
            ax.plot(
                part["fraction"] * 100,
                part[column],
                color=ORDERING_COLORS.get(name),
                linewidth=2.5 if name == reference else 1.2,
                label=labels[name],
            )
        ax.set_xlabel("trace tokens removed (%)" if column == "deletion_drop" else "trace tokens restored (%)")
        ax.set_title(title, fontsize=9)
        ax.set_xlim(0, 100)
    n = int(curves["n_traces"].max()) if len(curves) else 0
    if names:
        axes[0].legend(fontsize=7, loc="lower right")
    else:
        for ax in axes[:2]:
            ax.text(0.5, 0.5, "no traces measured", transform=ax.transAxes, ha="center")
    ax = axes[2]
    groups = [rows.loc[rows["ordering"] == name, "deletion_area"].to_numpy(dtype=float) for name in names]
    if names:
        parts = ax.boxplot(groups, widths=0.6, patch_artist=True, showfliers=False)
        for patch, name in zip(parts["boxes"], names):
            patch.set_facecolor(ORDERING_COLORS.get(name, "#cccccc"))
        ax.set_xticks(range(1, len(names) + 1), [labels[name] for name in names], rotation=35, ha="right", fontsize=7)
    ax.set_title("deletion area per trace (nats; higher = more faithful)", fontsize=9)
    fig.suptitle(f"Segment-level faithfulness, {n} correct traces (beyond the paper)", fontsize=10)
    fig.tight_layout()
    return fig
