"""The noise floor of a profile's results: ``python -m segattr_utils.robustness --profile tiny`` (``make robustness``).

One ``make reproduce`` is one draw of a noisy process: the same code and seed on another CPU trained a
base model with final loss 0.0893 instead of 0.0895, and every downstream number moved (README, "How far
these numbers move across machines"). This module measures how far: it reruns the pipeline with other
seeds and reports, for every headline number (:mod:`segattr_utils.report.headlines`), the main run's
value, each seed's, their spread, and the noise floor that a claimed effect has to exceed.

**What varies between draws.** The profile's ``seed`` seeds the base model's initialisation and training
data order (notebook 00), and every sampling step after it: the training traces (01), the J-sensitivity
sample (03), the forced answers (04), the judge's training triples, initialisation and sampling (07) and
the evaluation samples (09). It also seeds the tiny world's questions and teacher traces, unless
``world.seed`` is set (:func:`segattr_utils.stages.stage00_world.world_seed`). Each draw sets ``seed: s``
and pins ``world.seed`` to the main run's world seed: the questions (training and both test suites), the
teacher traces and so the tokenizer are those of the main run, and only the model and everything sampled
from it differ, so like is compared with like (the same test questions in every draw). The SFT runs of
notebook 08 keep their own seeds (``training.main_seeds``, ``ablation_seeds``), which are the same in
every draw; they start from each draw's base model, so they differ too.

**Draws.** The main run is ``results/<profile>/`` (``results_dir`` of the profile, as ``make reproduce``
leaves it): it is read, never rerun, and counts as one draw. Each seed of ``robustness.seeds`` is a run of
every notebook with the existing reproduce machinery (:func:`segattr_utils.reproduce.run_papermill`) on a
profile saved to ``<robustness root>/<profile>/seed-<s>/profile.yaml`` (the profile itself with ``seed``,
``world.seed`` and ``results_root`` set, nothing else changed); its results land in
``<robustness root>/<profile>/seed-<s>/<profile>/``; their tables are committed (not the executed notebooks,
figures, models or record stores: ``.gitignore``), so the seeds can run on different days (``--seeds 1``, later
``--seeds 2``) and ``--report-only`` rebuilds the report over every draw that exists. A rerun resumes each seed's run where it stopped (every stage resumes
from its artifacts); ``--fresh`` deletes the seeds' folders first (never the main run's); ``--report-only`` only
rebuilds the report from what exists.

**Settings** (``robustness`` in the profile)::

    robustness:
      seeds: [1, 2]          # the draws besides the main run (not the profile's own seed)
      results_root: null     # default results/robustness; a relative path is relative to the project root

The tiny profile draws seeds 1 and 2 (about 50-75 min each on 2 CPU cores, as one ``make reproduce``);
smoke one seed; the paper profile has the setting commented out (each draw is a whole paper run: about
252 GPU-hours by ``make gpu-hours``), and a profile without it is refused.

**The report**, ``<robustness root>/<profile>/report.md`` and ``headlines.csv``: per headline the main
run's value, each seed's, the mean, SD (ddof 1) and min-max over every draw, and the floor
(:func:`noise_floor`: the largest distance of a seed's value from the main run's); for the paper's
directional claims the status of :func:`claim_status`. A headline whose artifact is absent reads
"missing" with the reason. Then the base model's final training loss and each draw's wall time.
"""

from __future__ import annotations

import argparse
import copy
import math
import shutil
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import dag
from .artifacts import atomic_write_text, read_json, read_table, write_table
from .config import Profile, find_project_root, load_profile, results_dir, save_profile
from .report.headlines import Headline, Reading, read_headlines
from .reproduce import notebooks_in_order, run_papermill

REPORT_FILE = "report.md"
HEADLINES_FILE = "headlines.csv"
SEED_PROFILE_FILE = "profile.yaml"
MISSING = "missing"
NOT_AVAILABLE = "n/a"

REPRODUCED = "reproduced"
WITHIN_NOISE = "within noise"
NOT_REPRODUCED = "not reproduced"
UNDETERMINED = "undetermined"


class RobustnessUnavailable(ValueError):
    """The profile has no (usable) ``robustness`` setting."""


# ---------------------------------------------------------------------------------------------
# Settings and the per-seed profiles


