"""Stage 09: evaluate the base model and every fine-tuned run (Sec. 4.1-4.5, Tables 1-4, 7, Fig. 5).

Each model answers every question of every benchmark once greedily and ``n_samples`` times at the
profile's temperature (paper: T = 0.6, top-p 1.0); answers are graded by the last ``\\boxed{}`` with
a numeric comparison, then math-verify (letters for multiple choice; see :mod:`segattr_utils.llm.grading`
for where this differs from the authors' grader). Per benchmark: greedy accuracy, pass@1 and pass@k with
the unbiased estimator, and mean output tokens; "overall" is the macro average over the benchmarks listed
in ``evaluation.overall`` (App. C.3; Table 1 averages six benchmarks, AIME25 is reported beside them).
Runs of one setting that differ only in their seed are summarised as mean ± standard deviation, and
full-CoT vs segment-selective SFT is compared with paired tests (over seeds, and over questions). The
tables' rows, cells and files are :mod:`segattr_utils.report.tables`'s.

Generation is batched and resumable (one record store per model), so an interrupted evaluation
continues where it stopped. With ``evaluation.processes`` > 1 (Hugging Face backend) the models are dealt
over that many processes under ``accelerate launch``, each generating its models' outputs with
``evaluation.threads_per_process`` torch threads (two single-threaded processes generate ~1.4x the
tokens per second of one two-threaded process on a 2-core CPU: the tiny model's decoding steps use
two threads poorly); this process then grades every model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import dag, distributed, services
from ..artifacts import RecordStore, read_table, write_table
from ..config import Profile
from ..data.questions import load_hub_questions
from ..llm.evaluation import Benchmark, generate_outputs, grade_outputs, pass_at_k
from ..llm.generation import SamplingSettings
from ..measures.trace_stats import holm, seed_question_bootstrap
from ..progress import progress
from ..report import figures
from ..report.paper_vs_run import comparison_row, paper
from ..report.tables import (
    BASE,
    RANKING_METRICS,
    bootstrap_p_text,
    common_seeds,
    comparison_table,
    fig5_points,
    on_seeds,
    save_paper_table,
    table1,
    table8,
    table_reference,
    table_settings,
)
from . import StageResult, finish

STAGE = dag.EVALUATION


def benchmarks(profile: Profile) -> list[dict]:
    """The evaluation suites: ``{"name", "domain", "n_samples", "choices"?, ...}``.

    World profiles evaluate on the world's in-domain and out-of-domain suites; the paper profile on
    the hub benchmarks listed under ``evaluation.benchmarks``.
    """
    cfg = profile["evaluation"]
    if profile["kind"] == "world":
        return [
            {"name": suite, "suite": suite, "domain": domain, "n_samples": int(cfg["n_samples"])}
            for suite, domain in (("test_id", "in"), ("test_ood", "out"))
        ]
    return [dict(spec, n_samples=int(spec.get("n_samples", cfg["n_samples"]))) for spec in cfg["benchmarks"]]


def benchmark_questions(profile: Profile, bench: dict) -> pd.DataFrame:
    """Questions of one benchmark (``id``, ``question``, ``answer``), at most ``evaluation.limit``."""
    limit = profile.get_path("evaluation.limit")
    if profile["kind"] == "world":
        questions = services.load_questions(profile, bench["suite"])
    else:
        questions = pd.DataFrame(load_hub_questions(bench, bench["name"]))
    return questions.head(limit).reset_index(drop=True) if limit else questions


def models_to_evaluate(profile: Profile) -> list[dict]:
    """The base model and every finished SFT run (``runs`` of stage 08)."""
    models = [{"model": BASE, "path": None, "setting": BASE, "seed": None}]
    runs_path = dag.SELECTIVE_SFT.path(profile, "runs")
    if runs_path.exists():
        runs = read_table(runs_path)
        for run in runs.to_dict("records"):
            models.append(
                {
                    "model": run["run"],
                    "path": str(dag.SELECTIVE_SFT.path(profile, "models") / run["run"]),
                    "setting": run["setting"],
                    "seed": int(run["seed"]),
                }
            )
    return models


def evaluation_benchmarks(profile: Profile) -> list[Benchmark]:
    """:func:`benchmarks` with their questions, as :class:`segattr_utils.llm.evaluation.Benchmark`."""
    out = []
    for bench in benchmarks(profile):
        choices = "ABCDEFGHIJ"[: len(bench["choices"]["incorrect"]) + 1] if "choices" in bench else None
        out.append(
            Benchmark(
                name=bench["name"],
                domain=bench["domain"],
                questions=benchmark_questions(profile, bench),
                n_samples=bench["n_samples"],
                choices=choices,
            )
        )
    return out


def evaluation_processes(profile: Profile) -> tuple[int, int]:
    """(processes, torch threads per process) of the evaluation from ``evaluation.processes`` and
    ``evaluation.threads_per_process`` (:func:`segattr_utils.distributed.resolve_processes`). Several
    processes need the Hugging Face backend: a vLLM engine spreads itself over the GPUs
    (``generation.vllm.data_parallel_size``)."""
    cfg = profile["evaluation"]
    processes, threads = distributed.resolve_processes(cfg, profile["kind"], "evaluation")
    backend = cfg["backend"]
    if backend == "auto":
        backend = "vllm" if services.vllm_available() else "hf"
    if processes > 1 and backend != "hf":
        raise ValueError(
            f"evaluation.processes: {processes} needs evaluation.backend: hf (it is {cfg.get('backend')!r}, "
            f"which resolves to {backend}); vLLM spreads one model over the GPUs itself "
            "(generation.vllm.data_parallel_size): set evaluation.processes: 1"
        )
    return processes, threads


def _evaluation_arguments(profile: Profile, entry: dict, device: str | None = None) -> dict:
    """What :func:`segattr_utils.llm.evaluation.generate_outputs` needs for one model (``entry`` of
    :func:`models_to_evaluate`): its loader, the benchmarks, its record store and the sampling settings."""
    cfg = profile["evaluation"]
    backend = cfg["backend"]
    return {
        "load": lambda: services.load_generator(profile, "student", backend, path=entry["path"], device=device),
        "benchmarks": evaluation_benchmarks(profile),
        "store_path": STAGE.path(profile, "outputs") / f"{entry['model']}.jsonl",
        "greedy": SamplingSettings(temperature=0.0, top_p=1.0, max_new_tokens=cfg["max_new_tokens"]),
        "sampled": SamplingSettings(
            temperature=cfg["temperature"], top_p=cfg["top_p"], max_new_tokens=cfg["max_new_tokens"]
        ),
        "batch_size": cfg["batch_size"],
        "seed": int(profile["seed"]),
        "make_prompt": services.prompt,
    }


def evaluate_model(profile: Profile, entry: dict) -> pd.DataFrame:
    """Greedy and sampled outputs of one model on every benchmark, graded; one row per output (Sec. 4.1).
    The model is sampled with ``evaluation.backend`` (vLLM: the weights are loaded by the engine only)
    and released before the next model is evaluated; outputs already in its store are not regenerated."""
    arguments = _evaluation_arguments(profile, entry)
    generate_outputs(**arguments)
    return grade_outputs(arguments["benchmarks"], arguments["store_path"], entry["model"])


def _model_key(entry: dict) -> str:
    return entry["model"]


def evaluate_all(profile: Profile) -> pd.DataFrame:
    """Evaluate every model (resumable); writes ``graded`` (one row per output) and returns it. With
    ``evaluation.processes`` > 1 the models' outputs are generated first by that many processes
    (:func:`generate_share`, the ``evaluation`` job of :mod:`segattr_utils.workers`), which mark each
    finished model in ``generated_models.jsonl``; models a previous launch finished are not dealt again."""
    models = models_to_evaluate(profile)
    processes, threads = evaluation_processes(profile)
    if processes > 1:
        store = RecordStore(STAGE.path(profile, "generated_store"), key_fn=_model_key)
        distributed.merge_rank_stores(store, [_model_key(entry) for entry in models])
        todo = [entry for entry in models if _model_key(entry) not in store]
        if todo:
            distributed.launch_over_processes(profile, "evaluation", todo, store, processes, threads, "evaluate")
    frames = [
        evaluate_model(profile, entry)
        for entry in progress(models, desc="evaluate" if processes == 1 else "grade", unit="model")
    ]
    graded = pd.concat(frames, ignore_index=True)
    write_table(STAGE.path(profile, "graded"), graded)
    return graded


def generate_share(profile: Profile, models: list[dict], store: RecordStore) -> int:
    """This process's share of ``models`` (a rank under ``accelerate launch``): dealt in turn over the ranks
    (:func:`segattr_utils.distributed.share_of_this_process`); each model's outputs generated into its own
    record store, then the model recorded in this rank's store. Returns how many models this rank did."""
    import torch

    on_cpu = profile["kind"] == "world" or not torch.cuda.is_available()
    state, mine, own = distributed.share_of_this_process(models, store, cpu=on_cpu)
    if not mine:
        return 0
    torch.set_num_threads(evaluation_processes(profile)[1])
    device = "cpu" if on_cpu else str(state.device)
    for entry in progress(mine, desc=f"evaluate, rank {state.process_index}", disable=not state.is_local_main_process):
        generate_outputs(**_evaluation_arguments(profile, entry, device))
        own.append([{"model": _model_key(entry)}])
    return len(mine)


