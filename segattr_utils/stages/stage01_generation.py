"""Stage 01 (notebook ``01_generation``): K sampled and one greedy output per training question, graded,
and the shortest correct and shortest incorrect trace of each question (Sec. 3 setup, Sec. 4.1).

Generation runs in fixed, seeded batches (HF ``generate``) or, with vLLM, as one call holding every
missing request, each with its own seed (:func:`segattr_utils.llm.generation.run_generation_tasks`);
finished outputs are appended to the ``samples_store`` record store, so an interrupted run resumes
where it stopped.
"""

from __future__ import annotations

import pandas as pd

from .. import dag, services
from ..artifacts import RecordStore, write_table
from ..config import Profile
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

    answers = dict(zip(questions["id"], questions["answer"]))
    rows = []
    for record in store.records():
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


def keep_shortest_traces(samples: pd.DataFrame, questions: pd.DataFrame) -> pd.DataFrame:
    """The shortest correct and the shortest incorrect sampled trace per question (Sec. 3 setup).

    Only finished outputs with a ``</think>`` and a non-empty reasoning are eligible (an unfinished
    trace has no answer to attribute). Ties in length go to the lower sample index.
    """
    sampled = samples[(samples["tag"] == "sample") & samples["finished"]].copy()
    sampled["has_think"] = sampled["text"].str.contains("</think>", regex=False)
    sampled = sampled[sampled["has_think"]]
    # An output that closes </think> at once has no reasoning to segment or attribute.
    sampled = sampled[sampled["text"].map(lambda text: split_output(text)[1].strip() != "")]
    answers = dict(zip(questions["id"], questions["answer"]))
    texts = dict(zip(questions["id"], questions["question"]))
    kept = []
    for (qid, correct), group in sampled.groupby(["question_id", "correct"], sort=True):
        best = group.sort_values(["n_tokens", "sample"]).iloc[0]
        _, reasoning, answer_part = split_output(best["text"])
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
                "reasoning": reasoning,
                "answer_part": answer_part,
                "pred": best["pred"],
            }
        )
    return pd.DataFrame(kept)


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
    """Stage 01: sample, grade and keep the shortest correct / incorrect trace of every question."""
    samples = generate_training_traces(profile)
    kept = services.kept_traces(profile)
    summary = generation_summary(samples)
    fig = figures.correct_per_question(samples)
    correct = kept[kept["correct"]] if len(kept) else kept
    return finish(
        profile,
        STAGE,
        tables={
            "summary": summary.T.rename(columns={0: profile.name}),
            "kept": kept.groupby("correct").agg(traces=("trace_id", "size"), mean_tokens=("n_tokens", "mean")),
        },
        figures={"gen_correct_samples_per_question": figures.save(fig, profile, "gen_correct_samples_per_question")},
        checks={
            "at least one trace is kept": bool(len(kept)),
            "every kept trace is reasoning + </think> + answer": all(
                t.answer_part.lstrip("\n").startswith("</think>") for t in kept.itertuples()
            ),
        },
        values={"example": correct.iloc[0] if len(correct) else None},
    )