def robustness_settings(profile: Profile) -> dict:
    """``{"seeds": [...], "results_root": str | None}`` from the profile's ``robustness`` setting; raises
    :class:`RobustnessUnavailable` when the profile has none, or its seeds are not usable (:func:`check_seeds`)."""
    settings = profile.get("robustness")
    if not isinstance(settings, dict) or not settings.get("seeds"):
        raise RobustnessUnavailable(
            f"profile {profile.name!r} has no robustness setting (robustness: {{seeds: [1, 2]}}); "
            "every draw is a whole run of the profile's notebooks"
            + (" (for the paper profile: about 252 GPU-hours each, see paper.yaml)" if profile["kind"] == "hub" else "")
        )
    return {"seeds": check_seeds(profile, settings["seeds"]), "results_root": settings.get("results_root")}


def check_seeds(profile: Profile, seeds: Sequence[int]) -> list[int]:
    """``seeds`` as ints; :class:`RobustnessUnavailable` when one is listed twice or is the profile's own seed
    (that draw is the main run)."""
    seeds = [int(seed) for seed in seeds]
    if not seeds:
        raise RobustnessUnavailable("no seed to draw")
    if len(set(seeds)) != len(seeds):
        raise RobustnessUnavailable(f"robustness seeds {seeds} list a seed twice")
    if int(profile["seed"]) in seeds:
        raise RobustnessUnavailable(
            f"robustness seeds {seeds} list the profile's own seed {profile['seed']}: that draw is the main run "
            f"in {results_dir(profile)}; list other seeds"
        )
    return seeds


def robustness_dir(profile: Profile, root: str | Path | None = None) -> Path:
    """``<robustness.results_root or results/robustness>/<profile>/``: the report and the seeds' runs."""
    base = (profile.get("robustness") or {}).get("results_root")
    project = find_project_root(root)
    folder = Path(base) if base else project / "results" / "robustness"
    if not folder.is_absolute():
        folder = project / folder
    return folder / profile.name


def seed_dir(profile: Profile, seed: int, root: str | Path | None = None) -> Path:
    """The folder of one seed's draw: its saved profile and its results."""
    return robustness_dir(profile, root) / f"seed-{int(seed)}"


def seed_profile(profile: Profile, seed: int, root: str | Path | None = None) -> Profile:
    """``profile`` with ``seed: seed``, ``results_root`` in the seed's folder (absolute: the notebooks run
    in ``notebooks/``) and ``world.seed`` pinned to the main run's world seed (world profiles), so that
    the draw retrains the model on the same questions and teacher traces. Nothing else changes."""
    from .stages.stage00_world import world_seed

    draw = Profile(copy.deepcopy(dict(profile)))
    draw["seed"] = int(seed)
    draw["results_root"] = str(seed_dir(profile, seed, root).resolve())
    if isinstance(draw.get("world"), dict):
        draw["world"]["seed"] = world_seed(profile)
    return draw


@dataclass(frozen=True)
class Draw:
    """One run of the profile: the main run (``main``) or a seed's; ``profile`` points at its results."""

    label: str
    seed: int
    profile: Profile
    main: bool = False

    @property
    def results(self) -> Path:
        return results_dir(self.profile)


def draws(profile: Profile, seeds: Sequence[int], root: str | Path | None = None) -> list[Draw]:
    """The main run, then one draw per seed."""
    main = Draw(f"main (seed {int(profile['seed'])})", int(profile["seed"]), profile, main=True)
    return [main] + [Draw(f"seed {int(s)}", int(s), seed_profile(profile, s, root)) for s in seeds]


# ---------------------------------------------------------------------------------------------
# Statistics and claims


def _present(values) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def noise_floor(main: float | None, others: Sequence[float | None]) -> float | None:
    """The largest distance of another draw's value from the main run's, ``max |v_s - v_main|`` over the
    draws that have a value; None without the main value or another draw."""
    others = _present(others)
    if not _present([main]) or not others:
        return None
    return max(abs(value - float(main)) for value in others)