# ---------------------------------------------------------------------------------------------
# Metrics


def benchmark_metrics(graded: pd.DataFrame, ks: list[int]) -> pd.DataFrame:
    """Per model and benchmark: greedy accuracy and tokens, pass@k (unbiased) and sampled tokens."""
    rows = []
    for (model, bench), group in graded.groupby(["model", "benchmark"], sort=False):
        greedy = group[group["mode"] == "greedy"]
        sampled = group[group["mode"] == "sample"]
        row = {
            "model": model,
            "benchmark": bench,
            "domain": group["domain"].iloc[0],
            "greedy_acc": greedy["correct"].mean() * 100,
            "greedy_tokens": greedy["n_tokens"].mean(),
        }
        if len(sampled):
            per_question = sampled.groupby("question_id")["correct"].agg(["sum", "count"])
            for k in ks:
                if k <= per_question["count"].min():
                    row[f"pass@{k}"] = 100 * float(
                        np.mean([pass_at_k(int(n), int(c), k) for c, n in per_question.itertuples(index=False)])
                    )
            row["sample_tokens"] = sampled["n_tokens"].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def overall_metrics(metrics: pd.DataFrame, benchmarks: list[str] | None = None) -> pd.DataFrame:
    """Macro average over ``benchmarks`` (all when None; each counts equally, App. C.3), per model.

    The paper's "Overall" (Table 1) averages MATH500, AMC23, AIME24, GPQA, Minerva and OlympiadBench,
    not AIME25 (``evaluation.overall`` of the paper profile).
    """
    if benchmarks is not None:
        unknown = sorted(set(benchmarks) - set(metrics["benchmark"]))
        if unknown:
            raise ValueError(f"overall benchmarks {unknown} were not evaluated")
        metrics = metrics[metrics["benchmark"].isin(benchmarks)]
    value_columns = [c for c in metrics.columns if c not in ("model", "benchmark", "domain")]
    return metrics.groupby("model", sort=False)[value_columns].mean().reset_index()


