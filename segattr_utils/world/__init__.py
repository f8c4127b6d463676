"""The tiny reasoning world: arithmetic-chain problems with R1-style teacher traces.

A problem starts from a number and applies a chain of operations ("add 5", "subtract 3",
"multiply by 2"); every intermediate value stays inside the range the profile's ``world.arithmetic``
sets (:class:`Arithmetic`) and the answer is exact. Teacher traces
look like R1 outputs: the reasoning is a sequence of segments joined by the paper's transition
keywords ("\\n\\nWait", "\\n\\nAlternatively", ...), closed by ``</think>`` and a ``\\boxed{}`` answer.

Each teacher segment carries a ground-truth kind:

- ``productive``: states at least one new, correct step of the chain (the first segment also sets up
  the problem);
- ``wrong_exploration``: states a wrong equation (later corrected by a productive segment);
- ``repetition``: restates an earlier equation before the answer is reached;
- ``truncated``: a thought cut off mid-sentence;
- ``superficial``: a clarification of a self-evident fact, no equation;
- ``verification``: re-checks an earlier equation after the answer has been reached.

:func:`classify_segments` assigns the same kinds to *any* segmented trace of a problem (teacher or
model-generated) from the text alone, so generated traces get ground-truth labels too. The teacher's
intended kinds and the classifier agree by construction (a test checks it).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

OPERATIONS = ("add", "subtract", "multiply")
OP_SYMBOL = {"add": "+", "subtract": "-", "multiply": "*"}
SYMBOL_OP = {v: k for k, v in OP_SYMBOL.items()}
REDUNDANT_KINDS: tuple[str, ...] = ("repetition", "truncated", "superficial")
SEGMENT_KINDS: tuple[str, ...] = (
    "productive",
    "wrong_exploration",
    "repetition",
    "truncated",
    "superficial",
    "verification",
)
PROMPT_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Arithmetic:
    """The number ranges of a world (profile ``world.arithmetic``).

    Starts are drawn from ``[start_min, start_max]``, add/subtract operands from ``[1, max_operand]``
    and multipliers from ``multipliers``; every intermediate value stays in ``[1, max_value]``. The
    ranges set how hard the arithmetic is for a small model: with two-digit values a tiny model learns
    the carries only partly, so its errors come from the sums themselves and not only from long chains.
    """

    max_value: int = 9
    max_operand: int = 3
    start_min: int = 2
    start_max: int = 6
    multipliers: tuple[int, ...] = (2,)

    def __post_init__(self):
        object.__setattr__(self, "multipliers", tuple(int(m) for m in self.multipliers))
        if not 1 <= self.start_min <= self.start_max <= self.max_value:
            raise ValueError(f"need 1 <= start_min <= start_max <= max_value, got {self}")
        if self.max_operand < 1:
            raise ValueError(f"max_operand must be at least 1, got {self.max_operand}")
        if any(m < 2 for m in self.multipliers):
            raise ValueError(f"multipliers must be at least 2, got {self.multipliers}")

    @classmethod
    def from_dict(cls, values: dict | None) -> Arithmetic:
        values = dict(values or {})
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown world.arithmetic settings: {sorted(unknown)}")
        return cls(**values)


SINGLE_DIGIT = Arithmetic()


@dataclass(frozen=True)
class Misconception:
    """A systematic slip of the teacher that wrote the *pretraining* traces (profile
    ``world.pretrain_misconception``).

    On a step with operation ``op`` (and, if given, operand ``operand``) the weak teacher writes the true
    result plus ``offset`` with probability ``rate`` (the tiny profile: "subtract 3" takes away only two,
    7 - 3 = 5), then carries on from its wrong value, so the trace ends in a wrong answer. A base model
    trained on these traces inherits the slip as its most likely continuation: greedy decoding fails
    on such steps while sampling sometimes gets them right. This is the world's stand-in for a skill the
    base reasoning model has only partly acquired, and what fine-tuning on verified-correct traces can
    repair. The reference traces of the training questions (LIMO's role) come from the correct teacher.
    """

    op: str = "subtract"
    operand: int | None = 3
    rate: float = 0.7
    offset: int = 1

    def __post_init__(self):
        if self.op not in OPERATIONS:
            raise ValueError(f"misconception op must be one of {OPERATIONS}, got {self.op!r}")
        if not 0 <= self.rate <= 1:
            raise ValueError(f"misconception rate must lie in [0, 1], got {self.rate}")
        if self.offset == 0:
            raise ValueError("misconception offset must not be 0 (that would be no slip at all)")

    def applies(self, op: str, operand: int) -> bool:
        return op == self.op and (self.operand is None or operand == self.operand)

    @classmethod
    def from_dict(cls, values: dict | None) -> Misconception | None:
        if not values:
            return None
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown world.pretrain_misconception settings: {sorted(unknown)}")
        return cls(**values)

    def believed_steps(self, problem: Problem, rng: random.Random, max_value: int) -> list[tuple[int, str, int, int]]:
        """The chain as the weak teacher computes it: (left, symbol, operand, result) per step.

        Falls back to the true chain when the believed values would leave ``[1, max_value]``.
        """
        value, steps = problem.start, []
        for op, operand in problem.ops:
            result = apply_op(value, op, operand)
            if self.applies(op, operand) and rng.random() < self.rate:
                result += self.offset
            steps.append((value, OP_SYMBOL[op], operand, result))
            value = result
        if any(not 1 <= step[3] <= max_value for step in steps):
            return problem.steps
        return steps


def apply_op(value: int, op: str, operand: int) -> int:
    if op == "add":
        return value + operand
    if op == "subtract":
        return value - operand
    if op == "multiply":
        return value * operand
    raise ValueError(f"unknown operation {op!r}")


@dataclass(frozen=True)
class Problem:
    """A chain problem: ``start`` followed by ``ops`` = ((operation, operand), ...)."""

    id: str
    start: int
    ops: tuple[tuple[str, int], ...]
    suite: str = "train"

    @property
    def values(self) -> list[int]:
        values = [self.start]
        for op, operand in self.ops:
            values.append(apply_op(values[-1], op, operand))
        return values

    @property
    def answer(self) -> str:
        return str(self.values[-1])

    @property
    def steps(self) -> list[tuple[int, str, int, int]]:
        """(left, symbol, operand, result) for every step of the chain."""
        values = self.values
        return [(values[i], OP_SYMBOL[op], k, values[i + 1]) for i, (op, k) in enumerate(self.ops)]

    @property
    def question(self) -> str:
        steps = ", ".join(f"{step_name(i + 1)} {_op_phrase(op, k)}" for i, (op, k) in enumerate(self.ops))
        return f"Start with {self.start}, then {steps}. What is the result?"

    def to_record(self) -> dict:
        return {
            "id": self.id,
            "suite": self.suite,
            "start": self.start,
            "ops": [f"{op}:{k}" for op, k in self.ops],
            "question": self.question,
            "answer": self.answer,
        }

    @classmethod
    def from_record(cls, record: dict) -> Problem:
        ops = [op.split(":") if isinstance(op, str) else op for op in record["ops"]]
        return cls(
            id=record["id"],
            start=int(record["start"]),
            ops=tuple((op, int(k)) for op, k in ops),
            suite=record.get("suite", "train"),
        )


ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")


def step_name(number: int) -> str:
    """Steps are named by ordinal words: one token each, so a step is found in the question by one match."""
    if not 1 <= number <= len(ORDINALS):
        raise ValueError(f"step {number} has no name (1-{len(ORDINALS)})")
    return ORDINALS[number - 1]


def _op_phrase(op: str, operand: int) -> str:
    return {"add": f"add {operand}", "subtract": f"subtract {operand}", "multiply": f"multiply by {operand}"}[op]


def equation(left: int, symbol: str, operand: int, result: int) -> str:
    return f"{left} {symbol} {operand} = {result}"


def random_problem(
    rng: random.Random, n_ops: int, problem_id: str, suite: str, arithmetic: Arithmetic = SINGLE_DIGIT
) -> Problem:
    """A chain of ``n_ops`` operations whose values all stay inside ``arithmetic``'s range."""
    if n_ops < 1:
        raise ValueError("a problem needs at least one operation")
    a = arithmetic
    value = rng.randint(a.start_min, a.start_max)
    start, ops = value, []
    for _ in range(n_ops):
        choices = []
        if value < a.max_value:
            choices.append(("add", rng.randint(1, min(a.max_operand, a.max_value - value))))
        if value >= 2:
            choices.append(("subtract", rng.randint(1, min(a.max_operand, value - 1))))
        multipliers = [m for m in a.multipliers if value * m <= a.max_value]
        if multipliers and value >= 2:
            choices.append(("multiply", rng.choice(multipliers)))
        op, operand = rng.choice(choices)
        ops.append((op, operand))
        value = apply_op(value, op, operand)
    return Problem(id=problem_id, start=start, ops=tuple(ops), suite=suite)


def make_problems(
    n: int,
    n_ops: Sequence[int],
    seed: int,
    suite: str,
    exclude: Iterable[Problem] = (),
    arithmetic: Arithmetic = SINGLE_DIGIT,
) -> list[Problem]:
    """``n`` distinct problems with chain lengths drawn from ``n_ops``, none equal to one in ``exclude``."""
    rng = random.Random(f"{suite}:{seed}")
    seen = {(p.start, p.ops) for p in exclude}
    problems = []
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise RuntimeError(f"could not draw {n} distinct problems for suite {suite!r}")
        problem = random_problem(rng, rng.choice(list(n_ops)), f"{suite}-{len(problems):05d}", suite, arithmetic)
        key = (problem.start, problem.ops)
        # A chain that repeats a step (e.g. "- 2" twice from the same value) would make a restated
        # equation ambiguous between progress and repetition.
        if key not in seen and len(set(problem.steps)) == len(problem.steps):
            seen.add(key)
            problems.append(problem)
    return problems


def user_prompt(problem: Problem) -> str:
    """The user message: question + the R1 instruction (App. C of the reference setting)."""
    return problem.question + PROMPT_SUFFIX


# ----------------------------------------------------------------------------------------------
# Teacher traces

_INTRO = [
    "Okay, so I start with {start} and apply the steps in order.",
    "Alright, let me work through this. The starting number is {start}.",
    "Okay, let's see. I begin with {start} and apply the steps one by one.",
]
# Every statement of a step restates the operation from the question ("step 2: multiply by 3, so
# 12 * 3 = 36"): the model can copy it by the step number, as a real model re-reads the problem.
_PLAIN_STEP = ["Next, {step}.", "Then {step}.", "Now {step}."]
_FIRST_STEP = ["So {step}.", "Now {step}."]
_SEGMENT_STEP = [
    "\n\nAnother step, {step}.",
    "\n\nGoing back to the list, {step}.",
    "\n\nAlternatively, I can just continue with {step}.",
]
_CORRECTION = [
    "\n\nWait, that is not right, {step}.",
    "\n\nWait, no. Let me redo {step}.",
    "\n\nBut wait, I made a mistake, {step}.",
]
# Wrong explorations have openings of their own ("maybe", "I think"): a restatement never shares its
# prefix with a wrong equation, so the model is not taught to emit wrong sums after a neutral opening.
_WRONG = [
    "\n\nAlternatively, maybe {step}.",
    "\n\nHowever, I think {step}.",
]
_REPETITION = [
    "\n\nWait, let me check {step} again.",
    "\n\nWait, so {step}.",
    "\n\nGoing back, {step}.",
]
_VERIFY = [
    "\n\nBut just to be sure, let me verify {step}. Yes, the result is {answer}.",
    "\n\nWait, let me double check {step}. So it is {answer}.",
    "\n\nAnother check of {step}. Correct.",
]
_TRUNCATED = [
    "\n\nAlternatively, maybe I should",
    "\n\nWait, what if I",
    "\n\nNot sure if the",
    "\n\nAlternatively, I could try to",
    "\n\nWait, maybe the next",
]
_SUPERFICIAL = {
    "add": [
        "\n\nHowever, adding {k} just means the number gets bigger by {k}.",
        "\n\nNot sure it matters, but addition is the easy part.",
    ],
    "subtract": [
        "\n\nHowever, subtracting {k} means taking {k} away.",
        "\n\nNot sure it matters, but subtraction makes the number smaller.",
    ],
    "multiply": [
        "\n\nHowever, multiplying by {k} means adding the number {k} times.",
        "\n\nNot sure it matters, but multiplication scales the number.",
    ],
}
_CONCLUDE = ["So the result is {answer}.", "That gives {answer}."]


@dataclass
class TeacherTrace:
    """A teacher completion: ``segments`` (concatenated = the reasoning), their ``kinds``, and the
    answer text after ``</think>``."""

    problem_id: str
    segments: list[str]
    kinds: list[str]
    answer_text: str
    meta: dict = field(default_factory=dict)

    @property
    def reasoning(self) -> str:
        return "".join(self.segments)

    @property
    def completion(self) -> str:
        return format_completion(self.reasoning, self.answer_text)


def format_completion(reasoning: str, answer: str) -> str:
    """R1 output layout: reasoning, ``</think>``, then a short answer with ``\\boxed{}``."""
    return f"{reasoning}\n</think>\n\nThe final answer is \\boxed{{{answer}}}."


def _wrong_result(rng: random.Random, result: int) -> int:
    wrong = result + rng.choice([-2, -1, 1, 2])
    return wrong if wrong >= 0 and wrong != result else result + 1


def teacher_trace(
    problem: Problem,
    rng: random.Random,
    rates: dict,
    misconception: Misconception | None = None,
    max_value: int = SINGLE_DIGIT.max_value,
) -> TeacherTrace:
    """An R1-style trace for ``problem`` with redundant segments mixed in at ``rates``.

    ``rates`` holds per-step probabilities ``repetition``, ``truncated``, ``superficial``,
    ``wrong_exploration``, ``segment_step`` (a step opens a new segment instead of continuing the
    current paragraph) and ``verification`` (per trace). With a ``misconception`` the trace narrates
    the weak teacher's chain (:meth:`Misconception.believed_steps`); its kinds are then those
    :func:`classify_segments` gives against the true chain, and ``answer_text`` is the teacher's answer.
    """
    steps = misconception.believed_steps(problem, rng, max_value) if misconception else problem.steps
    mistaken = steps != problem.steps
    segments: list[str] = []
    kinds: list[str] = []

    def statement(number: int, eq: str) -> dict:
        op, operand = problem.ops[number - 1]
        # "<ordinal> <operation>" exactly as in the question: the ordinal token alone locates the
        # operation to copy (a one-token induction match).
        text = f"{step_name(number)} {_op_phrase(op, operand)}, so {eq}"
        return {"step": text, "Step": text[0].upper() + text[1:]}

    first_eq = equation(*steps[0])
    segments.append(
        rng.choice(_INTRO).format(start=problem.start, n=len(steps))
        + "\n\n"
        + rng.choice(_FIRST_STEP).format(**statement(1, first_eq))
    )
    kinds.append("productive")
    stated = [(1, first_eq)]
    for index in range(1, len(steps)):
        left, symbol, operand, result = steps[index]
        op, number = SYMBOL_OP[symbol], index + 1
        if rng.random() < rates["repetition"]:
            segments.append(rng.choice(_REPETITION).format(**statement(*rng.choice(stated))))
            kinds.append("repetition")
        if rng.random() < rates["superficial"]:
            segments.append(rng.choice(_SUPERFICIAL[op]).format(k=operand))
            kinds.append("superficial")
        if rng.random() < rates["truncated"]:
            segments.append(rng.choice(_TRUNCATED))
            kinds.append("truncated")
        eq = equation(left, symbol, operand, result)
        if rng.random() < rates["wrong_exploration"]:
            wrong = equation(left, symbol, operand, _wrong_result(rng, result))
            segments.append(rng.choice(_WRONG).format(**statement(number, wrong)))
            kinds.append("wrong_exploration")
            segments.append(rng.choice(_CORRECTION).format(**statement(number, eq)))
            kinds.append("productive")
        elif kinds[-1] != "productive" or rng.random() < rates["segment_step"]:
            # After a redundant segment the step opens a segment of its own, so redundancy stays
            # separable from real work.
            segments.append(rng.choice(_SEGMENT_STEP).format(**statement(number, eq)))
            kinds.append("productive")
        else:
            segments[-1] += "\n\n" + rng.choice(_PLAIN_STEP).format(**statement(number, eq))
        stated.append((number, eq))
    answer = str(steps[-1][3])
    segments[-1] += " " + rng.choice(_CONCLUDE).format(answer=answer)
    if rng.random() < rates["verification"]:
        segments.append(rng.choice(_VERIFY).format(answer=answer, **statement(len(steps), equation(*steps[-1]))))
        kinds.append("verification")
    if mistaken:
        kinds = classify_segments(problem, segments)
    return TeacherTrace(problem.id, segments, kinds, answer, meta={"mistaken": mistaken})


# ----------------------------------------------------------------------------------------------
# Ground-truth kinds of any segmented trace

_EQUATION = re.compile(r"(\d+)\s*([+\-*])\s*(\d+)\s*=\s*(\d+)")
_ANSWER_STATEMENT = re.compile(r"(?:result is|gives|it is)\s+(\d+)")


def parse_equations(text: str) -> list[tuple[int, str, int, int]]:
    return [(int(a), s, int(b), int(c)) for a, s, b, c in _EQUATION.findall(text)]


def classify_segments(problem: Problem, segments: Sequence[str]) -> list[str]:
    """Ground-truth kind of every segment of a trace of ``problem`` (see the module docstring).

    Rules, in order: a segment with an equation that is not a step of this problem's chain is
    ``wrong_exploration``; one stating a chain step not stated before is ``productive``; one that only
    restates equations is ``verification`` once the answer has been reached, else ``repetition``; a
    segment without equations is ``truncated`` if it stops mid-sentence, else ``superficial``. The
    first segment is ``productive`` unless it is wrong.
    """
    chain = set(problem.steps)
    final_step = problem.steps[-1]
    stated: set[tuple[int, str, int, int]] = set()
    answer_reached = False
    kinds = []
    for index, text in enumerate(segments):
        equations = parse_equations(text)
        if any(eq not in chain for eq in equations):
            kind = "wrong_exploration"
        elif any(eq not in stated for eq in equations) or (index == 0 and not equations):
            kind = "productive"
        elif equations:
            kind = "verification" if answer_reached else "repetition"
        elif text.rstrip() and text.rstrip()[-1] in ".!?":
            kind = "superficial"
        else:
            kind = "truncated"
        stated.update(eq for eq in equations if eq in chain)
        if final_step in stated:
            answer_reached = True
        kinds.append(kind)
    return kinds
