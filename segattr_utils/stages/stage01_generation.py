"""Stage 01 (notebook ``01_generation``): K sampled and one greedy output per training question, graded,
and the shortest correct and shortest incorrect trace of each question (Sec. 3 setup, Sec. 4.1).

Generation runs in fixed, seeded batches (HF ``generate``) or, with vLLM, as every missing request, each
with its own seed, in chunks of ``generation.vllm_chunk_requests`` requests per engine
(:func:`segattr_utils.llm.generation.run_generation_tasks`); each finished batch or chunk is appended to
the ``samples_store`` record store, so an interrupted run loses only the chunks in flight and resumes
where it stopped. A resumed HF run gives the records of an uninterrupted one; a resumed vLLM run gives
other samples of the same distribution unless ``generation.vllm.batch_invariant`` is set (then the same
records on the same GPU type and vLLM version: :mod:`segattr_utils.llm.generation`).

With ``data.traces`` in the profile the stage generates nothing: it reads the outputs of a trace file
(:mod:`segattr_utils.data.traces`: validated, split at the last ``</think>``), grades them against their
gold answers, and keeps the shortest correct and incorrect one of each question by the same rule
(:func:`import_training_traces`). The file's questions become the training questions
(``imported_questions``), and the outputs left out as invalid are listed (``rejected_outputs``).
"""

from __future__ import annotations

import pandas as pd

from .. import dag, services
from ..artifacts import RecordStore, write_table
from ..config import Profile
from ..data import traces as traces_lib
from ..llm.generation import GenerationTask, run_generation_tasks
from ..llm.grading import grade, split_output
from ..report import figures
from . import StageResult, finish

STAGE = dag.GENERATION


def generate_training_traces(profile: Profile) -> pd.DataFrame:
    """K samples (temperature from the profile) and one greedy output per training question, graded by
    the last ``\\boxed{}`` with math-verify. Writes and returns every graded output."""
    questions = services.load_questions(profile, "train")
    gen = profile["generation"]
    generator, tokenizer = services.load_generator(profile, "generator", gen["backend"])
    prompts = {row.id: services.prompt(tokenizer, row.question) for row in questions.itertuples()}
    store = RecordStore(STAGE.path(profile, "samples_store"))
    tasks = [
        GenerationTask("greedy", prompts, 1, services.sampling_settings(profile, greedy=True)),
        GenerationTask("sample", prompts, gen["n_samples"], services.sampling_settings(profile)),
    ]
    try:
        run_generation_tasks(generator, tasks, store, gen["batch_size"], int(profile["seed"]))
    finally:
        generator.close()

    records = store.records()
    sampled = [r for r in records if r["tag"] == "sample"]
    if sampled and not any(r["finished"] for r in sampled):
        raise RuntimeError(no_finished_output_message(profile, len(sampled), store.path))
    answers = dict(zip(questions["id"], questions["answer"]))
    rows = []
    for record in records:
        verdict = grade(record["text"], answers[record["question_id"]])
        rows.append(
            {
                "question_id": record["question_id"],
                "tag": record["tag"],
                "sample": record["sample"],
                "text": record["text"],
                "n_tokens": record["n_tokens"],
                "finished": record["finished"],
                "pred": verdict["pred"],
                "correct": verdict["correct"],
            }
        )
    samples = pd.DataFrame(rows).sort_values(["question_id", "tag", "sample"]).reset_index(drop=True)
    write_table(STAGE.path(profile, "samples"), samples)
    write_table(STAGE.path(profile, "kept_traces"), keep_shortest_traces(samples, questions))
    return samples


def no_finished_output_message(profile: Profile, n_samples: int, store_path) -> str:
    """Why stage 01 stops when no sampled output finished, and which setting to raise."""
    limit = profile.get_path("generation.max_new_tokens")
    return (
        f"stage 01: none of the {n_samples} sampled outputs finished: every one reached "
        f"generation.max_new_tokens = {limit} tokens before its end-of-sequence token, so there is no "
        f"answer to grade and no trace to keep. Raise generation.max_new_tokens in the profile (R1 traces "
        f"often need thousands of tokens; the paper allows 32768), then delete {store_path} (its unfinished "
        "records would be reused) or rerun with --fresh."
    )