def summarise(main: float | None, others: Sequence[float | None]) -> dict:
    """Over every draw that has a value (the main run and the others): ``draws`` (how many), ``mean``, ``sd`` (ddof 1;
    None under two draws), ``min``, ``max``; and ``floor`` (:func:`noise_floor`). None where undefined."""
    values = _present([main, *others])
    return {
        "draws": len(values),
        "mean": statistics.fmean(values) if values else None,
        "sd": statistics.stdev(values) if len(values) >= 2 else None,
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "floor": noise_floor(main, others),
    }


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)


def claim_status(
    effect: float | None, floor: float | None, draws: Sequence[float | None] = (), paper_sign: int | None = None
) -> str:
    """Classify a measured effect against the noise floor.

    ``effect`` is the claim's signed effect in the main run (e.g. selective minus full-CoT SFT), ``floor``
    the noise floor of that number (:func:`noise_floor`, >= 0), ``draws`` the same effect in the other
    draws (None entries are skipped), ``paper_sign`` the direction the paper reports (+1, -1, or None for
    no direction). In this order:

    1. ``"undetermined"``: ``effect`` or ``floor`` is None or NaN (no second draw, or the effect is missing).
    2. ``"within noise"``: ``|effect| <= floor``. The draws move the number by as much as it measures, so
       not even its sign is established; this holds whether or not the sign agrees with the paper.
    3. ``"not reproduced"``: ``|effect| > floor`` but a draw's effect has the other sign or is 0 (the sign
       flips between draws), or the effect's sign is not ``paper_sign`` (a stable effect against the
       paper's direction).
    4. ``"reproduced"``: ``|effect| > floor``, the same sign in every draw, and the paper's sign when one
       is given.

    With :func:`noise_floor` over the same draws, ``|effect| > floor`` already implies that no draw flips
    the sign; the check matters when the floor comes from elsewhere (another headline, another machine).
    """
    if effect is None or floor is None or math.isnan(float(effect)) or math.isnan(float(floor)):
        return UNDETERMINED
    effect, floor = float(effect), float(floor)
    if abs(effect) <= floor:
        return WITHIN_NOISE
    direction = _sign(effect)
    if any(_sign(value) != direction for value in _present(draws)):
        return NOT_REPRODUCED
    if paper_sign is not None and direction != _sign(paper_sign):
        return NOT_REPRODUCED
    return REPRODUCED


# ---------------------------------------------------------------------------------------------
# The report


def _number(value: float | None) -> str:
    if value is None:
        return NOT_AVAILABLE
    if value == 0:
        return "0"
    return f"{value:.4g}"


def headline_table(draw_list: Sequence[Draw], readings: Sequence[Sequence[Reading]]) -> pd.DataFrame:
    """One row per headline: its value in every draw (``missing`` where absent), the statistics of
    :func:`summarise`, and for effects the :func:`claim_status` of the main run's value. ``readings[i]``
    are the readings of ``draw_list[i]``, in :data:`HEADLINES` order."""
    rows = []
    headlines: list[Headline] = [r.headline for r in readings[0]]
    for index, headline in enumerate(headlines):
        cells = [draw_readings[index] for draw_readings in readings]
        main_values = [c.value for c, d in zip(cells, draw_list) if d.main]
        main = main_values[0] if main_values else None
        others = [c.value for c, d in zip(cells, draw_list) if not d.main]
        stats = summarise(main, others)
        row = {
            "headline": headline.name,
            "stage": headline.stage.folder,
            "label": headline.label,
            "unit": headline.unit,
        }
        for cell, draw in zip(cells, draw_list):
            row["main" if draw.main else f"seed_{draw.seed}"] = MISSING if cell.value is None else cell.value
        row.update({key: NOT_AVAILABLE if value is None else value for key, value in stats.items()})
        row["paper_sign"] = "" if headline.paper_sign is None else f"{headline.paper_sign:+d}"
        row["status"] = claim_status(main, stats["floor"], others, headline.paper_sign) if headline.effect else ""
        # a draw that has not run at all is named once in the report, not in every row
        notes = [f"{d.label}: {c.missing}" for c, d in zip(cells, draw_list) if c.value is None and d.results.exists()]
        notes += [f"{d.label}: {c.note}" for c, d in zip(cells, draw_list) if c.note]
        row["notes"] = "; ".join(notes)
        rows.append(row)
    return pd.DataFrame(rows)


