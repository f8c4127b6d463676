"""The truncated-segment judge (Sec. 3.1 finding 3, App. B): is Segment 2 an incompletely truncated thought?

The paper asks Qwen3-8B, for every segment of the correct traces, whether the segment is *truncated*:
it breaks off before its thought is finished and the following segment does not logically continue it.
The judge sees three consecutive segments (Segment 1, Segment 2, Segment 3; a segment at either end of
the trace gets an empty neighbour), reasons step by step in thinking mode and answers with one digit,
``1`` = Segment 2 is truncated, ``0`` = complete (App. B: a 0/1 answer is more reliable than yes/no).

Two rounds per segment (App. B):

- round 1: the judge prompt in thinking mode (temperature 0.2, top-p 0.7, 2000 new tokens, repetition
  penalty 1.1 in the paper profile);
- round 2, only for the segments without a decision after round 1: the original input + the round-1
  output + an *early-stopping prompt* that closes the thinking block and asks for the digit now
  (temperature 0.1, top-p 0.7, 1000 new tokens, same penalty).

The paper's prompt template (its Table 5) and early-stopping prompt (Table 6) are not in the text: the
task description, few-shot examples and early-stopping prompt below are this project's own.

The judge works with any generator exposing ``generate(prompts, SamplingSettings, seed) -> [{"text",
"n_tokens", "finished"}]`` (:class:`segattr_utils.llm.generation.HFGenerator` or a stub; a generator with
``per_request_seeds``, :class:`~segattr_utils.llm.generation.VLLMGenerator`, takes one seed per prompt)
and any tokenizer with a chat template. :func:`run_judge` runs both rounds batched and resumable in a
:class:`~segattr_utils.artifacts.RecordStore`, with seeds from :func:`~segattr_utils.llm.generation.derive_seed`.

This module also builds the training data of the tiny world's judge (labelled triples from teacher
traces, with teacher judge outputs in the protocol's format).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..artifacts import RecordStore
from ..llm.generation import SamplingSettings, derive_seed, generate_in_chunks
from ..progress import progress

TRUNCATED, COMPLETE = 1, 0
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

#: The task description (App. B, Table 5 analogue): what "truncated" means and how to answer.
TASK_DESCRIPTION = (
    "You are given three consecutive segments of a long chain of thought. The chain of thought was split "
    'into segments at transition words such as "Wait" or "Alternatively". Decide whether Segment 2 is a '
    "truncated thought: it breaks off before its idea is finished (for example in the middle of a sentence), "
    "and Segment 3 does not logically continue it but moves on to something else. A segment that finishes "
    "its thought is complete, even if it is short or repeats earlier work. An empty Segment 1 or Segment 3 "
    "means that Segment 2 starts or ends the chain of thought.\n"
    "Think step by step first. Then give your final answer as a single digit: 1 if Segment 2 is truncated, "
    "0 if Segment 2 is complete."
)

#: Early-stopping prompt (App. B, Table 6 analogue): appended after an unfinished round-1 output. It
#: closes the thinking block so that the next tokens are the final answer.
EARLY_STOPPING_PROMPT = (
    "\n\nI am out of time for thinking. I must stop here and give my final answer as a single digit now, "
    "based on my reasoning so far.\n</think>\n\n"
)


@dataclass(frozen=True)
class Triple:
    """Segment 1 (``before``), Segment 2 (``segment``, the one judged) and Segment 3 (``after``);
    an empty string is the empty neighbour of a segment at either end of its trace."""

    before: str
    segment: str
    after: str


@dataclass(frozen=True)
class FewShotExample:
    triple: Triple
    reasoning: str
    label: int


#: Few-shot examples for real LLM judges (profile ``judge.few_shot``), written for this project.
FEW_SHOT_EXAMPLES: tuple[FewShotExample, ...] = (
    FewShotExample(
        Triple(
            "So the perimeter is 2 * (7 + 3) = 20.",
            "Wait, maybe I should double-check whether the",
            "Alternatively, I could compute the area first: 7 * 3 = 21.",
        ),
        'Segment 2 stops in the middle of a sentence ("whether the"), and Segment 3 starts a different '
        "computation instead of finishing that check.",
        TRUNCATED,
    ),
    FewShotExample(
        Triple(
            "Substituting x = 2 gives 3 * 2 + 4 = 10.",
            "Wait, the equation was 3x + 4 = 10, so x = 2 satisfies it. That checks out.",
            "So the answer is x = 2.",
        ),
        "Segment 2 is a short verification, but it states its check and its conclusion in full sentences. "
        "Its thought is finished.",
        COMPLETE,
    ),
    FewShotExample(
        Triple(
            "",
            "Okay, so I need to count the integers from 1 to 100 that are divisible by 3 or 5.",
            "Hmm, inclusion-exclusion should work here.",
        ),
        "Segment 2 opens the chain of thought (Segment 1 is empty) and states the task completely.",
        COMPLETE,
    ),
    FewShotExample(
        Triple(
            "There are 33 multiples of 3 and 20 multiples of 5.",
            "Alternatively, there might be a faster way with modular arithmetic. Let me think about",
            "Wait, the direct count is easy: 33 + 20 - 6 = 47.",
        ),
        'Segment 2 announces another approach and breaks off at "Let me think about"; Segment 3 drops '
        "that approach and returns to the direct count.",
        TRUNCATED,
    ),
)


# ---------------------------------------------------------------------------------------------
# Triples and prompts


def segment_triples(segments: Sequence[str]) -> list[Triple]:
    """One (Segment 1, Segment 2, Segment 3) triple per segment of a trace; the first segment gets an
    empty Segment 1 and the last an empty Segment 3 (App. B)."""
    segments = list(segments)
    return [
        Triple(segments[i - 1] if i > 0 else "", segments[i], segments[i + 1] if i + 1 < len(segments) else "")
        for i in range(len(segments))
    ]


CLIP_MARK = "[...]"


def clip_triple(triple: Triple, max_chars: int | None) -> Triple:
    """Shorten long segments for a judge with a small context (profile ``judge.max_segment_chars``):
    Segment 1 keeps its end, Segment 3 its beginning, and Segment 2 its beginning and its end (the end
    decides whether the thought was cut off). ``None`` keeps everything."""
    if max_chars is None:
        return triple
    if max_chars < 2 * len(CLIP_MARK):
        raise ValueError(f"judge.max_segment_chars must be at least {2 * len(CLIP_MARK)}, got {max_chars}")

    def middle(text: str) -> str:
        if len(text) <= max_chars:
            return text
        half = (max_chars - len(CLIP_MARK)) // 2
        return text[:half] + CLIP_MARK + text[len(text) - half :]

    before = (
        triple.before if len(triple.before) <= max_chars else CLIP_MARK + triple.before[-(max_chars - len(CLIP_MARK)) :]
    )
    after = triple.after if len(triple.after) <= max_chars else triple.after[: max_chars - len(CLIP_MARK)] + CLIP_MARK
    return Triple(before, middle(triple.segment), after)


def format_triple(triple: Triple) -> str:
    """The three segments, each between ``<<<`` and ``>>>`` (surrounding whitespace stripped: segments
    start with the "\\n\\n" of their transition)."""
    return "\n".join(
        f"Segment {i}: <<<{text.strip()}>>>"
        for i, text in enumerate((triple.before, triple.segment, triple.after), start=1)
    )


def few_shot_block(examples: Sequence[FewShotExample] = FEW_SHOT_EXAMPLES) -> str:
    parts = []
    for number, example in enumerate(examples, start=1):
        parts.append(
            f"Example {number}:\n{format_triple(example.triple)}\n"
            f"Reasoning: {example.reasoning}\nAnswer: {example.label}"
        )
    return "\n\n".join(parts)


def judge_message(triple: Triple, few_shot: bool = False, max_segment_chars: int | None = None) -> str:
    """The user message of one judgement: task description, optional few-shot examples, the triple."""
    parts = [TASK_DESCRIPTION]
    if few_shot:
        parts.append(few_shot_block())
        parts.append("Now judge these segments:")
    parts.append(format_triple(clip_triple(triple, max_segment_chars)))
    return "\n\n".join(parts)


def judge_chat_prompt(tokenizer, message: str, enable_thinking: bool = True) -> str:
    """``message`` in the judge tokenizer's chat template with the generation prompt.

    ``enable_thinking`` is passed to the template (Qwen3 switches thinking mode with it); templates
    that do not use the variable ignore it, and a tokenizer whose ``apply_chat_template`` refuses extra
    arguments gets the plain call.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the judge tokenizer has no chat template; set tokenizer.chat_template first")
    messages = [{"role": "user", "content": message}]
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
        )
    except TypeError:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def opens_thinking(prompt: str) -> bool:
    """Whether ``prompt`` ends inside an open thinking block (an R1-style generation prompt ending with
    ``<think>``): the output then starts with reasoning and only its part after ``</think>`` answers."""
    return prompt.rfind(THINK_OPEN) > prompt.rfind(THINK_CLOSE)