#: Columns of the kept-trace table (``kept_traces``), also when no trace is kept.
KEPT_COLUMNS = [
    "trace_id",
    "question_id",
    "question",
    "answer",
    "correct",
    "sample",
    "n_tokens",
    "text",
    "reasoning",
    "answer_part",
    "pred",
]


def keep_shortest_traces(samples: pd.DataFrame, questions: pd.DataFrame) -> pd.DataFrame:
    """The shortest correct and the shortest incorrect sampled trace per question (Sec. 3 setup).

    Only finished outputs with a ``</think>`` and a non-empty reasoning are eligible (an unfinished
    trace has no answer to attribute). Ties in length go to the lower sample index. Samples that carry
    ``reasoning`` and ``answer_part`` columns (imported traces, split at their last ``</think>``) keep
    that split; generated ones are split at their first ``</think>``.
    """
    sampled = samples[(samples["tag"] == "sample") & samples["finished"].astype(bool)].copy()
    if "reasoning" not in sampled.columns:
        sampled = sampled[sampled["text"].str.contains("</think>", regex=False).astype(bool)]
        parts = [split_output(text) for text in sampled["text"]]
        sampled["reasoning"] = [part[1] for part in parts]
        sampled["answer_part"] = [part[2] for part in parts]
    # An output that closes </think> at once has no reasoning to segment or attribute. (A boolean Series,
    # not a list: an empty list would select no columns, and the groupby below would lose its keys.)
    sampled = sampled[sampled["reasoning"].map(lambda reasoning: reasoning.strip() != "").astype(bool)]
    answers = dict(zip(questions["id"], questions["answer"]))
    texts = dict(zip(questions["id"], questions["question"]))
    kept = []
    for (qid, correct), group in sampled.groupby(["question_id", "correct"], sort=True):
        best = group.sort_values(["n_tokens", "sample"]).iloc[0]
        kept.append(
            {
                "trace_id": f"{qid}:{'correct' if correct else 'incorrect'}",
                "question_id": qid,
                "question": texts[qid],
                "answer": answers[qid],
                "correct": bool(correct),
                "sample": int(best["sample"]),
                "n_tokens": int(best["n_tokens"]),
                "text": best["text"],
                "reasoning": best["reasoning"],
                "answer_part": best["answer_part"],
                "pred": best["pred"],
            }
        )
    return pd.DataFrame(kept, columns=KEPT_COLUMNS)


# ---------------------------------------------------------------------------------------------
# Imported traces (data.traces)


def grade_imported_outputs(imported: traces_lib.ImportedTraces, count_tokens) -> pd.DataFrame:
    """The valid imported outputs as stage 01's ``samples`` table: graded by the last ``\\boxed{}`` of the
    whole output against the question's gold answer (as generated samples are), ``n_tokens`` counted by
    ``count_tokens`` (the generator's tokenizer), every output ``finished`` (it was written to its end)."""
    answers = dict(zip(imported.questions["id"], imported.questions["answer"]))
    rows = []
    for output in imported.outputs.to_dict("records"):
        verdict = grade(output["text"], answers[output["question_id"]])
        rows.append(
            {
                "question_id": output["question_id"],
                "tag": "sample",
                "sample": int(output["sample"]),
                "record": output["record"],
                "item": output["item"],
                "text": output["text"],
                "reasoning": output["reasoning"],
                "answer_part": output["answer_part"],
                "n_tokens": int(count_tokens(output["text"])),
                "finished": True,
                "pred": verdict["pred"],
                "correct": verdict["correct"],
            }
        )
    samples = pd.DataFrame(rows).sort_values(["question_id", "sample"]).reset_index(drop=True)
    samples["item"] = samples["item"].astype("Int64")
    return samples