def attach_runs(profile: Profile, table: pd.DataFrame) -> pd.DataFrame:
    """Add each model's run description (setting, variant, source, seed, ...) from stage 08."""
    runs_path = dag.SELECTIVE_SFT.path(profile, "runs")
    runs = read_table(runs_path) if runs_path.exists() else pd.DataFrame(columns=["run"])
    info = runs.rename(columns={"run": "model"})
    merged = table.merge(info, on="model", how="left")
    merged.loc[merged["model"] == BASE, ["setting", "label", "variant"]] = [BASE, "Base model (no SFT)", BASE]
    return merged


#: The per-question value behind each macro metric: (decoding mode, column of the graded outputs).
PER_QUESTION = {
    "greedy_acc": ("greedy", "correct"),
    "pass@1": ("sample", "correct"),
    "greedy_tokens": ("greedy", "n_tokens"),
    "sample_tokens": ("sample", "n_tokens"),
}


def per_question_scores(per_model: pd.DataFrame, graded: pd.DataFrame, column: str) -> pd.DataFrame:
    """One row per (setting, training seed, question) with the metric's per-question value of that decoding
    mode (:data:`PER_QUESTION`: correctness as a fraction, or output tokens), averaged over its samples; a
    question is ``benchmark/question_id``."""
    mode, value = PER_QUESTION[column]
    runs = per_model[["model", "setting", "seed"]].drop_duplicates("model")
    outputs = graded[graded["mode"] == mode].merge(runs, on="model", how="inner")
    scores = outputs.groupby(["setting", "seed", "benchmark", "question_id"], as_index=False)[value].mean()
    scores["question"] = scores["benchmark"].astype(str) + "/" + scores["question_id"].astype(str)
    scores["score"] = scores[value].astype(float)
    return scores[["setting", "seed", "question", "score"]]