def _run_facts(draw: Draw) -> dict:
    """The base model's training summary and the wall time of a draw (what exists)."""
    facts = {"draw": draw.label, "seed": draw.seed, "results": str(draw.results)}
    training = draw.results / dag.WORLD.folder / dag.WORLD.artifacts["base_training"]
    if training.exists():
        summary = read_json(training)
        facts.update(final_loss=summary.get("final_loss"), steps=summary.get("steps"))
    times = draw.results / dag.RUN_TIMES_FILE
    if times.exists():
        frame = read_table(times)
        facts["notebooks_run"] = len(frame)
        facts["wall_minutes"] = float(frame["wall_seconds"].sum()) / 60
        facts["resumed"] = bool(frame["resumed"].astype(str).str.lower().eq("true").any())
    return facts


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def render_report(
    profile: Profile,
    draw_list: Sequence[Draw],
    readings: Sequence[Sequence[Reading]],
    table: pd.DataFrame,
    facts: list[dict],
) -> str:
    """The Markdown report of :func:`write_report` (``readings[i]`` of ``draw_list[i]``, ``table`` from
    :func:`headline_table`, ``facts`` the base model and wall time of each draw)."""
    project = find_project_root()
    seeds = [d.seed for d in draw_list if not d.main]
    lines = [
        f"# Noise floor of the {profile.name} profile (`make robustness PROFILE={profile.name}`)",
        "",
        f"Draws: the main run in `{_relative(results_dir(profile), project)}` (seed {profile['seed']}, not rerun) and "
        f"seeds {', '.join(map(str, seeds)) or 'none'} in `{_relative(robustness_dir(profile), project)}/seed-<s>/`. "
        "Each draw retrains the base model with its seed and reruns every notebook; the world (questions, "
        "teacher traces) is the main run's in every draw (`world.seed` pinned), so every draw answers the same "
        "test questions. Generated by `segattr_utils.robustness`; headlines from `segattr_utils.report.headlines`.",
        "",
        "Statistics over every draw that has the value: mean, SD (ddof 1), min-max. **Floor** = the largest "
        "|seed value − main value|. **Status** (directional claims of the paper; sign = the paper's direction): "
        "*within noise* when |main effect| ≤ floor; *not reproduced* when it exceeds the floor but a draw has the "
        "other sign, or its sign is not the paper's; *reproduced* when it exceeds the floor with the paper's sign "
        "in every draw; *undetermined* without a second draw.",
        "",
    ]
    absent = [d.label for d in draw_list if not d.results.exists()]
    if absent:
        lines += [f"Not run yet (no results folder; every value reads missing): {', '.join(absent)}.", ""]
    draw_columns = ["main" if d.main else f"seed_{d.seed}" for d in draw_list]
    header = ["headline", "unit", *[d.label for d in draw_list], "mean", "SD", "min–max", "floor", "sign", "status"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.to_dict("records"):
        values = [row[c] if isinstance(row[c], str) else _number(row[c]) for c in draw_columns]
        stats = {
            k: row[k] if isinstance(row[k], str) else _number(row[k]) for k in ("mean", "sd", "min", "max", "floor")
        }
        span = NOT_AVAILABLE if stats["min"] == NOT_AVAILABLE else f"{stats['min']} – {stats['max']}"
        lines.append(
            "| "
            + " | ".join(
                [
                    f"{row['label']} (`{row['headline']}`)",
                    row["unit"],
                    *values,
                    stats["mean"],
                    stats["sd"],
                    span,
                    stats["floor"],
                    row["paper_sign"],
                    row["status"],
                ]
            )
            + " |"
        )
    labelled = [i for i, r in enumerate(readings[0]) if r.headline.describe is not None]
    if labelled:
        lines += ["", "## Best rows per draw", "", "| table | " + " | ".join(d.label for d in draw_list) + " |"]
        lines.append("|---|" + "---|" * len(draw_list))
        for i in labelled:
            cells = [r[i].note if r[i].value is not None else MISSING for r in readings]
            lines.append(f"| {readings[0][i].headline.label} | " + " | ".join(cells) + " |")
    missing = [
        f"- `{r[i].headline.name}`, {d.label}: {r[i].missing}"
        for i in range(len(readings[0]))
        for r, d in zip(readings, draw_list)
        if r[i].value is None and d.results.exists()
    ]
    if missing:
        lines += ["", "## Missing values (in draws that ran)", "", *missing]
    lines += ["", "## Base model and wall time per draw", ""]
    lines += [
        "| draw | final training loss | steps | notebooks run | wall time (min) | resumed | results |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for fact in facts:
        lines.append(
            f"| {fact['draw']} | {_number(fact.get('final_loss')) if 'final_loss' in fact else MISSING} "
            f"| {fact.get('steps', MISSING)} | {fact.get('notebooks_run', 0)} "
            f"| {_number(fact['wall_minutes']) if 'wall_minutes' in fact else NOT_AVAILABLE} "
            f"| {str(fact['resumed']).lower() if 'resumed' in fact else NOT_AVAILABLE} "
            f"| `{_relative(Path(fact['results']), project)}` |"
        )
    lines += [
        "",
        "Wall times are sums of each draw's `run_times.csv` (a resumed notebook's time covers only the work that was left).",
    ]
    return "\n".join(lines) + "\n"


def write_report(profile: Profile, seeds: Sequence[int], root: str | Path | None = None) -> tuple[Path, Path]:
    """Read every headline of the main run and of each seed's draw; write ``report.md`` and
    ``headlines.csv`` under :func:`robustness_dir`. Returns their paths."""
    draw_list = draws(profile, seeds, root)
    readings = [read_headlines(d.profile) for d in draw_list]
    table = headline_table(draw_list, readings)
    folder = robustness_dir(profile, root)
    csv_path = write_table(folder / HEADLINES_FILE, table)
    facts = [_run_facts(d) for d in draw_list]
    report = atomic_write_text(folder / REPORT_FILE, render_report(profile, draw_list, readings, table, facts))
    return report, csv_path


# ---------------------------------------------------------------------------------------------
# Running the draws

Runner = Callable[[str, list[Path], Path], int]


def run_draws(
    profile: Profile,
    seeds: Sequence[int],
    notebooks: list[Path],
    *,
    runner: Runner | None = None,
    fresh: bool = False,
    root: str | Path | None = None,
) -> int:
    """Run ``notebooks`` for every seed's draw (never the main run): save the seed's profile and hand its
    path to ``runner`` (default :func:`segattr_utils.reproduce.run_papermill`, which resumes from the
    draw's artifacts). Stops at the first failing draw and returns its status; 0 when every draw ran."""
    runner = runner or run_papermill
    for seed in seeds:
        folder = seed_dir(profile, seed, root)
        if fresh:
            shutil.rmtree(folder, ignore_errors=True)
        draw = seed_profile(profile, seed, root)
        path = save_profile(draw, folder / SEED_PROFILE_FILE)
        print(f"[robustness:{profile.name}] seed {seed}: notebooks -> {results_dir(draw)}", flush=True)
        status = runner(str(path), notebooks, results_dir(draw))
        if status:
            print(f"[robustness:{profile.name}] seed {seed} FAILED; the report covers what exists", file=sys.stderr)
            return status
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m segattr_utils.robustness",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", default="tiny", help="smoke, tiny, paper, or a path to a profile YAML")
    parser.add_argument("--seeds", nargs="*", type=int, help="override robustness.seeds")
    parser.add_argument("--only", nargs="*", help="run only notebooks whose name starts with these prefixes")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from what exists")
    parser.add_argument("--fresh", action="store_true", help="delete the seeds' folders first (not the main run)")
    return parser


def main(argv: list[str] | None = None, runner: Runner | None = None) -> int:
    args = build_parser().parse_args(argv)
    profile = load_profile(args.profile)
    try:
        seeds = robustness_settings(profile)["seeds"] if args.seeds is None else check_seeds(profile, args.seeds)
    except RobustnessUnavailable as error:
        print(f"[robustness] {error}", file=sys.stderr)
        return 2
    root = find_project_root()
    status = 0
    if not args.report_only:
        notebooks = notebooks_in_order(root / "notebooks", args.only)
        if not notebooks:
            print("no notebooks found under notebooks/", file=sys.stderr)
            return 1
        status = run_draws(profile, seeds, notebooks, runner=runner, fresh=args.fresh)
    report, table = write_report(profile, seeds)
    print(f"[robustness:{profile.name}] report: {report} and {table}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