def import_training_traces(profile: Profile) -> tuple[pd.DataFrame, traces_lib.ImportedTraces]:
    """Stage 01 on imported traces: read and validate ``data.traces``, grade every valid output, keep the
    shortest correct / incorrect trace per question (lengths in the generator's tokens). Writes the
    imported questions, the rejected outputs, ``samples`` and ``kept_traces``."""
    imported = traces_lib.load_traces(services.imported_traces(profile))
    tokenizer = services.load_role_tokenizer(profile, "generator")
    samples = grade_imported_outputs(imported, lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    write_table(STAGE.path(profile, "imported_questions"), imported.questions)
    write_table(STAGE.path(profile, "rejected_outputs"), imported.rejected)
    write_table(STAGE.path(profile, "samples"), samples)
    write_table(STAGE.path(profile, "kept_traces"), keep_shortest_traces(samples, imported.questions))
    return samples, imported


def import_summary(samples: pd.DataFrame, imported: traces_lib.ImportedTraces, kept: pd.DataFrame) -> pd.DataFrame:
    """How many outputs were read, rejected, graded and graded correct, and how many traces were kept."""
    per_question = samples.groupby("question_id")["correct"].agg(["sum", "count"])
    return pd.DataFrame(
        [
            {
                "outputs_read": imported.n_outputs_read,
                "outputs_rejected": imported.n_outputs_read - len(imported.outputs),
                "outputs_graded": len(samples),
                "outputs_correct": int(samples["correct"].sum()),
                "questions": len(per_question),
                "outputs_per_question_max": int(per_question["count"].max()),
                "questions_with_correct_and_incorrect": int(
                    ((per_question["sum"] > 0) & (per_question["sum"] < per_question["count"])).sum()
                ),
                "kept_correct": int(kept["correct"].sum()),
                "kept_incorrect": int((~kept["correct"].astype(bool)).sum()),
                "mean_output_tokens": float(samples["n_tokens"].mean()),
            }
        ]
    )


def generation_summary(samples: pd.DataFrame) -> pd.DataFrame:
    """Per-question correct counts and the headline rates of stage 01."""
    sampled = samples[samples["tag"] == "sample"]
    per_question = sampled.groupby("question_id")["correct"].agg(["sum", "count"])
    greedy = samples[samples["tag"] == "greedy"]
    return pd.DataFrame(
        [
            {
                "questions": len(per_question),
                "samples_per_question": int(per_question["count"].max()),
                "greedy_accuracy": float(greedy["correct"].mean()),
                "sample_accuracy": float(sampled["correct"].mean()),
                "questions_with_correct_and_incorrect": float(
                    ((per_question["sum"] > 0) & (per_question["sum"] < per_question["count"])).mean()
                ),
                "questions_with_a_correct_sample": float((per_question["sum"] > 0).mean()),
                "unfinished_share": float(1 - sampled["finished"].mean()),
                "mean_output_tokens": float(sampled["n_tokens"].mean()),
            }
        ]
    )


def run(profile: Profile) -> StageResult:
    """Stage 01: sample (or, with ``data.traces``, import), grade and keep the shortest correct /
    incorrect trace of every question."""
    spec = services.imported_traces(profile)
    tables, values = {}, {}
    if spec is None:
        samples = generate_training_traces(profile)
        kept = services.kept_traces(profile)
        summary = generation_summary(samples)
    else:
        samples, imported = import_training_traces(profile)
        kept = services.kept_traces(profile)
        summary = import_summary(samples, imported, kept)
        tables["rejected"] = imported.rejected
        values["outputs_rejected"] = imported.n_outputs_read - len(imported.outputs)
    fig = figures.correct_per_question(samples)
    correct = kept[kept["correct"]] if len(kept) else kept
    # Without require_think_close an imported output without </think> is all reasoning (empty answer part).
    closed = spec is None or traces_lib.TraceSettings.from_spec(spec).require_think_close
    return finish(
        profile,
        STAGE,
        tables={
            "summary": summary.T.rename(columns={0: profile.name}),
            "kept": kept.groupby("correct").agg(traces=("trace_id", "size"), mean_tokens=("n_tokens", "mean")),
            **tables,
        },
        figures={"gen_correct_samples_per_question": figures.save(fig, profile, "gen_correct_samples_per_question")},
        checks={
            "at least one trace is kept": bool(len(kept)),
            "every kept trace is reasoning + </think> + answer": all(
                t.answer_part.lstrip("\n").startswith("</think>") or (not closed and t.answer_part == "")
                for t in kept.itertuples()
            ),
        },
        values={"example": correct.iloc[0] if len(correct) else None, **values},
    )
