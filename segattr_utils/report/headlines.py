"""The headline numbers of a run: one registry, each number read from its stage's artifacts.

A :class:`Headline` has a name, the stage whose artifacts hold it, a unit and a reader: a function of an
:class:`Artifacts` (a profile's results folder, ``results_root`` honoured) returning one float. Readers
find files through :mod:`segattr_utils.dag` and never create folders. When an artifact is absent (the
stage has not run), or holds no value for the headline (a row that is not there, a NaN the stage wrote
because it could not compute the statistic), the reader raises :class:`Missing` with the reason, and
:func:`read_headlines` records a :class:`Reading` whose ``value`` is None and whose ``missing`` says why;
a reader never returns NaN.

Units follow the paper's tables: accuracies, shares and relative changes in percent (``%``, ``pp``
for a difference of two percentages), Δ confidence, log-perplexity, entropy and BLEU as the stages
write them, p-values as probabilities, τ and β as they are set.

``effect`` headlines are differences whose sign is a claim of the paper; ``paper_sign`` is the
direction the paper reports (+1 or -1; None where the paper gives none). :mod:`segattr_utils.robustness`
classifies them against the noise floor with :func:`segattr_utils.robustness.claim_status`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import dag
from ..artifacts import read_json, read_table
from ..config import Profile, results_dir
from .tables import common_seeds, fig5_points, on_seeds, table_settings


class Missing(Exception):
    """A headline cannot be read: its artifact is absent or holds no value for it (the message says which)."""


class Artifacts:
    """Read-only access to one profile's results folder (``results_dir(profile)``), with the tables that
    several headlines share (the stage 09 metrics) computed once."""

    def __init__(self, profile: Profile, root: str | Path | None = None):
        self.profile = profile
        self.root = root
        self.results = results_dir(profile, root)
        self._cache: dict = {}

    def path(self, stage: dag.Stage, artifact: str) -> Path:
        """A declared artifact's path (:meth:`dag.Stage.path` without creating the stage folder); raises
        :class:`Missing` when it does not exist."""
        if artifact not in stage.artifacts:
            raise KeyError(f"stage {stage.folder} declares no artifact {artifact!r}")
        path = self.results / stage.folder / stage.artifacts[artifact]
        if not path.exists():
            raise Missing(f"{self._relative(path)} not found (notebook {stage.folder} has not run)")
        return path

    def table(self, stage: dag.Stage, artifact: str) -> pd.DataFrame:
        key = ("table", stage.folder, artifact)
        if key not in self._cache:
            self._cache[key] = read_table(self.path(stage, artifact))
        return self._cache[key]

    def json(self, stage: dag.Stage, artifact: str) -> dict:
        return read_json(self.path(stage, artifact))

    def paper_table(self, name: str) -> pd.DataFrame:
        """One of stage 09's regenerated paper tables (``results/<profile>/tables/<name>.csv``)."""
        path = dag.profile_path(self.profile, dag.TABLES_DIR, self.root) / f"{name}.csv"
        if not path.exists():
            raise Missing(f"{self._relative(path)} not found (notebook {dag.EVALUATION.folder} has not run)")
        key = ("paper_table", name)
        if key not in self._cache:
            self._cache[key] = read_table(path)
        return self._cache[key]

    def overall(self) -> pd.DataFrame:
        """Stage 09's per-model overall metrics with the runs' descriptions (as its tables use them)."""
        if "overall" not in self._cache:
            from ..stages.stage09_evaluation import per_model_table

            graded = self.table(dag.EVALUATION, "graded")
            self.path(dag.SELECTIVE_SFT, "runs")  # Missing before per_model_table would create folders
            self._cache["overall"] = per_model_table(self.profile, graded)[1]
        return self._cache["overall"]

    def _relative(self, path: Path) -> str:
        try:
            return path.relative_to(self.results.parent).as_posix()
        except ValueError:
            return str(path)