def round2_prompt(prompt: str, round1_output: str) -> str:
    """Round-2 input (App. B): the original input, the round-1 output, the early-stopping prompt."""
    return prompt + round1_output + EARLY_STOPPING_PROMPT


# ---------------------------------------------------------------------------------------------
# Parsing the final answer

_SEGMENT_REFERENCE = re.compile(r"\bsegments?\s*\d+(?:\s*(?:,|and|or|&|-|to)\s*\d+)*", re.IGNORECASE)
_DIGIT_END = r"(?!\w|\.\d)"  # "1." and "1)" end a digit; "10", "1a" and "0.5" are not the digit
_MARKED = re.compile(
    r"(?:answer|judge?ment|verdict|label|decision)(?:\s+is)?[\s:=*_`'\"(\[]*([01])" + _DIGIT_END, re.IGNORECASE
)
_BOXED = re.compile(r"\\boxed\{\s*([01])\s*\}")
_STANDALONE = re.compile(r"(?<![\w.])([01])" + _DIGIT_END)


def final_answer_part(text: str, open_think: bool = False) -> str | None:
    """The part of a judge output after its reasoning: the text after the last ``</think>``; ``None``
    when a thinking block was opened (in ``text``, or by the prompt when ``open_think``) and never
    closed; the whole text when the output has no thinking block at all."""
    text = (THINK_OPEN if open_think else "") + text
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1]
    if THINK_OPEN in text:
        return None
    return text