def paired_tests(
    per_model: pd.DataFrame, graded: pd.DataFrame, a: str, b: str, column: str, *, n_boot: int = 10_000
) -> dict:
    """Compare setting ``b`` with ``a`` (e.g. selective vs full) on one metric, like with like (the seeds
    both were trained with, the questions both answered).

    The test to read is the two-level bootstrap over training seeds and questions
    (:func:`segattr_utils.measures.trace_stats.seed_question_bootstrap`): it carries the training-seed
    variance and the sampling of questions at once. Its difference ``bootstrap_difference`` (b minus a)
    is a mean over questions, so benchmarks weigh by their number of questions, where the tables' overall
    is a mean over benchmarks. :func:`table1_tests` adds the Holm correction over the family. The paired
    t-test over seeds on the macro ``column`` (2 degrees of freedom with 3 seeds) and the Wilcoxon
    signed-rank test over questions of seed-averaged values (which ignores the seed variance) stay beside
    it for comparison."""
    from scipy.stats import ttest_rel, wilcoxon

    if column not in PER_QUESTION:
        raise ValueError(f"no paired test for {column!r}; choose one of {sorted(PER_QUESTION)}")
    runs_a = per_model[per_model["setting"] == a].set_index("seed")[column]
    runs_b = per_model[per_model["setting"] == b].set_index("seed")[column]
    seeds = sorted(set(runs_a.index) & set(runs_b.index))
    result = {
        "a": a,
        "b": b,
        "metric": column,
        "seeds": len(seeds),
        "mean_difference": float(np.mean(runs_b.loc[seeds].to_numpy() - runs_a.loc[seeds].to_numpy()))
        if seeds
        else np.nan,
        "t_test_p": np.nan,
        "questions": 0,
        "wilcoxon_p": np.nan,
    }
    if len(seeds) >= 2:
        diff = runs_b.loc[seeds].to_numpy() - runs_a.loc[seeds].to_numpy()
        result["t_test_p"] = float(ttest_rel(runs_b.loc[seeds], runs_a.loc[seeds]).pvalue) if np.any(diff != 0) else 1.0
    scores = per_question_scores(per_model, graded, column)
    by_question = scores.groupby(["setting", "question"])["score"].mean()
    joined = pd.concat(
        [
            by_question.get(a, pd.Series(dtype=float)).rename("a"),
            by_question.get(b, pd.Series(dtype=float)).rename("b"),
        ],
        axis=1,
    ).dropna()
    result["questions"] = len(joined)
    differences = (joined["b"] - joined["a"]).to_numpy(dtype=float)
    if len(differences):
        result["wilcoxon_p"] = float(wilcoxon(differences).pvalue) if np.any(differences != 0) else 1.0
    bootstrap = {"estimate": None, "ci_low": None, "ci_high": None, "p_value": None, "n_seeds": 0, "n_questions": 0}
    bootstrap["note"] = "a setting has no graded outputs"
    if {a, b} <= set(scores["setting"]):
        bootstrap = seed_question_bootstrap(
            scores, b, a, variant="setting", seed_col="seed", question="question", score="score", n_boot=n_boot
        )
    scale = 100.0 if PER_QUESTION[column][1] == "correct" else 1.0  # accuracy in percent, as the tables
    result.update(
        {
            "bootstrap_difference": scale * _or_nan(bootstrap["estimate"]),
            "bootstrap_ci_low": scale * _or_nan(bootstrap["ci_low"]),
            "bootstrap_ci_high": scale * _or_nan(bootstrap["ci_high"]),
            "bootstrap_p": _or_nan(bootstrap["p_value"]),
            "bootstrap_seeds": bootstrap["n_seeds"],
            "bootstrap_questions": bootstrap["n_questions"],
            "bootstrap_note": bootstrap["note"],
            "bootstrap_draws": n_boot,
        }
    )
    return result