def finite(value, what: str) -> float:
    """``value`` as a float; :class:`Missing` when it is None or NaN (the stage could not compute it)."""
    if value is None:
        raise Missing(f"{what}: no value")
    number = float(value)
    if math.isnan(number):
        raise Missing(f"{what}: not computed (NaN)")
    return number


def only_row(frame: pd.DataFrame, what: str, **where) -> pd.Series:
    """The one row of ``frame`` whose columns equal ``where``; :class:`Missing` when there is none."""
    mask = pd.Series(True, index=frame.index)
    for column, value in where.items():
        if column not in frame.columns:
            raise Missing(f"{what}: no column {column!r}")
        mask &= frame[column] == value
    rows = frame[mask]
    if rows.empty:
        raise Missing(f"{what}: no row with {', '.join(f'{k} = {v!r}' for k, v in where.items())}")
    return rows.iloc[0]


def first_row(frame: pd.DataFrame, what: str) -> pd.Series:
    """The first row of a one-row table; :class:`Missing` when it is empty."""
    if frame.empty:
        raise Missing(f"{what}: no rows")
    return frame.iloc[0]


@dataclass(frozen=True)
class Headline:
    """One headline number: ``name``, its stage, a ``label`` for the report, a ``unit``, the ``reader``;
    ``effect`` and ``paper_sign`` for the paper's directional claims (see the module docstring)."""

    name: str
    stage: dag.Stage
    label: str
    unit: str
    reader: Callable[[Artifacts], float]
    effect: bool = False
    paper_sign: int | None = None
    describe: Callable[[Artifacts], str] | None = field(default=None, compare=False)

    def read(self, artifacts: Artifacts) -> float:
        return finite(self.reader(artifacts), self.name)


@dataclass(frozen=True)
class Reading:
    """A headline's value in one run: ``value`` (a finite float) or None with the reason in ``missing``;
    ``note`` names what the value refers to where that varies (the best row of a table)."""

    headline: Headline
    value: float | None
    missing: str = ""
    note: str = ""


# ---------------------------------------------------------------------------------------------
# Readers, stage by stage


def _base_final_loss(a: Artifacts) -> float:
    return a.json(dag.WORLD, "base_training").get("final_loss")


def _base_accuracy(suite: str):
    def read(a: Artifacts) -> float:
        return 100 * only_row(a.table(dag.WORLD, "base_eval"), "base_eval", suite=suite)["accuracy"]

    return read


def sensitivity_steps(profile: Profile) -> int:
    """The J of stage 03's sensitivity check that the completeness headline reads (the first listed; the
    tiny profile's is the paper's J = 50)."""
    steps = profile.get_path("attribution.sensitivity.n_steps", [50])
    return int(steps[0] if isinstance(steps, list | tuple) else steps)


def _completeness_at_sensitivity_j(a: Artifacts) -> float:
    frame = a.table(dag.IG_ATTRIBUTION, "step_sensitivity")
    j = sensitivity_steps(a.profile)
    group = frame[frame["n_steps"] == j] if "n_steps" in frame.columns else frame.iloc[0:0]
    if group.empty:
        raise Missing(f"step_sensitivity: no traces at J = {j}")
    return 100 * group["relative_delta"].median()


def _important_segment_share(a: Artifacts) -> float:
    return 100 * finite(
        first_row(a.table(dag.CONFIDENCE_DELTA, "importance_shares"), "importance_shares")["segment_share"],
        "importance_shares: segment share",
    )


def _delta_gap(a: Artifacts) -> float:
    groups = a.table(dag.CONFIDENCE_DELTA, "groups")
    important = only_row(groups, "groups", group="important")["mean"]
    unimportant = only_row(groups, "groups", group="unimportant")["mean"]
    return finite(important, "groups: important mean") - finite(unimportant, "groups: unimportant mean")


def _delta_trace_difference(a: Artifacts) -> float:
    search = a.table(dag.CONFIDENCE_DELTA, "tau_search")
    tau = float(a.profile.get_path("analysis.groups_tau"))
    close = search[(search["tau"] - tau).abs() < 1e-9]
    if close.empty:
        raise Missing(f"tau_search: no row at the groups' τ = {tau:g}")
    return close.iloc[0]["trace_difference"]


