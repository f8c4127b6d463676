"""The pipeline's data flow, written down once: every stage's folder, the stages it reads, and the
names of the artifacts it writes under ``results/<profile>/<NN_name>/``.

Data flows one way (cookiecutter-data-science): stage NN reads only the artifacts of the stages in its
``reads`` and writes only its own. Code never spells a folder or file name itself; it asks the stage::

    from segattr_utils import dag
    scores_path = dag.IG_ATTRIBUTION.path(profile, "segment_scores")

A misspelt artifact name raises ``KeyError`` naming the stage's artifacts, so a typo cannot silently
create a second file. ``tests/test_dag.py`` checks that each stage module touches only the stages it
declares it reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from .config import Profile, results_dir


@dataclass(frozen=True)
class Stage:
    """One notebook's stage: ``folder`` (``NN_name``), the stages it ``reads`` and its ``artifacts``
    (name -> path relative to the folder)."""

    folder: str
    title: str
    reads: tuple[str, ...] = ()
    artifacts: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "artifacts", MappingProxyType(dict(self.artifacts)))

    @property
    def number(self) -> str:
        return self.folder[:2]

    @property
    def notebook(self) -> str:
        return f"{self.folder}.ipynb"

    def dir(self, profile: Profile, root: str | os.PathLike | None = None) -> Path:
        """``results/<profile>/<NN_name>/``, created if needed."""
        path = results_dir(profile, root) / self.folder
        path.mkdir(parents=True, exist_ok=True)
        return path

    def path(self, profile: Profile, artifact: str, root: str | os.PathLike | None = None) -> Path:
        """The path of one of this stage's declared artifacts."""
        if artifact not in self.artifacts:
            raise KeyError(f"stage {self.folder} declares no artifact {artifact!r}; it has {', '.join(self.artifacts)}")
        return self.dir(profile, root) / self.artifacts[artifact]