def _or_nan(value) -> float:
    return float("nan") if value is None else float(value)


def table1_note(t) -> str:
    """The paper-vs-run note of one Table 1 comparison: the seed x question bootstrap with its interval and
    Holm-corrected p, then the two tests kept for comparison."""
    if pd.isna(t["bootstrap_difference"]):
        head = f"{int(t['seeds'])} seeds; no bootstrap ({t['bootstrap_note']})"
    else:
        head = (
            f"{int(t['bootstrap_seeds'])} seeds x {int(t['bootstrap_questions'])} questions: difference "
            f"{t['bootstrap_difference']:+.3g} [95% CI {t['bootstrap_ci_low']:+.3g}, {t['bootstrap_ci_high']:+.3g}], "
            f"seed x question bootstrap {bootstrap_p_text(t['bootstrap_p'], t['bootstrap_draws'])}, Holm over "
            f"{int(t['family_size'])}: {bootstrap_p_text(t['bootstrap_p_holm'], t['bootstrap_draws'])}"
        )
    return (
        f"{head}; for comparison: paired t-test over seeds p = {t['t_test_p']:.3g}, Wilcoxon over questions "
        f"(seed variance ignored) p = {t['wilcoxon_p']:.3g}"
    )


def family_tests(tests: list[dict]) -> pd.DataFrame:
    """Comparisons reported together as one family: ``bootstrap_p_holm`` is Holm's correction of the
    bootstrap p-values over every comparison of the family (Table 1: metrics x trace sources; Tables 2-4
    and 7: rows x metrics)."""
    frame = pd.DataFrame(tests)
    if len(frame):
        p_values = [None if pd.isna(p) else float(p) for p in frame["bootstrap_p"]]
        frame["bootstrap_p_holm"] = [np.nan if p is None else p for p in holm(p_values)]
        frame["family_size"] = int(sum(p is not None for p in p_values))
    return frame


# ---------------------------------------------------------------------------------------------
# The paper's tables


def per_model_table(profile: Profile, graded: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-benchmark metrics, per-model overall metrics over ``evaluation.overall`` with run descriptions)."""
    ks = sorted({1, *[int(k) for k in profile.get_path("evaluation.ks")]})
    metrics = benchmark_metrics(graded, ks)
    overall = attach_runs(profile, overall_metrics(metrics, profile.get_path("evaluation.overall")))
    return metrics, overall


# ---------------------------------------------------------------------------------------------
# Like for like: Tables 2-4, 7 and Fig. 5 ranked on common seeds


def ranking_tests(
    overall: pd.DataFrame, graded: pd.DataFrame, settings: list[str], reference: str, *, n_boot: int = 10_000
) -> pd.DataFrame:
    """Each setting of a table minus the reference on :data:`RANKING_METRICS`, like with like (common seeds
    and questions, :func:`paired_tests`), Holm-corrected over the table's family (rows x metrics)."""
    present = set(overall["setting"])
    if reference not in present:
        return pd.DataFrame()
    tests = [
        paired_tests(overall, graded, reference, setting, metric, n_boot=n_boot)
        for setting in settings
        if setting != reference and setting in present
        for metric in RANKING_METRICS
        if metric in overall.columns
    ]
    return family_tests(tests)