def _selected(stage_artifact: str, column: str):
    def read(a: Artifacts) -> float:
        frame = a.table(dag.CONFIDENCE_DELTA, stage_artifact)
        chosen = frame[frame["selected"].astype(str).str.lower() == "true"]
        if chosen.empty:
            raise Missing(f"{stage_artifact}: no row selected (no value gives important segments a larger Δ)")
        return chosen.iloc[0][column]

    return read


def _linguistics(column: str, value: str):
    def read(a: Artifacts) -> float:
        return only_row(a.table(dag.LINGUISTICS, "comparisons"), "comparisons", column=column)[value]

    return read


def _cdf_share(a: Artifacts) -> float:
    row = only_row(a.table(dag.DISTRIBUTION_POSITION, "cdf_summary"), "cdf_summary", traces="correct")
    return 100 * finite(row["share_from_mean_curve"], "cdf_summary: correct share")


def _truncated_share(group: str):
    def read(a: Artifacts) -> float:
        frame = a.table(dag.TRUNCATION_JUDGE, "truncated_share")
        return 100 * only_row(frame, "truncated_share", grouping="sec3.1", group=group)["truncated_share"]

    return read


def _truncated_difference(a: Artifacts) -> float:
    unimportant = finite(_truncated_share("unimportant")(a), "truncated share, unimportant")
    return unimportant - finite(_truncated_share("important")(a), "truncated share, important")


def _judge_precision(a: Artifacts) -> float:
    return first_row(a.table(dag.TRUNCATION_JUDGE, "judge_quality"), "judge_quality")["precision"]


def setting_mean(overall: pd.DataFrame, setting: str, column: str) -> float:
    """The seed mean of ``column`` over the runs of ``setting`` (stage 09's overall metrics)."""
    values = overall.loc[overall["setting"] == setting, column] if column in overall.columns else []
    if len(values) == 0:
        raise Missing(f"graded: no runs of {setting}")
    return finite(values.mean(), f"{setting} {column}")


def _table1_change(source: str, column: str):
    """Selective vs full-CoT SFT in percent of full (Table 1's "vs full" columns, paper_vs_run's rows)."""

    def read(a: Artifacts) -> float:
        overall = a.overall()
        full = setting_mean(overall, f"full__{source}", column)
        ours = setting_mean(overall, f"selective__{source}", column)
        if full == 0:
            raise Missing(f"full__{source} {column} is 0: no relative change")
        return 100 * (ours / full - 1)

    return read


def _table1_p(source: str, column: str):
    def read(a: Artifacts) -> float:
        tests = a.paper_table("table1_paired_tests")
        return only_row(tests, "table1_paired_tests", b=f"selective__{source}", metric=column)["bootstrap_p"]

    return read


def best_rows(a: Artifacts, table: str) -> pd.Series:
    """Greedy accuracy of each row of Table 2, 3 or 4 over the table's common seeds, best first (as stage 09
    ranks them: like for like, ties in the table's order)."""
    overall = a.overall()
    source = a.profile.get_path("training.ablation_source")
    settings = table_settings(overall, table, source)
    part = on_seeds(overall, common_seeds(overall, settings))
    part = part[part["setting"].isin(settings)]
    if part["setting"].nunique() < 2:
        raise Missing(f"Table {table}: fewer than two of its settings were evaluated")
    return part.groupby("setting", sort=False)["greedy_acc"].mean().sort_values(ascending=False, kind="stable")


def _best_label(a: Artifacts, table: str) -> str:
    best = best_rows(a, table)
    labels = a.overall().drop_duplicates("setting").set_index("setting")["label"].to_dict()
    source = a.profile.get_path("training.ablation_source")
    ours = f"selective__{source}"
    labels[ours] = "ours"
    # as stage 09's best-row comparison: ours is named when it ties for first
    first = ours if ours in best.index and best[ours] == best.iloc[0] else best.index[0]
    return str(labels.get(first, first))


