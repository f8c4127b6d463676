"""Correct-answer confidence after each prefix of a trace, the per-segment change Δ (Sec. 3.1,
finding 1, Fig. 2), and the greedy τ search and β ablation on Δ (Sec. 3.2, Fig. 4).

**Confidence (Sec. 3.1).** "We sequentially append segments to the input and enforce answer
generation after adding each new segment to compute the change Δ in correct answer confidence
relative to without that segment. [...] We empirically estimate this correct answer confidence by
calculating the fraction of multiple temperature-sampled generations (i.e., 32 samples) that produce
the correct answer." For a trace S_1..S_n and k = 0..n the forced-answer input is

    prompt + S_1 + ... + S_k + answer lead-in          (e.g. "\\n</think>\\n\\nThe final answer is \\boxed{")

and the model samples K short continuations; c_k is the fraction whose completed ``\\boxed{}``
grades correct (:func:`segattr_utils.llm.grading.grade`). A continuation ends at the brace that closes
the box the lead-in opened (nested braces counted: ``\\frac{1}{2}}`` closes after the last brace;
:func:`answer_end`): what follows is cut before grading, so a second ``\\boxed{}`` written after the
answer is never graded, and the HF samplers stop there (:class:`AnswerCloses`). vLLM has no per-request
stop rule that counts braces (a stop string ``}`` would cut ``\\frac{1}{2}``), so there the answer runs
to ``max_new_tokens`` (or EOS) and is cut at the same brace afterwards. c_0 is the confidence with an
empty trace. The change of segment S_k is Δ_k = c_k − c_{k−1}; segment ``k - 1`` in 0-based indices.

**Groups (Sec. 3.1).** A segment has *high strength* when it is among the top-k* segments holding τ
of the trace's normalised strength (Eq. 5-6) and *moderate consistency* when its consistency is at
most β (Eq. 7); important = high strength and moderate consistency, unimportant = the rest. The
comparative analysis uses τ = 0.8, β = 0.95 (profile ``analysis.groups_tau``/``groups_beta``).
The always-kept first/last segments of App. C.4 are a training rule, not part of Eq. 7: they are
not added here.

**Greedy τ search (Sec. 3.2, Fig. 4).** The paper picks τ* that "maximizes the difference in
correct answer confidence change Δ between resulted important and unimportant segments while
minimizing false negatives (i.e., ensuring that unimportant segments exhibit the lowest confidence
gain)", then ablates β under τ*. "Greedy" is read as coordinate-wise: τ first (β held at the Sec.
3.1 value), then β under τ*. Formally (:func:`choose_threshold`): among the grid values where both
sets are non-empty and the unimportant set's mean Δ is below the important set's (gap > 0), τ*
maximises gap = mean Δ(important) − mean Δ(unimportant); ties go to the lower unimportant Δ, then
to the smaller threshold. The paper's final β = 0.8 comes from downstream accuracy (App. D); the
β row here reports the Δ criterion only.

**Sampling.** :func:`sample_continuations` encodes each forced-answer prompt once and shares its
key/value cache among the K samples (the prompts are long and the continuations a few tokens, so
this saves the K-fold prefill that sampling K copies of the prompt would cost). The sampling rule is
the one of ``model.generate``: temperature, then nucleus (top-p) filtering, then a categorical draw;
temperature 0 is greedy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from ..llm.generation import SamplingSettings, left_padded_batch
from ..llm.grading import grade
from ..method.importance import GROUPS, label_segments, segment_groups  # noqa: F401  (re-exported)
from .group_stats import compare_groups, describe
from .trace_stats import trace_level_comparison

# ---------------------------------------------------------------------------------------------
# Forced-answer confidence


def forced_answer_prompt(prompt: str, segments: Sequence[str], n_prefix: int, lead_in: str) -> str:
    """``prompt + S_1 + ... + S_{n_prefix} + lead_in``: the answer forced after ``n_prefix`` segments."""
    if not 0 <= n_prefix <= len(segments):
        raise ValueError(f"n_prefix must lie in [0, {len(segments)}], got {n_prefix}")
    if not lead_in:
        raise ValueError("the answer lead-in is empty: the answer cannot be forced")
    return prompt + "".join(segments[:n_prefix]) + lead_in


BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")  # as grading.last_boxed finds a box


def open_box_depth(text: str) -> int:
    """Braces still open inside the first ``\\boxed{`` (or ``\\fbox{``) of ``text`` that is not closed by
    its end, the box's own brace included (1 right after ``\\boxed{``); 0 when every box is closed."""
    for match in BOX_OPEN.finditer(text):
        depth = 1
        for char in text[match.end() :]:
            depth += (char == "{") - (char == "}")
            if depth == 0:
                break
        if depth:
            return depth
    return 0


def answer_end(lead_in: str, text: str) -> int | None:
    """The index in ``text`` just past the brace that closes the forced answer's box, or None while it is
    open. The box is the one ``lead_in`` leaves open (``...\\boxed{``), or, when it leaves none open, the
    first one ``text`` opens; braces inside it nest (``1}{2}}`` closes ``\\boxed{\\frac{`` at its end)."""
    depth, start = open_box_depth(lead_in), 0
    if not depth:
        match = BOX_OPEN.search(text)
        if match is None:
            return None
        depth, start = 1, match.end()
    for index in range(start, len(text)):
        depth += (text[index] == "{") - (text[index] == "}")
        if depth == 0:
            return index + 1
    return None


def cut_forced_answer(text: str, lead_in: str) -> str:
    """``text`` up to and including the brace that closes the answer's box (:func:`answer_end`); an
    answer whose box is still open is kept whole (and grades wrong)."""
    end = answer_end(lead_in, text)
    return text if end is None else text[:end]


class AnswerCloses:
    """Stops sampling once a continuation of ``lead_in`` has closed the answer's box (:func:`answer_end`).

    ``update(row, token)`` is fed each row's new tokens in order and says whether that row's box is now
    closed. A row's text is decoded only at a token that holds ``}`` (a per-token lookup, cached), since
    only such a token can close the box. As a ``transformers`` stopping criterion (``model.generate(...,
    stopping_criteria=[stop])``) it reads the newest token of each row at every call; use a new one per
    call."""

    def __init__(self, tokenizer, lead_in: str):
        self.tokenizer, self.lead_in = tokenizer, lead_in
        self._has_close: dict[int, bool] = {}
        self._tokens: dict[int, list[int]] = {}
        self._closed: set[int] = set()

    def _may_close(self, token: int) -> bool:
        if token not in self._has_close:
            self._has_close[token] = "}" in self.tokenizer.decode([token], skip_special_tokens=True)
        return self._has_close[token]

    def update(self, row: int, token: int) -> bool:
        if row in self._closed:
            return True
        tokens = self._tokens.setdefault(row, [])
        tokens.append(int(token))
        if self._may_close(int(token)):
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            if answer_end(self.lead_in, text) is not None:
                self._closed.add(row)
                return True
        return False

    def __call__(self, input_ids: torch.Tensor, scores=None, **kwargs) -> torch.Tensor:
        last = input_ids[:, -1].tolist()
        done = [self.update(row, token) for row, token in enumerate(last)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def grade_forced_answers(continuations: Iterable[str], gold: str, lead_in: str) -> list[dict]:
    """Grade each sampled continuation of ``lead_in`` (which opens ``\\boxed{``): the continuation is cut
    at the brace that closes that box (:func:`cut_forced_answer`) and the answer is the last
    ``\\boxed{}`` of ``lead_in + cut continuation``; an unclosed box counts as wrong."""
    return [grade(lead_in + cut_forced_answer(text, lead_in), gold) for text in continuations]


def answer_confidence(continuations: Sequence[str], gold: str, lead_in: str) -> float:
    """The fraction of sampled continuations whose answer is correct (Sec. 3.1's confidence)."""
    continuations = list(continuations)
    if not continuations:
        raise ValueError("no sampled continuations: confidence is a fraction of at least one sample")
    verdicts = grade_forced_answers(continuations, gold, lead_in)
    return sum(v["correct"] for v in verdicts) / len(verdicts)


def confidence_deltas(confidences: Sequence[float]) -> pd.DataFrame:
    """Per-segment confidence before/after and Δ from the confidences c_0..c_n of the n+1 prefixes.

    Returns one row per segment: ``segment`` (0-based), ``confidence_before`` (= c_k),
    ``confidence_after`` (= c_{k+1}) and ``delta`` (their difference).
    """
    values = np.asarray(list(confidences), dtype=np.float64)
    if values.ndim != 1 or values.size < 2:
        raise ValueError("need the confidences of at least two prefixes (the empty trace and one segment)")
    if not np.all(np.isfinite(values)) or np.any((values < 0) | (values > 1)):
        raise ValueError("confidences must be fractions in [0, 1]")
    return pd.DataFrame(
        {
            "segment": np.arange(values.size - 1),
            "confidence_before": values[:-1],
            "confidence_after": values[1:],
            "delta": np.diff(values),
        }
    )


def _filter_top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose mass reaches ``top_p``."""
    if top_p >= 1.0:
        return probs
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    cumulative = sorted_probs.cumsum(dim=-1)
    remove = cumulative - sorted_probs >= top_p  # the mass before this token already reaches top_p
    sorted_probs = sorted_probs.masked_fill(remove, 0.0)
    filtered = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return filtered / filtered.sum(dim=-1, keepdim=True)


@torch.no_grad()
def sample_continuations(
    model,
    tokenizer,
    prompts: Sequence[str],
    n_samples: int,
    settings: SamplingSettings,
    seed: int,
    lead_in: str | None = None,
) -> list[list[str]]:
    """``n_samples`` continuations of every prompt, the prompt encoded once and its cache shared.

    Prompts are left-padded into one batch; after the prefill the key/value cache and the last
    logits are repeated ``n_samples`` times and decoding runs for ``settings.max_new_tokens`` steps
    or until every row has produced EOS, or, given the forced answer's ``lead_in``, has closed the box
    it opens (:class:`AnswerCloses`). Returns, per prompt, the decoded texts (special tokens skipped,
    cut at EOS or after the closing brace). Deterministic for a given ``seed`` and batch; a stopped row
    draws no fewer random numbers, so the other rows' samples are those without the stop.
    """
    if n_samples < 1:
        raise ValueError("n_samples must be positive")
    if not prompts:
        return []
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer needs a pad and an EOS token for batched sampling")
    device = next(model.parameters()).device
    batch = left_padded_batch(tokenizer, prompts, device)
    input_ids, mask = batch["input_ids"], batch["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    was_training = model.training
    model.eval()
    try:
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache = out.cache
        cache.batch_repeat_interleave(n_samples)
        logits = out.logits[:, -1, :].float().repeat_interleave(n_samples, dim=0)
        mask = mask.repeat_interleave(n_samples, dim=0)
        next_position = positions[:, -1:].repeat_interleave(n_samples, dim=0) + 1
        generator = torch.Generator(device=device).manual_seed(int(seed))
        eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        finished = torch.zeros(logits.shape[0], dtype=torch.bool, device=device)
        stop = AnswerCloses(tokenizer, lead_in) if lead_in is not None else None
        ends: list[int | None] = [None] * logits.shape[0]  # where a row closed its answer's box
        tokens = []
        for step in range(settings.max_new_tokens):
            if settings.greedy:
                token = logits.argmax(dim=-1)
            else:
                probs = torch.softmax(logits / settings.temperature, dim=-1)
                probs = _filter_top_p(probs, settings.top_p)
                token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            token = torch.where(finished, torch.full_like(token, pad), token)
            tokens.append(token)
            if stop is not None:
                for row in (~finished).nonzero().flatten().tolist():
                    if stop.update(row, int(token[row])):
                        finished[row], ends[row] = True, step + 1
            finished |= token == eos
            if bool(finished.all()) or step == settings.max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
            out = model(
                input_ids=token[:, None], attention_mask=mask, position_ids=next_position, cache=cache, use_cache=True
            )
            cache = out.cache
            logits = out.logits[:, -1, :].float()
            next_position = next_position + 1
    finally:
        model.train(was_training)
    generated = torch.stack(tokens, dim=1).tolist()
    texts = []
    for row, end in zip(generated, ends):
        row = row if end is None else row[:end]
        if eos in row:
            row = row[: row.index(eos)]
        texts.append(tokenizer.decode(row, skip_special_tokens=True))
    return [texts[i * n_samples : (i + 1) * n_samples] for i in range(len(prompts))]


# ---------------------------------------------------------------------------------------------
# Important / unimportant groups (Eq. 5-7 at the analysis thresholds)


def group_summary(labelled: pd.DataFrame, value: str = "delta") -> pd.DataFrame:
    """``n``, mean, SEM and median of ``value`` for the important set, the unimportant set and each of
    the four strength × consistency groups (Fig. 2). Empty groups have n = 0 and a note."""
    rows = []
    sets = [("important", labelled["important"]), ("unimportant", ~labelled["important"])]
    sets += [(name, labelled["group"] == name) for name in GROUPS]
    for name, selector in sets:
        stats = describe(labelled.loc[selector, value])
        rows.append({"group": name, **stats, "note": "" if stats["n"] else "no segments in this group"})
    return pd.DataFrame(rows)


def delta_gap(labelled: pd.DataFrame, value: str = "delta") -> dict:
    """Important vs unimportant comparison of ``value``: ``gap`` = the difference of the segment means and
    the pooled Mann-Whitney U (``p_value``: segments treated as independent), and the trace-level test
    (:func:`segattr_utils.measures.trace_stats.trace_level_comparison`: within-trace differences, Wilcoxon
    signed-rank over traces, bootstrap interval), which is the one to read."""
    stats = compare_groups(
        labelled.loc[labelled["important"], value],
        labelled.loc[~labelled["important"], value],
        "important",
        "unimportant",
    )
    return {
        "n_important": stats["n_a"],
        "n_unimportant": stats["n_b"],
        "delta_important": stats["mean_a"],
        "delta_unimportant": stats["mean_b"],
        "gap": stats["difference"],
        "p_value": stats["p_value"],
        "note": stats["note"],
        **trace_level_comparison(labelled, value),
    }


def _threshold_table(table: pd.DataFrame, name: str, grid: Sequence[float], fixed: dict) -> pd.DataFrame:
    rows = []
    for threshold in grid:
        settings = {**fixed, name: float(threshold)}
        labelled = label_segments(table, settings["tau"], settings["beta"])
        row = {"tau": settings["tau"], "beta": settings["beta"], **delta_gap(labelled)}
        for group in GROUPS:
            row[f"delta[{group}]"] = describe(labelled.loc[labelled["group"] == group, "delta"])["mean"]
        rows.append(row)
    return pd.DataFrame(rows)


def tau_search(table: pd.DataFrame, tau_grid: Sequence[float], beta: float) -> pd.DataFrame:
    """Fig. 4 left: for each τ of ``tau_grid`` (β fixed), the important/unimportant counts, their
    mean Δ, the gap and a Mann-Whitney p-value, and the mean Δ of the four groups; ``selected`` marks
    τ* (:func:`choose_threshold`). ``table`` holds ``trace_id``, ``segment``, ``norm_strength``,
    ``consistency`` and ``delta``."""
    search = _threshold_table(table, "tau", tau_grid, {"beta": beta})
    return _mark_selected(search, "tau")


def beta_ablation(table: pd.DataFrame, tau: float, beta_grid: Sequence[float]) -> pd.DataFrame:
    """Fig. 4 right: the same statistics for each β of ``beta_grid`` under a fixed τ (τ*)."""
    return _mark_selected(_threshold_table(table, "beta", beta_grid, {"tau": tau}), "beta")


def _mark_selected(search: pd.DataFrame, column: str) -> pd.DataFrame:
    chosen = choose_threshold(search, column)
    search = search.copy()
    search["selected"] = search[column] == chosen if chosen is not None else False
    return search


def choose_threshold(search: pd.DataFrame, column: str = "tau"):
    """The greedy choice of Sec. 3.2 (module docstring): the admissible grid value (both sets
    non-empty, gap > 0) with the largest gap; ties go to the lower unimportant Δ, then to the smaller
    value. ``None`` when no grid value is admissible."""
    admissible = search[search["gap"].notna() & (search["n_important"] > 0) & (search["n_unimportant"] > 0)]
    admissible = admissible[admissible["gap"].astype(float) > 0]
    if admissible.empty:
        return None
    best = admissible.assign(
        _gap=-admissible["gap"].astype(float), _unimp=admissible["delta_unimportant"].astype(float)
    )
    best = best.sort_values(["_gap", "_unimp", column], kind="stable")
    return float(best[column].iloc[0])


def importance_shares(labelled: pd.DataFrame, important: str = "important") -> dict:
    """Share of segments and of tokens that are important (Sec. 3.2: about 33% and 45%), computed per
    trace and averaged over traces. ``labelled`` holds ``trace_id``, ``n_tokens`` and ``important``."""
    if labelled.empty:
        return {"traces": 0, "segment_share": None, "token_share": None}
    per_trace = labelled.groupby("trace_id").apply(
        lambda g: pd.Series(
            {
                "segment_share": g[important].mean(),
                "token_share": g.loc[g[important], "n_tokens"].sum() / g["n_tokens"].sum(),
            }
        ),
        include_groups=False,
    )
    return {
        "traces": int(len(per_trace)),
        "segment_share": float(per_trace["segment_share"].mean()),
        "token_share": float(per_trace["token_share"].mean()),
    }