def length_by_share(overall: pd.DataFrame, settings: list[str]) -> tuple[pd.DataFrame, dict]:
    """What shortens the outputs: per setting of the ablation tables (on their common seeds), the share of
    trace tokens in the loss (or kept, for pruning) against the greedy output length, and Spearman's rank
    correlation over the settings with its p-value. Selection rules that mask the same share of tokens
    but pick different segments (random segments vs IG, Table 2) tell apart the two causes: which
    segments are masked, and how much is masked."""
    from scipy.stats import spearmanr

    seeds = common_seeds(overall, settings)
    part = on_seeds(overall, seeds)
    part = part[part["setting"].isin(settings)]
    frame = (
        part.groupby("setting", sort=False)
        .agg(
            label=("label", "first"),
            token_share=("token_share", "mean"),
            greedy_tokens=("greedy_tokens", "mean"),
            greedy_tokens_std=("greedy_tokens", "std"),
            seeds=("seed", "nunique"),
        )
        .reset_index()
        .sort_values("token_share", ascending=False)
    )
    summary = {"settings": len(frame), "seeds": len(seeds), "spearman_rho": None, "spearman_p": None}
    usable = frame.dropna(subset=["token_share", "greedy_tokens"])
    if len(usable) >= 3 and usable["token_share"].nunique() > 1 and usable["greedy_tokens"].nunique() > 1:
        rho, p_value = spearmanr(usable["token_share"], usable["greedy_tokens"])
        summary.update(spearman_rho=float(rho), spearman_p=float(p_value))
    return frame.reset_index(drop=True), summary


def paper_comparison_rows(
    profile: Profile,
    overall: pd.DataFrame,
    tests: pd.DataFrame,
    rankings: dict[str, tuple[pd.DataFrame, pd.DataFrame]] | None = None,
    points: pd.DataFrame | None = None,
) -> list[dict]:
    """The headline numbers of Sec. 4 next to this run's (for ``paper_vs_run.md``). ``rankings`` maps a
    table to its runs on the table's common seeds and its :func:`ranking_tests`; ``points`` are Fig. 5's
    (:func:`fig5_points` on common seeds)."""
    rankings = rankings or {}

    def mean(setting: str, column: str) -> float:
        values = (
            overall.loc[overall["setting"] == setting, column] if column in overall.columns else pd.Series(dtype=float)
        )
        return float(values.mean()) if len(values) else float("nan")

    def change(a: float, b: float) -> str:
        return f"{100 * (b / a - 1):+.1f}% ({a:.1f} → {b:.1f})" if a == a and b == b and a else "n/a"

    rows = []
    # Table 8 (App. E) is Table 1's comparison on Llama-3.1-8B-Instruct
    main = "8" if "8" in {str(t) for t in profile.get_path("training.tables")} else "1"
    statistics = {
        "greedy_acc": f"Table {main} · greedy accuracy, selective vs full",
        "greedy_tokens": f"Table {main} · greedy output length, selective vs full",
        "pass@1": f"Table {main} · sampled pass@1, selective vs full",
        "sample_tokens": f"Table {main} · sampled output length, selective vs full",
    }
    for source in profile.get_path("training.sources"):
        for column, statistic in statistics.items():
            value = paper(f"table{main}.{column}")
            full, ours = mean(f"full__{source}", column), mean(f"selective__{source}", column)
            test = tests[(tests["metric"] == column) & (tests["b"] == f"selective__{source}")] if len(tests) else tests
            note = ""
            if len(test):
                t = test.iloc[0]
                note = table1_note(t)
            rows.append(comparison_row("Sec. 4.2", f"{statistic} [{source} traces]", value, change(full, ours), note))
    source = profile.get_path("training.ablation_source")
    full_acc = mean(f"full__{source}", "greedy_acc")
    pruned = overall[overall["variant"] == "pruned_ig"]
    if len(pruned):
        rows.append(
            comparison_row(
                "Sec. 4.3",
                "Table 2 · Pruned CoT SFT vs full, greedy accuracy",
                paper("table2.pruned"),
                f"{pruned['greedy_acc'].mean():.1f} vs {full_acc:.1f}",
            )
        )
    for table in ("2", "3", "4"):
        if table not in rankings:
            continue
        part, ranked = rankings[table]
        settings = table_settings(overall, table, source)
        part = part[part["setting"].isin(settings)]
        if part["setting"].nunique() > 2:
            rows.append(best_row_comparison(table, part, ranked, source))
    confidence = overall[overall["variant"] == "confidence_gain"]
    if len(confidence) and "segment_share" in confidence.columns:
        rows.append(
            comparison_row(
                "Sec. 4.4",
                "Confidence-gain segments selected (share of segments)",
                paper("table3.confidence_gain_share"),
                f"{100 * confidence['segment_share'].mean():.0f}%",
                "includes the always-kept first and last segments",
            )
        )
    retro = overall[(overall["variant"] == "selective") & (overall.get("keywords") == "retro_search")]
    if len(retro):
        seeds = set(retro["seed"])
        default = overall[(overall["setting"] == f"selective__{source}") & overall["seed"].isin(seeds)]
        rows.append(
            comparison_row(
                "App. C.2",
                "Table 7 · greedy accuracy, Retro-Search vs default keywords",
                paper("table7.retro_search"),
                f"{retro['greedy_acc'].mean():.1f} vs {default['greedy_acc'].mean():.1f} "
                f"(length {retro['greedy_tokens'].mean():.0f} vs {default['greedy_tokens'].mean():.0f})",
            )
        )
    points = points if points is not None else pd.DataFrame()
    for sweep in ("tau", "beta"):
        paper_value = paper(f"fig5.{sweep}")
        part = points[points["sweep"] == sweep] if len(points) else points
        if len(part) > 1:
            ranked_points = part.sort_values("pass@1", ascending=False)
            best, runner_up = ranked_points.iloc[0], ranked_points.iloc[1]
            rows.append(
                comparison_row(
                    "App. D",
                    f"Fig. 5 · best {sweep} by sampled pass@1",
                    paper_value,
                    f"{best['value']:g} (pass@1 {best['pass@1']:.1f})",
                    f"{int(best['seeds'])} seed(s) per point; next: {runner_up['value']:g} "
                    f"({runner_up['pass@1']:.1f}); seed SD of the best point: {_sd(best['pass@1_std'])}",
                )
            )
    return rows