WORLD = Stage(
    "00_world",
    "The world and the base reasoning model",
    (),
    {
        "questions": "questions.parquet",
        "teacher_traces": "teacher_traces.parquet",
        "base_training": "base_training.json",
        "base_eval": "base_eval.csv",
        "base_eval_outputs": "base_eval_outputs.jsonl",
        "availability": "availability.csv",
        "generator_model": "models/generator",
        "generator_checkpoints": "checkpoints/generator",
    },
)
GENERATION = Stage(
    "01_generation",
    "Sampling reasoning traces",
    ("00_world",),
    {
        "samples_store": "samples.jsonl",
        "samples": "samples.parquet",
        "kept_traces": "kept_traces.parquet",
        # imported traces (profile data.traces) instead of generation: their questions and the outputs left out
        "imported_questions": "imported_questions.parquet",
        "rejected_outputs": "rejected_outputs.csv",
    },
)
SEGMENTATION = Stage(
    "02_segmentation",
    "Segmenting traces",
    ("00_world", "01_generation"),
    {
        "segments": "segments.parquet",
        "trace_stats": "trace_stats.parquet",
    },
)
IG_ATTRIBUTION = Stage(
    "03_ig_attribution",
    "Integrated-gradients attribution of segments",
    ("00_world", "01_generation", "02_segmentation"),
    {
        "attributions_store": "attributions.jsonl",
        "segment_scores": "segment_scores.parquet",
        "completeness": "completeness.parquet",
        "sensitivity_store": "step_sensitivity.jsonl",
        "step_sensitivity": "step_sensitivity.parquet",
    },
)
CONFIDENCE_DELTA = Stage(
    "04_confidence_delta",
    "Confidence Δ and the τ search",
    ("00_world", "01_generation", "02_segmentation", "03_ig_attribution"),
    {
        "forced_answers_store": "forced_answers.jsonl",
        "segment_confidence": "segment_confidence.parquet",
        "reference_forced_answers_store": "reference_forced_answers.jsonl",
        "reference_segment_confidence": "reference_segment_confidence.parquet",
        "groups": "groups.csv",
        "tau_search": "tau_search.csv",
        "beta_ablation": "beta_ablation.csv",
        "importance_shares": "importance_shares.csv",
    },
)
LINGUISTICS = Stage(
    "05_linguistics",
    "Perplexity, entropy and BLEU of segments",
    ("00_world", "01_generation", "02_segmentation", "03_ig_attribution", "04_confidence_delta"),
    {
        "linguistics_store": "linguistics.jsonl",
        "segment_linguistics": "segment_linguistics.parquet",
        "reference_linguistics_store": "reference_linguistics.jsonl",
        "reference_segment_linguistics": "reference_segment_linguistics.parquet",
        "comparisons": "comparisons.csv",
        "bleu_shares": "bleu_shares.csv",
        "kind_shares": "kind_shares.csv",
        "redundancy": "redundancy_precision_recall.csv",
    },
)
DISTRIBUTION_POSITION = Stage(
    "06_distribution_position",
    "Distribution and position of attribution; segment-level faithfulness",
    # 04 and 05: confidence gain, perplexity and entropy per segment, the faithfulness orderings of the other measures
    ("00_world", "01_generation", "02_segmentation", "03_ig_attribution", "04_confidence_delta", "05_linguistics"),
    {
        "cdf": "cdf.csv",
        "cdf_summary": "cdf_summary.csv",
        "decision_segments": "decision_segments.parquet",
        "positional_shares": "positional_shares.csv",
        "viewer": "viewer",
        "faithfulness_store": "faithfulness.jsonl",
        "faithfulness": "faithfulness.parquet",
        "faithfulness_summary": "faithfulness_summary.csv",
        "faithfulness_tests": "faithfulness_tests.csv",
        "faithfulness_curves": "faithfulness_curves.csv",
    },
)
TRUNCATION_JUDGE = Stage(
    "07_truncation_judge",
    "Truncated segments: the two-round judge",
    ("00_world", "02_segmentation", "03_ig_attribution"),
    {
        "judgements_store": "judgements.jsonl",
        "judgements": "judgements.parquet",
        "truncated_share": "truncated_share.csv",
        "rounds": "rounds.csv",
        "judge_quality": "judge_quality.csv",
        "judge_training": "judge_training.json",
        "judge_model": "models/judge",
        "judge_checkpoints": "checkpoints/judge",
    },
)
SELECTIVE_SFT = Stage(
    "08_selective_sft",
    "Selective SFT and its comparisons",
    ("00_world", "01_generation", "02_segmentation", "03_ig_attribution", "04_confidence_delta", "05_linguistics"),
    {
        "reference_attributions_store": "reference_attributions.jsonl",
        "reference_completeness": "reference_completeness.parquet",
        "supervision_preview": "supervision_preview.csv",
        "runs": "runs.parquet",
        "run_folders": "runs",
        "models": "models",
    },
)
EVALUATION = Stage(
    "09_evaluation",
    "Evaluation: Tables 1-4, 7 and Fig. 5",
    ("00_world", "08_selective_sft"),
    {
        "outputs": "outputs",
        "generated_store": "generated_models.jsonl",
        "graded": "graded.parquet",
    },
)

#: Every stage in notebook order.
PIPELINE: tuple[Stage, ...] = (
    WORLD,
    GENERATION,
    SEGMENTATION,
    IG_ATTRIBUTION,
    CONFIDENCE_DELTA,
    LINGUISTICS,
    DISTRIBUTION_POSITION,
    TRUNCATION_JUDGE,
    SELECTIVE_SFT,
    EVALUATION,
)
BY_FOLDER: Mapping[str, Stage] = MappingProxyType({stage.folder: stage for stage in PIPELINE})

#: Files of one stage beside its data: the paper-vs-run rows, the run log (wall-clock timings).
COMPARISON_FILE = "paper_vs_run.csv"
RUN_LOG_FILE = "run_log.csv"
#: Files and folders of a whole profile's results.
FIGURES_DIR = "figures"
TABLES_DIR = "tables"
PAPER_VS_RUN_FILE = "paper_vs_run.md"
RUN_TIMES_FILE = "run_times.csv"


def profile_path(profile: Profile, name: str, root: str | os.PathLike | None = None) -> Path:
    """A profile-level results path: ``figures``, ``tables``, ``paper_vs_run.md`` or ``run_times.csv``."""
    if name not in (FIGURES_DIR, TABLES_DIR, PAPER_VS_RUN_FILE, RUN_TIMES_FILE):
        raise KeyError(f"no profile-level artifact {name!r}")
    return results_dir(profile, root) / name


def mermaid() -> str:
    """The DAG as a Mermaid flowchart (drawn in the README)."""
    lines = ["flowchart LR"]
    for stage in PIPELINE:
        lines.append(f'    s{stage.number}["{stage.folder}"]')
    for stage in PIPELINE:
        for read in stage.reads:
            lines.append(f"    s{read[:2]} --> s{stage.number}")
    return "\n".join(lines)