def _table_best(table: str):
    def read(a: Artifacts) -> float:
        return best_rows(a, table).iloc[0]

    return read


def _ours_minus_best_other(table: str):
    def read(a: Artifacts) -> float:
        best = best_rows(a, table)
        ours = f"selective__{a.profile.get_path('training.ablation_source')}"
        if ours not in best.index:
            raise Missing(f"Table {table}: ours ({ours}) was not evaluated")
        others = best.drop(index=ours)
        if others.empty:
            raise Missing(f"Table {table}: no other setting was evaluated")
        return best.loc[ours] - others.iloc[0]

    return read


def fig5_best(a: Artifacts, sweep: str) -> pd.Series:
    """The Fig. 5 point of ``sweep`` (``tau`` or ``beta``) with the highest sampled pass@1 (as stage 09)."""
    profile = a.profile
    overall, source = a.overall(), profile.get_path("training.ablation_source")
    points = fig5_points(
        overall,
        source,
        profile.get_path("selection.tau"),
        profile.get_path("selection.beta"),
        common_seeds(overall, table_settings(overall, "fig5", source)),
    )
    part = points[points["sweep"] == sweep] if len(points) else points
    if len(part) < 2:
        raise Missing(f"Fig. 5: fewer than two {sweep} points were evaluated")
    return part.sort_values("pass@1", ascending=False).iloc[0]


def _fig5(sweep: str):
    def read(a: Artifacts) -> float:
        return fig5_best(a, sweep)["value"]

    return read


# ---------------------------------------------------------------------------------------------
# The registry