def _sd(value) -> str:
    return "n/a (one seed)" if value != value else f"{value:.1f}"


def best_row_comparison(table: str, part: pd.DataFrame, ranked: pd.DataFrame, source: str) -> dict:
    """The paper-vs-run row of a table's best greedy accuracy, ranked like for like (every row's mean over
    the same seeds), with the best row's difference from the table's reference and its Holm p."""
    # a stable sort: among rows with equal means the table's own order decides which is named first
    best = part.groupby("setting", sort=False)["greedy_acc"].mean().sort_values(ascending=False, kind="stable")
    label = part.set_index("setting")["label"].to_dict()
    label[f"selective__{source}"] = "ours"
    seeds = part.loc[part["setting"] != BASE, "seed"].nunique()
    first = best.index[0]
    ours = f"selective__{source}"
    # competition ranking: 1 + the rows strictly better than ours (ties share a rank)
    rank_of_ours = 1 + int((best > best[ours]).sum()) if ours in best.index else None
    if rank_of_ours == 1:
        first = ours
    run = f"{label.get(first, first)} {best.iloc[0]:.1f}"
    if rank_of_ours is not None and first != ours:
        run = (
            f"{label.get(first, first)} {best.iloc[0]:.1f} (ours {best[ours]:.1f}, rank {rank_of_ours} of {len(best)})"
        )
    elif rank_of_ours == 1:
        runner_up = best.drop(ours)
        run = (
            f"ours {best[ours]:.1f} (next: {label.get(runner_up.index[0], runner_up.index[0])} {runner_up.iloc[0]:.1f})"
        )
    note = f"{seeds} seed(s) per row, the same for every row"
    reference = ranked["a"].iloc[0] if len(ranked) else None
    # the best row against the reference, or (when the reference is best) the runner-up against it
    contender = first if first != reference else next((s for s in best.index if s != reference), None)
    match = ranked[(ranked["b"] == contender) & (ranked["metric"] == "greedy_acc")] if len(ranked) else ranked
    if len(match) and not pd.isna(match.iloc[0]["bootstrap_difference"]):
        t = match.iloc[0]
        note += (
            f"; {'best' if contender == first else 'next'} minus {label.get(reference, reference)}: "
            f"{t['bootstrap_difference']:+.1f} [95% CI {t['bootstrap_ci_low']:+.1f}, "
            f"{t['bootstrap_ci_high']:+.1f}], Holm over {int(t['family_size'])}: "
            f"{bootstrap_p_text(t['bootstrap_p_holm'], t['bootstrap_draws'])}"
        )
    return comparison_row(
        f"Sec. 4.{int(table) + 1}", f"Table {table} · best greedy accuracy", paper(f"table{table}.best"), run, note
    )


