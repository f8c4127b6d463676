"""Question sets: the training questions (LIMO's role) and test suites, for either scale.

Every question is a dict ``{"id", "suite", "question", "answer"}`` (plus ``"solution"`` where a
reference CoT exists). The tiny world makes its own; the paper profile reads LIMO from the hub or a
local file and fails with a clear message when that is impossible offline.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..llm.models import ModelUnavailableError, offline
from ..world import PROMPT_SUFFIX, Arithmetic, Problem, make_problems


def world_suites(world: dict, seed: int) -> dict[str, list[Problem]]:
    """The tiny world's problem sets: ``pretrain``, ``train``, ``test_id``, ``test_ood`` (disjoint)."""
    arithmetic = Arithmetic.from_dict(world.get("arithmetic"))
    pretrain = make_problems(world["n_pretrain"], world["pretrain_ops"], seed, "pretrain", arithmetic=arithmetic)
    if world["train_from_pretrain"]:
        # Smoke profile only: the training questions are pretraining questions, so a model trained for
        # seconds has memorised some answers and every later stage sees correct and incorrect traces.
        train = [replace(p, id=f"train-{i:05d}", suite="train") for i, p in enumerate(pretrain[: world["n_train"]])]
    else:
        train = make_problems(
            world["n_train"], world["train_ops"], seed, "train", exclude=pretrain, arithmetic=arithmetic
        )
    test_id = make_problems(
        world["n_test_id"], world["test_id_ops"], seed, "test_id", exclude=pretrain + train, arithmetic=arithmetic
    )
    test_ood = make_problems(
        world["n_test_ood"],
        world["test_ood_ops"],
        seed,
        "test_ood",
        exclude=pretrain + train + test_id,
        arithmetic=arithmetic,
    )
    return {"pretrain": pretrain, "train": train, "test_id": test_id, "test_ood": test_ood}


def _read_local_rows(path: Path) -> list[dict]:
    if path.is_dir():
        from datasets import load_from_disk

        dataset = load_from_disk(str(path))
        if hasattr(dataset, "keys"):
            dataset = dataset[list(dataset.keys())[0]]
        return [dict(row) for row in dataset]
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, list) else data["data"]
    if path.suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict("records")
    raise ValueError(f"unsupported local data file {path} (use .jsonl, .json, .parquet or a saved dataset folder)")


def load_hub_questions(spec: dict, suite: str, limit: int | None = None) -> list[dict]:
    """Questions from a hub dataset (``spec["hub_id"]``) or its local copy (``spec["local_path"]``).

    ``spec["fields"]`` maps ``question``/``answer`` (and optionally ``solution`` and ``context``) to the
    dataset's column names; a non-empty context precedes the question on its own line (OlympiadBench:
    some problems state their setting there). Offline without a local copy raises
    :class:`ModelUnavailableError`.
    """
    fields = spec.get("fields", {"question": "question", "answer": "answer"})
    local = spec.get("local_path")
    if local:
        path = Path(local).expanduser()
        if not path.exists():
            raise ModelUnavailableError(
                f"local data {str(path)!r} for {spec.get('hub_id')!r} does not exist; download it with\n"
                f"    huggingface-cli download --repo-type dataset {spec.get('hub_id')} --local-dir {path}"
            )
        rows = _read_local_rows(path)
    else:
        from datasets import load_dataset

        try:
            rows = [dict(r) for r in load_dataset(spec["hub_id"], spec.get("config"), split=spec.get("split", "train"))]
        except Exception as error:  # datasets raises several types when the hub is unreachable
            hint = " (HF_HUB_OFFLINE is set)" if offline() else ""
            raise ModelUnavailableError(
                f"dataset {spec['hub_id']!r} could not be loaded{hint}: {type(error).__name__}: {error}\n"
                f"Download it on a machine with network access:\n"
                f"    huggingface-cli download --repo-type dataset {spec['hub_id']} --local-dir data/external/{spec['hub_id'].split('/')[-1]}\n"
                "and set local_path in the profile to the downloaded file or folder."
            ) from error
    questions = []
    for index, row in enumerate(rows[:limit] if limit is not None else rows):
        if "choices" in spec:
            row = multiple_choice_row(row, spec["choices"], seed=f"{spec.get('hub_id')}:{index}")
            fields = {**fields, "question": "question", "answer": "answer"}
        missing = [name for key, name in fields.items() if name not in row]
        if missing:
            raise ValueError(f"row {index} of {spec.get('hub_id') or local} lacks fields {missing}")
        question = str(row[fields["question"]])
        context = row[fields["context"]] if "context" in fields else None
        if isinstance(context, str) and context.strip():
            question = f"{context.strip()}\n{question}"
        record = {
            "id": f"{suite}-{index:05d}",
            "suite": suite,
            "question": question,
            "answer": answer_text(row[fields["answer"]]),
        }
        if "solution" in fields and fields["solution"] in row:
            record["solution"] = row[fields["solution"]]
        questions.append(record)
    return questions