def _headlines() -> tuple[Headline, ...]:
    H = Headline
    items = [
        H("base_final_loss", dag.WORLD, "base model: final training loss", "loss", _base_final_loss),
        H("base_greedy_acc_id", dag.WORLD, "base model: greedy accuracy, in-domain", "%", _base_accuracy("test_id")),
        H(
            "base_greedy_acc_ood",
            dag.WORLD,
            "base model: greedy accuracy, out-of-domain",
            "%",
            _base_accuracy("test_ood"),
        ),
        H(
            "ig_completeness_error_sensitivity_j",
            dag.IG_ATTRIBUTION,
            "IG completeness error, median at the sensitivity check's J (tiny: the paper's J = 50)",
            "%",
            _completeness_at_sensitivity_j,
        ),
        H(
            "important_segment_share",
            dag.CONFIDENCE_DELTA,
            "share of segments important (selection τ, β)",
            "%",
            _important_segment_share,
        ),
        H(
            "delta_gap",
            dag.CONFIDENCE_DELTA,
            "Δ confidence gap, important − unimportant (segments pooled, groups' τ, β)",
            "Δ",
            _delta_gap,
            effect=True,
            paper_sign=1,
        ),
        H(
            "delta_trace_difference",
            dag.CONFIDENCE_DELTA,
            "Δ confidence, within-trace difference important − unimportant",
            "Δ",
            _delta_trace_difference,
            effect=True,
            paper_sign=1,
        ),
        H("tau_star", dag.CONFIDENCE_DELTA, "τ* of the greedy search", "τ", _selected("tau_search", "tau")),
        H(
            "beta_star",
            dag.CONFIDENCE_DELTA,
            "β with the largest Δ gap under τ*",
            "β",
            _selected("beta_ablation", "beta"),
        ),
    ]
    for column, name, sign in (("log_ppl", "log-perplexity", -1), ("entropy", "entropy", -1), ("bleu", "BLEU", -1)):
        items += [
            H(
                f"{column}_trace_difference",
                dag.LINGUISTICS,
                f"{name}, within-trace difference important − unimportant",
                column,
                _linguistics(column, "trace_difference"),
                effect=True,
                paper_sign=sign,
            ),
            H(
                f"{column}_trace_p_holm",
                dag.LINGUISTICS,
                f"{name}: Wilcoxon p over traces, Holm",
                "p",
                _linguistics(column, "trace_p_holm"),
            ),
        ]
    items += [
        H(
            "cdf_share_correct",
            dag.DISTRIBUTION_POSITION,
            "share of segments holding the CDF mass, correct traces",
            "%",
            _cdf_share,
        ),
        H(
            "judge_truncated_important",
            dag.TRUNCATION_JUDGE,
            "judged truncated: important segments",
            "%",
            _truncated_share("important"),
        ),
        H(
            "judge_truncated_unimportant",
            dag.TRUNCATION_JUDGE,
            "judged truncated: unimportant segments",
            "%",
            _truncated_share("unimportant"),
        ),
        H(
            "judge_truncated_difference",
            dag.TRUNCATION_JUDGE,
            "judged truncated: unimportant − important",
            "pp",
            _truncated_difference,
            effect=True,
            paper_sign=1,
        ),
        H("judge_precision", dag.TRUNCATION_JUDGE, "judge precision (world ground truth)", "ratio", _judge_precision),
    ]
    metrics = (
        ("greedy_acc", "greedy accuracy", 1),
        ("greedy_tokens", "greedy length", -1),
        ("pass@1", "sampled pass@1", 1),
        ("sample_tokens", "sampled length", -1),
    )
    for source in ("self", "reference"):
        for column, name, sign in metrics:
            items.append(
                H(
                    f"table1_{column.replace('@', '')}_change_{source}",
                    dag.EVALUATION,
                    f"Table 1: {name}, selective vs full, {source} traces",
                    "% of full",
                    _table1_change(source, column),
                    effect=True,
                    paper_sign=sign,
                )
            )
        for column, name in (("greedy_acc", "greedy accuracy"), ("pass@1", "sampled pass@1")):
            items.append(
                H(
                    f"table1_{column.replace('@', '')}_p_{source}",
                    dag.EVALUATION,
                    f"Table 1: {name}, seed x question bootstrap p, {source} traces",
                    "p",
                    _table1_p(source, column),
                )
            )
    for table in ("2", "3", "4"):
        items.append(
            H(
                f"table{table}_best_greedy_acc",
                dag.EVALUATION,
                f"Table {table}: best row's greedy accuracy",
                "%",
                _table_best(table),
                describe=lambda a, table=table: _best_label(a, table),
            )
        )
        if table != "4":
            items.append(
                H(
                    f"table{table}_ours_minus_best_other",
                    dag.EVALUATION,
                    f"Table {table}: greedy accuracy, ours − best other row",
                    "pp",
                    _ours_minus_best_other(table),
                    effect=True,
                    paper_sign=1,
                )
            )
    items += [
        H("fig5_best_tau", dag.EVALUATION, "Fig. 5: τ with the best sampled pass@1", "τ", _fig5("tau")),
        H("fig5_best_beta", dag.EVALUATION, "Fig. 5: β with the best sampled pass@1", "β", _fig5("beta")),
    ]
    names = [h.name for h in items]
    assert len(names) == len(set(names)), "headline names must be unique"
    return tuple(items)


#: Every headline, in stage order.
HEADLINES: tuple[Headline, ...] = _headlines()
BY_NAME = {h.name: h for h in HEADLINES}


def read_headlines(
    profile: Profile, root: str | Path | None = None, headlines: tuple[Headline, ...] = HEADLINES
) -> list[Reading]:
    """Every headline of the run in ``results_dir(profile)``; one :class:`Reading` each, never raising for
    an absent artifact or value (its ``missing`` says what is absent)."""
    artifacts = Artifacts(profile, root)
    readings = []
    for headline in headlines:
        try:
            value = headline.read(artifacts)
            note = headline.describe(artifacts) if headline.describe else ""
            readings.append(Reading(headline, value, note=note))
        except Missing as missing:
            readings.append(Reading(headline, None, missing=str(missing)))
    return readings