def run(profile: Profile) -> StageResult:
    """Stage 09: evaluate the base model and every run, and regenerate Table 1, Tables 2-4 and 7, Fig. 5."""
    graded = evaluate_all(profile)
    metrics, overall = per_model_table(profile, graded)
    tables = {"table1": table1(profile, attach_runs(profile, metrics), overall)}
    save_paper_table(profile, "table1", tables["table1"])
    tests = []
    overall_outputs = graded[graded["benchmark"].isin(profile.get_path("evaluation.overall"))]
    for source in profile.get_path("training.sources"):
        for metric in ("greedy_acc", "pass@1", "greedy_tokens", "sample_tokens"):
            if metric in overall.columns:
                tests.append(paired_tests(overall, overall_outputs, f"full__{source}", f"selective__{source}", metric))
    tests = family_tests(tests)
    save_paper_table(profile, "table1_paired_tests", tests)
    tables["table1_paired_tests"] = tests
    source = profile.get_path("training.ablation_source")
    planned = {str(t) for t in profile.get_path("training.tables")}
    rankings = {}
    for table in [t for t in ("2", "3", "4", "7") if t in planned]:
        table_source = source if table != "7" else (profile.get_path("training.table7_source") or source)
        settings = table_settings(overall, table, table_source)
        like_for_like = on_seeds(overall, common_seeds(overall, settings))
        ranked = ranking_tests(like_for_like, overall_outputs, settings, table_reference(table, settings, table_source))
        frame = comparison_table(
            like_for_like,
            settings,
            labels={f"selective__{table_source}": "Segment Selective SFT (IG, ours)"},
            tests=ranked if len(ranked) else None,
        )
        if len(frame) > 1:
            save_paper_table(profile, f"table{table}", frame)
            tables[f"table{table}"] = frame
            if len(ranked):
                save_paper_table(profile, f"table{table}_tests", ranked)
                tables[f"table{table}_tests"] = ranked
            rankings[table] = (like_for_like, ranked)
    ablation_settings = list(
        dict.fromkeys(setting for table in ("2", "3", "4") for setting in table_settings(overall, table, source))
    )
    shortening, shortening_summary = length_by_share(overall, ablation_settings)
    if len(shortening) > 2:
        save_paper_table(profile, "length_vs_share", shortening)
        tables["length_vs_share"] = shortening
    if "8" in planned:
        tables["table8"] = table8(profile, overall)
        save_paper_table(profile, "table8", tables["table8"])
    tau, beta = profile.get_path("selection.tau"), profile.get_path("selection.beta")
    points = pd.DataFrame()
    if "fig5" in planned:
        seeds = common_seeds(overall, table_settings(overall, "fig5", source))
        points = fig5_points(overall, source, tau, beta, seeds)
    saved = {}
    if len(points):
        save_paper_table(profile, "fig5", points)
        tables["fig5"] = points
        saved["fig5_tau_beta"] = figures.save(figures.fig5_tau_beta(points, tau, beta), profile, "fig5_tau_beta")
    return finish(
        profile,
        STAGE,
        paper_comparison_rows(profile, overall, tests, rankings, points),
        tables=tables,
        figures=saved,
        checks={
            "every model answered every question": bool(graded.groupby("model")["question_id"].nunique().nunique() == 1)
        },
        values={"n_models": graded["model"].nunique(), "source": source, "length_vs_share": shortening_summary},
    )