def parse_judgement(text: str, open_think: bool = False) -> int | None:
    """The judge's decision (1 truncated, 0 complete) from its final answer, or ``None`` (undecided).

    Only the final answer after the reasoning counts (:func:`final_answer_part`); digits inside the
    reasoning never decide. In the final answer, references such as "Segment 1" are ignored; explicit
    answers ("Answer: 1", "**Answer:** 0", ``\\boxed{1}``) decide when present, else the standalone
    digits 0/1. Both digits, or neither, leave the segment undecided.
    """
    final = final_answer_part(text, open_think)
    if final is None:
        return None
    final = _SEGMENT_REFERENCE.sub(" ", final)
    digits = set(_MARKED.findall(final)) | set(_BOXED.findall(final))
    if not digits:
        digits = set(_STANDALONE.findall(final))
    return int(digits.pop()) if len(digits) == 1 else None


# ---------------------------------------------------------------------------------------------
# The two-round protocol


@dataclass(frozen=True)
class JudgeSettings:
    """The protocol's settings (profile section ``judge``)."""

    round1: SamplingSettings
    round2: SamplingSettings
    enable_thinking: bool = True
    few_shot: bool = False
    batch_size: int = 64
    max_segment_chars: int | None = None

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"judge.batch_size must be positive, got {self.batch_size}")

    @classmethod
    def from_profile(cls, profile) -> JudgeSettings:
        section = profile.get_path("judge")

        def sampling(name: str) -> SamplingSettings:
            values = dict(section.get(name) or {})
            unknown = set(values) - set(SamplingSettings.__dataclass_fields__)
            missing = set(SamplingSettings.__dataclass_fields__) - set(values)
            if unknown or missing:
                raise ValueError(
                    f"judge.{name} must set exactly {sorted(SamplingSettings.__dataclass_fields__)}; "
                    f"unknown {sorted(unknown)}, missing {sorted(missing)}"
                )
            return SamplingSettings(**values)

        for key in ("enable_thinking", "few_shot", "batch_size"):
            if key not in section:
                raise KeyError(f"profile {profile.get('name')!r} has no setting 'judge.{key}'")
        return cls(
            round1=sampling("round1"),
            round2=sampling("round2"),
            enable_thinking=bool(section["enable_thinking"]),
            few_shot=bool(section["few_shot"]),
            batch_size=int(section["batch_size"]),
            max_segment_chars=section.get("max_segment_chars"),
        )


