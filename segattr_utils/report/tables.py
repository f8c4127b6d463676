"""The paper's evaluation tables from stage 09's metrics: Table 1 (per benchmark and overall, base vs
full-CoT vs segment-selective SFT), Tables 2-4 and 7 (one row per setting, ranked like for like on the
training seeds every row has), Table 8 (App. E, another student) and the points of Fig. 5 (the tau and
beta sweeps), with their cell formatting (seed mean ± standard deviation) and their files
(``results/<profile>/tables/<name>.csv`` and ``.md``).

The metrics themselves (greedy accuracy, pass@k with the unbiased estimator, output tokens; the macro
"overall" of App. C.3) and the paired tests are stage 09's
(:mod:`segattr_utils.stages.stage09_evaluation`): these functions only select, summarise over seeds and
format them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .. import dag
from ..artifacts import write_table
from ..config import Profile

#: The setting (and model name) of the base model, evaluated without SFT.
BASE = "base"


def seed_summary(per_model: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Mean, standard deviation (ddof 1) and number of seeds of ``columns`` per setting."""
    grouped = per_model.groupby("setting", sort=False)
    mean = grouped[columns].mean().add_suffix("_mean")
    std = grouped[columns].std(ddof=1).add_suffix("_std")
    out = pd.concat([mean, std], axis=1)
    out["seeds"] = grouped.size()
    for key in (
        "label",
        "variant",
        "source",
        "mode",
        "tables",
        "overrides",
        "keywords",
        "token_share",
        "segment_share",
    ):
        if key in per_model.columns:
            out[key] = grouped[key].first()
    return out.reset_index()


def format_mean_std(mean: float, std: float, seeds: int, digits: int = 1) -> str:
    """A table cell: "mean ± std" over ``seeds`` training seeds at ``digits`` decimals, the mean alone for
    one seed (or no std), "n/a" without a mean."""
    if mean != mean:
        return "n/a"
    if seeds > 1 and std == std:
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def bootstrap_p_text(p: float, draws: int) -> str:
    """A bootstrap p-value as text: ``p = 0.012``, or ``p < 1e-04`` where no draw fell on the other side
    of zero (``draws`` bootstrap draws)."""
    # no draw on the other side of zero: the bootstrap can only say p < 1 / draws
    return f"p < {1 / draws:.0e}" if p == 0 else f"p = {p:.3g}"


# ---------------------------------------------------------------------------------------------
# The paper's tables


def _k_column(overall: pd.DataFrame) -> str | None:
    ks = [c for c in overall.columns if c.startswith("pass@") and c != "pass@1"]
    return max(ks, key=lambda c: int(c.split("@")[1])) if ks else None