def answer_text(value) -> str:
    """A reference answer as text; list-valued answers (OlympiadBench's ``final_answer``) use their first
    element, with surrounding ``$`` removed."""
    if isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and not isinstance(value, str)):
        items = list(value.tolist() if hasattr(value, "tolist") else value)
        if not items:
            raise ValueError("reference answer list is empty")
        value = items[0]
    text = str(value).strip()
    return text[1:-1].strip() if len(text) > 1 and text.startswith("$") and text.endswith("$") else text


LETTERS = "ABCDEFGHIJ"


def multiple_choice_row(row: dict, choices: dict, seed: str) -> dict:
    """A multiple-choice question with its options shuffled by a fixed seed (GPQA-Diamond).

    ``choices`` names the dataset columns: ``question``, ``correct`` and ``incorrect`` (a list). One
    public GPQA copy leaves the correct option first, so every answer would be "A"; the options are
    shuffled with ``random.Random(seed)`` and the answer is the correct option's letter.
    """
    import random

    options = [str(row[choices["correct"]]).strip()] + [str(row[c]).strip() for c in choices["incorrect"]]
    order = list(range(len(options)))
    random.Random(seed).shuffle(order)
    lines = [f"({LETTERS[i]}) {options[j]}" for i, j in enumerate(order)]
    question = (
        str(row[choices["question"]]).strip()
        + "\n\n"
        + "\n".join(lines)
        + "\n\nAnswer with the letter of the correct option."
    )
    return {"question": question, "answer": LETTERS[order.index(0)]}


def chat_prompt(tokenizer, user_message: str) -> str:
    """The user message wrapped in the model's chat template with the generation prompt (R1 format)."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user_message}], tokenize=False, add_generation_prompt=True
    )


def r1_user_message(question: str) -> str:
    """The R1 user message: the question and the instruction to box the final answer."""
    return question + PROMPT_SUFFIX


#: What the R1 format's assistant turn starts with: the opened thinking block.
THINK_OPEN = "<think>\n"


def opens_thinking(tokenizer) -> bool:
    """Whether the chat template's generation prompt already opens a thinking block (R1-Distill:
    ``<｜Assistant｜><think>\\n``); instruct templates (Qwen2.5-Instruct, Llama-3.1-Instruct) have none."""
    with_prompt = chat_prompt(tokenizer, "")
    without = tokenizer.apply_chat_template(
        [{"role": "user", "content": ""}], tokenize=False, add_generation_prompt=False
    )
    added = with_prompt[len(without) :] if with_prompt.startswith(without) else with_prompt
    return "<think>" in added


def r1_prompt(tokenizer, question: str) -> str:
    """The R1 prompt of a question: :func:`r1_user_message` in the tokenizer's chat template with the
    generation prompt, the trace following the opened thinking block (closed by ``</think>`` before the
    answer). Every prompt of the pipeline, ``segattr score`` and the library is built here.

    A template whose generation prompt opens no thinking block (the instruct students of Table 1 and
    Table 8) gets ``<think>\\n`` appended after it, as the authors train and evaluate those models: the
    trace is the assistant message after the generation prompt and ``<think>\\n``, which belong to the
    prompt and are never trained. ``<think>`` stays text in the student's own vocabulary (the authors add
    it as a special token and resize the embeddings; a vocabulary change here would also change what the
    base model is evaluated with)."""
    text = chat_prompt(tokenizer, r1_user_message(question))
    return text if opens_thinking(tokenizer) else text + THINK_OPEN