def judge_prompts(tokenizer, triples: Mapping[str, Triple], settings: JudgeSettings) -> dict[str, str]:
    """The round-1 prompt of every triple (same keys)."""
    return {
        key: judge_chat_prompt(
            tokenizer, judge_message(triple, settings.few_shot, settings.max_segment_chars), settings.enable_thinking
        )
        for key, triple in triples.items()
    }


def _prompt_digest(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def _run_round(
    generator,
    keys: list[str],
    inputs: Mapping[str, str],
    settings: SamplingSettings,
    round_number: int,
    store: RecordStore,
    batch_size: int,
    seed: int,
    tag: str,
) -> None:
    """Generate one round for ``keys``: with a per-request-seeded generator (vLLM) every missing key,
    key ``k`` seeded with ``derive_seed(seed, tag, round_number, k)``, in the generator's chunks (each
    finished chunk stored at once); otherwise in fixed batches (a batch is skipped when all its records
    exist) seeded with ``derive_seed(seed, tag, round_number, batch index)``."""

    def record(k, out):
        return {
            "key": [k, round_number],
            "item": k,
            "round": round_number,
            "prompt_sha": _prompt_digest(inputs[k]),
            "text": out["text"],
            "n_tokens": int(out["n_tokens"]),
            "finished": bool(out["finished"]),
        }

    if getattr(generator, "per_request_seeds", False):
        missing = [k for k in keys if [k, round_number] not in store]
        if missing:
            seeds = [derive_seed(seed, tag, round_number, k) for k in missing]
            prompts = [inputs[k] for k in missing]
            for chunk in generate_in_chunks(generator, prompts, settings, seeds, f"judge round {round_number}"):
                store.append([record(missing[i], out) for i, out in sorted(chunk, key=lambda pair: pair[0])])
        return
    batches = [keys[i : i + batch_size] for i in range(0, len(keys), batch_size)]
    todo = [
        (b, derive_seed(seed, tag, round_number, i))
        for i, b in enumerate(batches)
        if not all([k, round_number] in store for k in b)
    ]
    for batch, seeds in progress(todo, desc=f"judge round {round_number}", unit="batch"):
        outputs = generator.generate([inputs[k] for k in batch], settings, seeds)
        if len(outputs) != len(batch):
            raise RuntimeError(f"the generator returned {len(outputs)} outputs for {len(batch)} prompts")
        store.append([record(k, out) for k, out in zip(batch, outputs) if [k, round_number] not in store])


def run_judge(
    generator, prompts: Mapping[str, str], settings: JudgeSettings, store: RecordStore, seed: int, tag: str = "judge"
) -> list[dict]:
    """Judge every prompt with the two-round protocol of App. B (resumable through ``store``).

    Round 1 runs all prompts with ``settings.round1`` in fixed batches of ``settings.batch_size`` (vLLM:
    chunks of ``generation.vllm_chunk_requests``); round 2 runs only the prompts left undecided, on
    :func:`round2_prompt`, with ``settings.round2``. Seeds are ``derive_seed(seed, tag, round, batch
    index)`` (vLLM: ``derive_seed(seed, tag, round, key)`` per request), so a resumed run gives the same
    judgements as an uninterrupted one with the HF backend, and with vLLM under
    ``generation.vllm.batch_invariant`` (otherwise other samples of the same distribution:
    :mod:`segattr_utils.llm.generation`). Store records hold the raw outputs, keyed ``[key, round]``.

    Returns one dict per prompt (in ``prompts`` order): ``key``, ``label`` (1, 0 or ``None``),
    ``rounds`` (1 or 2), ``undecided`` (no decision after the last round), ``round1_output``,
    ``round1_n_tokens``, ``round1_finished`` and the same three for round 2 (``None`` if not run).
    """
    keys = list(prompts)
    _run_round(generator, keys, prompts, settings.round1, 1, store, settings.batch_size, seed, tag)
    records = {(r["item"], r["round"]): r for r in store.records()}
    for key in keys:
        if records[(key, 1)]["prompt_sha"] != _prompt_digest(prompts[key]):
            raise ValueError(
                f"{store.path} holds a judgement of {key!r} made with a different prompt; "
                "delete the store to judge again with the current prompt"
            )
    open_think = {key: opens_thinking(prompts[key]) for key in keys}
    round1_labels = {key: parse_judgement(records[(key, 1)]["text"], open_think[key]) for key in keys}
    undecided = [key for key in keys if round1_labels[key] is None]
    round2_inputs = {key: round2_prompt(prompts[key], records[(key, 1)]["text"]) for key in undecided}
    _run_round(generator, undecided, round2_inputs, settings.round2, 2, store, settings.batch_size, seed, tag)
    if undecided:
        records = {(r["item"], r["round"]): r for r in store.records()}

    results = []
    for key in keys:
        first = records[(key, 1)]
        result = {
            "key": key,
            "label": round1_labels[key],
            "rounds": 1,
            "round1_output": first["text"],
            "round1_n_tokens": first["n_tokens"],
            "round1_finished": first["finished"],
            "round2_output": None,
            "round2_n_tokens": None,
            "round2_finished": None,
        }
        if round1_labels[key] is None:
            second = records[(key, 2)]
            # The final answer follows the early-stopping prompt, which closes the thinking block.
            full = first["text"] + EARLY_STOPPING_PROMPT + second["text"]
            result.update(
                label=parse_judgement(full, open_think[key]),
                rounds=2,
                round2_output=second["text"],
                round2_n_tokens=second["n_tokens"],
                round2_finished=second["finished"],
            )
        result["undecided"] = result["label"] is None
        results.append(result)
    return results


def judge_triples(
    generator, tokenizer, triples: Mapping[str, Triple], settings: JudgeSettings, store: RecordStore, seed: int
) -> list[dict]:
    """:func:`judge_prompts` then :func:`run_judge`: the judge on its own, for any generator and tokenizer."""
    return run_judge(generator, judge_prompts(tokenizer, triples, settings), settings, store, seed)


# ---------------------------------------------------------------------------------------------
# Training data of the tiny world's judge


def labelled_triples(traces: Sequence[tuple[Sequence[str], Sequence[str]]]) -> list[tuple[Triple, int]]:
    """(triple, label) for every segment of every ``(segments, kinds)`` trace; label 1 iff the
    segment's ground-truth kind is ``truncated``."""
    labelled = []
    for segments, kinds in traces:
        if len(segments) != len(kinds):
            raise ValueError(f"a trace has {len(segments)} segments but {len(kinds)} kinds")
        labelled += [(triple, int(kind == "truncated")) for triple, kind in zip(segment_triples(segments), kinds)]
    return labelled


def balanced_triples(labelled: Sequence[tuple[Triple, int]], n: int, seed: int) -> list[tuple[Triple, int]]:
    """``n`` triples, half truncated and half complete, drawn without replacement while a class has
    enough triples (a smaller class is repeated whole, then topped up), in a seeded random order."""
    if n < 2:
        raise ValueError(f"judge.n_training_triples must be at least 2, got {n}")
    rng = random.Random(f"judge-triples:{seed}")
    chosen = []
    for label, count in ((TRUNCATED, n // 2), (COMPLETE, n - n // 2)):
        pool = [item for item in labelled if item[1] == label]
        if not pool:
            raise ValueError(
                f"no {'truncated' if label else 'complete'} segments among the teacher traces: "
                "cannot build balanced judge training data"
            )
        picked: list[tuple[Triple, int]] = []
        while len(picked) < count:
            shuffled = pool[:]
            rng.shuffle(shuffled)
            picked += shuffled[: count - len(picked)]
        chosen += picked
    rng.shuffle(chosen)
    return chosen


def teacher_reasoning(triple: Triple, label: int) -> str:
    """The tiny judge's teacher reasoning: how Segment 2 ends, and what that makes it.

    The reasoning names the ending (a finished sentence or none) rather than quoting Segment 2's last
    words: quoting is a copying skill a small judge picks up late and unreliably, and a wrong quote
    then drags the decision with it.
    """
    if label == TRUNCATED:
        return (
            "Segment 2 stops without finishing its sentence: it breaks off in the middle and Segment 3 does not "
            "continue it, so Segment 2 is truncated."
        )
    return "Segment 2 ends with a finished sentence, so Segment 2 is complete."


def teacher_output(triple: Triple, label: int) -> str:
    """A full teacher judge output in the protocol's format: reasoning, ``</think>``, the digit."""
    return teacher_reasoning(triple, label) + f"\n{THINK_CLOSE}\n\n{label}"


def judge_training_examples(
    tokenizer, labelled: Sequence[tuple[Triple, int]], settings: JudgeSettings, round2_share: float, seed: int
):
    """SFT examples for the tiny judge (prompt masked; the judge output and EOS trained).

    A ``round2_share`` of the examples take the round-2 form: the judge prompt, a cut-off prefix of the
    teacher reasoning and the early-stopping prompt (none of them trained), then the digit, so the tiny
    judge also learns to answer at once after the early-stopping prompt.
    """
    from ..llm.training import build_training_example

    if not 0 <= round2_share <= 1:
        raise ValueError(f"judge.model.round2_share must lie in [0, 1], got {round2_share}")
    rng = random.Random(f"judge-examples:{seed}")
    examples = []
    for triple, label in labelled:
        prompt = judge_chat_prompt(
            tokenizer, judge_message(triple, settings.few_shot, settings.max_segment_chars), settings.enable_thinking
        )
        reasoning = teacher_reasoning(clip_triple(triple, settings.max_segment_chars), label)
        if rng.random() < round2_share:
            cut = rng.randint(1, len(reasoning) - 1)
            examples.append(
                build_training_example(
                    tokenizer, prompt, [reasoning[:cut], EARLY_STOPPING_PROMPT], str(label), selected=[]
                )
            )
        else:
            examples.append(build_training_example(tokenizer, prompt, [reasoning], f"\n{THINK_CLOSE}\n\n{label}"))
    return examples


def judge_corpus(labelled: Sequence[tuple[Triple, int]], settings: JudgeSettings) -> list[str]:
    """Texts to train the tiny judge's BPE tokenizer on: its user messages and teacher outputs."""
    corpus = [EARLY_STOPPING_PROMPT]
    for triple, label in labelled:
        corpus.append(judge_message(triple, settings.few_shot, settings.max_segment_chars))
        corpus.append(teacher_output(clip_triple(triple, settings.max_segment_chars), label))
    return corpus