def comparison_table(
    overall: pd.DataFrame,
    settings: list[str],
    labels: dict | None = None,
    tests: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Rows = settings (seed mean ± std): greedy accuracy and length, sampled pass@1 (and pass@k) and length,
    plus the share of trace tokens each run learned from. With ``tests``
    (:func:`~segattr_utils.stages.stage09_evaluation.ranking_tests`), each row other than the reference also
    gets its difference from the reference with the 95% interval of the seed x question bootstrap and the
    Holm-corrected p (:func:`ranking_columns`)."""
    k_column = _k_column(overall)
    columns = ["greedy_acc", "greedy_tokens", "pass@1", "sample_tokens"] + ([k_column] if k_column else [])
    columns = [c for c in columns if c in overall.columns]
    chosen = overall[overall["setting"].isin(settings)]
    summary = seed_summary(chosen, columns).set_index("setting").reindex(settings).dropna(how="all").reset_index()
    rows = []
    for row in summary.to_dict("records"):
        label = (labels or {}).get(row["setting"]) or row.get("label") or row["setting"]
        entry = {
            "Method": label,
            "Seeds": int(row["seeds"]),
            "Greedy Acc.": format_mean_std(row["greedy_acc_mean"], row["greedy_acc_std"], row["seeds"]),
            "Greedy Length": format_mean_std(row["greedy_tokens_mean"], row["greedy_tokens_std"], row["seeds"], 0),
        }
        if "pass@1" in columns:
            entry["Pass@1"] = format_mean_std(row["pass@1_mean"], row["pass@1_std"], row["seeds"])
        if k_column:
            entry[k_column.replace("pass", "Pass")] = format_mean_std(
                row[f"{k_column}_mean"], row[f"{k_column}_std"], row["seeds"]
            )
        if "sample_tokens" in columns:
            entry["Sampling Length"] = format_mean_std(
                row["sample_tokens_mean"], row["sample_tokens_std"], row["seeds"], 0
            )
        share = row.get("token_share")
        entry["Trace tokens learned"] = "-" if share is None or share != share else f"{100 * share:.0f}%"
        if tests is not None:
            entry.update(ranking_columns(tests, row["setting"]))
        rows.append(entry)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Like for like: Tables 2-4, 7 and Fig. 5 ranked on common seeds

#: The metrics each row of Tables 2-4 and 7 is tested on against the table's reference row.
RANKING_METRICS = {"greedy_acc": "acc.", "greedy_tokens": "length"}


def common_seeds(overall: pd.DataFrame, settings: list[str]) -> list[int]:
    """The training seeds every one of ``settings`` has a run with (settings without runs are ignored): a
    table ranks its rows on these seeds only, so that no row's mean is over other seeds than another's."""
    seeds = None
    for setting in settings:
        have = set(overall.loc[overall["setting"] == setting, "seed"].dropna().astype(int))
        if have:
            seeds = have if seeds is None else seeds & have
    return sorted(seeds or ())


def on_seeds(overall: pd.DataFrame, seeds: list[int]) -> pd.DataFrame:
    """The runs of ``overall`` trained with one of ``seeds`` (and the base model, which has none)."""
    return overall[overall["seed"].isin(seeds) | (overall["setting"] == BASE)]


def table_reference(table: str, settings: list[str], source: str) -> str:
    """The row every other row of a table is tested against: ours (Tables 2, 3, 7), and in Table 4 (whose
    claim is that IG pruning beats the other pruning criteria) IG pruning, or full-CoT SFT without it."""
    if table == "4":
        pruned = f"pruned_ig__{source}"
        return pruned if pruned in settings else f"full__{source}"
    return f"selective__{source}"


def ranking_columns(tests: pd.DataFrame, setting: str) -> dict:
    """One table row's differences from the reference: "+1.5 [-2.0, +5.1]" and its Holm p per metric
    ("reference" on the reference's own row, "-" where a test is missing)."""
    columns = {}
    reference = tests["a"].iloc[0] if len(tests) else None
    for metric, name in RANKING_METRICS.items():
        diff_column, p_column = f"Δ {name} vs ref. [95% CI]", f"p {name} (Holm)"
        if setting == reference:
            columns[diff_column], columns[p_column] = "reference", ""
            continue
        match = tests[(tests["b"] == setting) & (tests["metric"] == metric)] if len(tests) else tests
        if not len(match) or pd.isna(match.iloc[0]["bootstrap_difference"]):
            columns[diff_column], columns[p_column] = "-", ""
            continue
        t = match.iloc[0]
        digits = 1 if metric == "greedy_acc" else 0
        columns[diff_column] = (
            f"{t['bootstrap_difference']:+.{digits}f} "
            f"[{t['bootstrap_ci_low']:+.{digits}f}, {t['bootstrap_ci_high']:+.{digits}f}]"
        )
        columns[p_column] = bootstrap_p_text(t["bootstrap_p_holm"], t["bootstrap_draws"]).removeprefix("p = ")
    return columns


def _bench_cell(per_bench: pd.DataFrame, bench: str, column: str, seeds: int) -> str:
    """One benchmark's ``column`` over a setting's seeds, as "mean ± std"."""
    values = per_bench[per_bench["benchmark"] == bench][column]
    return format_mean_std(values.mean(), values.std(ddof=1), seeds)


def table1(profile: Profile, metrics: pd.DataFrame, overall: pd.DataFrame) -> pd.DataFrame:
    """Table 1: per benchmark and overall, base vs full-CoT vs segment-selective SFT, per source,
    greedy accuracy and sampled pass@1 (seed mean ± std) with output lengths and the relative change of
    selective vs full. Benchmarks outside ``evaluation.overall`` (the paper profile's AIME25) follow the
    overall columns. ``metrics`` are the per-benchmark metrics with their runs' descriptions and
    ``overall`` the per-model overall metrics with theirs (stage 09's ``per_model_table``)."""
    k_column = _k_column(overall)
    rows = []
    sources = [s for s in profile.get_path("training.sources")]
    in_overall = profile.get_path("evaluation.overall")
    bench_names = list(dict.fromkeys(metrics["benchmark"]))
    inside = [bench for bench in bench_names if bench in in_overall]
    beside = [bench for bench in bench_names if bench not in in_overall]
    for decoding, acc, tokens in (("greedy", "greedy_acc", "greedy_tokens"), ("sampling", "pass@1", "sample_tokens")):
        if acc not in overall.columns:
            continue
        for position, source in enumerate(sources):
            settings = ([BASE] if position == 0 else []) + [f"full__{source}", f"selective__{source}"]
            for setting in settings:
                per_bench = metrics[metrics["setting"] == setting]
                runs = overall[overall["setting"] == setting]
                if runs.empty:
                    continue
                n = len(runs)
                row = {
                    "Decoding": decoding,
                    "Source": source if setting != BASE else "-",
                    "Method": runs["label"].iloc[0] if setting != BASE else "Base model (no SFT)",
                    "Seeds": n,
                }
                for bench in inside:
                    row[bench] = _bench_cell(per_bench, bench, acc, n)
                row["Acc./Pass@1"] = format_mean_std(runs[acc].mean(), runs[acc].std(ddof=1), n)
                if decoding == "sampling" and k_column:
                    row[k_column.replace("pass", "Pass")] = format_mean_std(
                        runs[k_column].mean(), runs[k_column].std(ddof=1), n
                    )
                row["Length"] = format_mean_std(runs[tokens].mean(), runs[tokens].std(ddof=1), n, 0)
                for bench in beside:
                    row[bench] = _bench_cell(per_bench, bench, acc, n)
                full = overall[overall["setting"] == f"full__{source}"]
                if setting.startswith("selective") and len(full):
                    row["vs full: acc."] = (
                        f"{100 * (runs[acc].mean() / full[acc].mean() - 1):+.1f}%" if full[acc].mean() else "n/a"
                    )
                    row["vs full: length"] = f"{100 * (runs[tokens].mean() / full[tokens].mean() - 1):+.1f}%"
                rows.append(row)
    return pd.DataFrame(rows).fillna("")


def table8(profile: Profile, overall: pd.DataFrame) -> pd.DataFrame:
    """Table 8 (App. E): the student without SFT, full-CoT and segment selective SFT on the first training
    source, as overall greedy accuracy and length and sampled pass@1 and length (the layout of
    :func:`comparison_table`; Table 1's runs, another student)."""
    from .. import services  # deferred: the model stack, which the other tables do not need

    source = services.training_sources(profile)[0]
    student = profile.get_path("models.student.id", None) or "student"
    labels = {BASE: f"{student.split('/')[-1]} (no SFT)"}
    return comparison_table(overall, [BASE, f"full__{source}", f"selective__{source}"], labels=labels)


def table_settings(overall: pd.DataFrame, table: str, source: str) -> list[str]:
    """Settings of one of Tables 2-4/7: full-CoT SFT, the table's own variants, then ours."""
    tagged = overall[overall["tables"].fillna("").str.split(",").map(lambda t: table in t)]
    own = list(dict.fromkeys(tagged["setting"]))
    return [f"full__{source}", *own, f"selective__{source}"] if table != "4" else [f"full__{source}", *own]


def fig5_points(overall: pd.DataFrame, source: str, tau: float, beta: float, seeds: list[int]) -> pd.DataFrame:
    """The tau sweep (beta fixed) and the beta sweep (tau fixed) of Fig. 5, with the main run as the
    shared point; every point averages the same ``seeds`` (pass the common seeds of the sweep's settings,
    :func:`common_seeds`), with the seeds' standard deviation (``*_std``) and their number."""
    rows = []
    for _, run in overall.iterrows():
        if run.get("variant") != "selective" or run.get("source") != source or run.get("seed") not in seeds:
            continue
        keywords = run.get("keywords")
        if isinstance(keywords, str) and keywords == "retro_search":
            continue
        overrides = json.loads(run["overrides"]) if isinstance(run.get("overrides"), str) else {}
        run_tau, run_beta = overrides.get("tau", tau), overrides.get("beta", beta)
        for sweep, value, fixed in (("tau", run_tau, run_beta == beta), ("beta", run_beta, run_tau == tau)):
            if fixed:
                rows.append(
                    {
                        "sweep": sweep,
                        "value": value,
                        "seed": run["seed"],
                        "greedy_acc": run["greedy_acc"],
                        "pass@1": run.get("pass@1", np.nan),
                        "greedy_tokens": run["greedy_tokens"],
                        "sample_tokens": run.get("sample_tokens", np.nan),
                        "token_share": run.get("token_share", np.nan),
                    }
                )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    grouped = frame.groupby(["sweep", "value"])
    points = grouped.mean(numeric_only=True).drop(columns="seed")
    spread = grouped[["greedy_acc", "pass@1"]].std(ddof=1).add_suffix("_std")
    points = pd.concat([points, spread], axis=1)
    points["seeds"] = grouped["seed"].nunique()
    return points.reset_index()


def save_paper_table(profile: Profile, name: str, frame: pd.DataFrame) -> Path:
    """Write a regenerated paper table as ``results/<profile>/tables/<name>.csv`` and ``.md``."""
    folder = dag.profile_path(profile, dag.TABLES_DIR)
    write_table(folder / f"{name}.csv", frame)
    return write_table(folder / f"{name}.md", frame)
