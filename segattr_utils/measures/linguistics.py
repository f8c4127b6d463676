"""Linguistic properties of segments (Sec. 3.1, findings 2-3, Fig. 3) and the removal-based segment
perplexity of Cui et al. (the "Segment Perplexity" baseline of Sec. 4.4, Table 3).

**Log-perplexity and entropy (finding 2).** "We calculate the log perplexity and entropy of all tokens
in each long reasoning trace and aggregate them at the segment level." ONE forward pass of the model
over ``prompt + trace`` gives, for every trace token x_t, its negative log-likelihood
−log p(x_t | x_<t) and the entropy H(p(· | x_<t)) = −Σ_v p(v | x_<t) log p(v | x_<t) of the
distribution it was drawn from (both in nats). A segment's ``log_ppl`` is the mean NLL over its tokens
(the log of its perplexity) and its ``entropy`` the mean entropy over its tokens. Segment token spans
come from one tokenisation of the whole text (:mod:`segattr_utils.method.token_spans`, first-character rule),
exactly as for IG.

**BLEU against preceding segments (finding 3).** "We calculate BLEU similarity of each segment
against all preceding segments within the same CoT." Here the segment is the hypothesis of
sacrebleu's sentence BLEU (13a tokenisation, exponential smoothing, effective order: sacrebleu's
sentence-level defaults) and the preceding segments are its references:

- ``reference="segments"`` (default): every preceding segment is a separate reference, so n-gram
  matches are clipped per reference and the brevity penalty uses the closest reference length. A
  segment that repeats one earlier segment scores near 1.
- ``reference="concatenation"``: the preceding segments joined into one reference. The brevity
  penalty then compares a segment with the whole preceding trace, so every segment shorter than
  its prefix is pushed towards 0 even when it is a verbatim repetition; offered for comparison.

Scores are divided by 100 (range [0, 1], the paper's "BLEU > 0.8"). The first segment has no
preceding segment and gets BLEU 0.

**Removal perplexity (Cui et al., 2025b; Sec. 4.4).** "Identifying critical segments whose removal
leads to a substantial increase in CoT perplexity." The CoT's perplexity is exp(mean NLL) over the
model's output tokens (the reasoning plus the answer part after it, e.g. ``"\\n</think>\\n\\nThe final
answer is \\boxed{6}."``) given the prompt. For segment S_m, ``removal_ppl_increase`` =
PPL(output without S_m) − PPL(output). The answer part is scored too, so removing the only segment of a
one-segment trace is still defined; a large increase marks a segment the rest of the output depends on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch

from ..method.token_spans import char_spans_to_token_spans, tokenize_with_offsets

BleuReference = Literal["segments", "concatenation"]


# ---------------------------------------------------------------------------------------------
# Per-token statistics from logits (pure)


def token_nll_and_entropy(
    logits: torch.Tensor, input_ids: torch.Tensor, chunk: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """NLL −log p(x_t | x_<t) and entropy H(p(· | x_<t)) of tokens t = 1..T−1, in nats.

    ``logits`` is ``[T, V]`` (position t predicts token t+1), ``input_ids`` is ``[T]``. Element i of
    each returned array belongs to token i + 1 (token 0 has no prediction).
    """
    if logits.ndim != 2 or input_ids.ndim != 1 or logits.shape[0] != input_ids.shape[0]:
        raise ValueError(
            f"need logits [T, V] and input_ids [T], got {tuple(logits.shape)} and {tuple(input_ids.shape)}"
        )
    if input_ids.shape[0] < 2:
        raise ValueError("need at least two tokens: the first token has no prediction")
    targets = input_ids[1:].long()
    nll, entropy = [], []
    for start in range(0, targets.shape[0], chunk):  # chunks bound the memory of [T, V] in float64
        log_probs = torch.log_softmax(logits[start : start + chunk][: targets.shape[0] - start].double(), dim=-1)
        nll.append(-log_probs.gather(-1, targets[start : start + chunk, None]).squeeze(-1))
        entropy.append(-(log_probs.exp() * log_probs).sum(-1))
    return torch.cat(nll).cpu().numpy(), torch.cat(entropy).cpu().numpy()


def span_means(per_token: np.ndarray, spans: Sequence[tuple[int, int]]) -> list[float]:
    """Mean of a per-token statistic (as returned by :func:`token_nll_and_entropy`, index = token − 1)
    over each half-open token span. Spans must be non-empty and start at token 1 or later."""
    means = []
    for start, end in spans:
        if end <= start:
            raise ValueError(f"token span ({start}, {end}) is empty: a segment must hold at least one token")
        if start < 1 or end - 1 > len(per_token):
            raise ValueError(f"token span ({start}, {end}) is outside the predicted tokens 1..{len(per_token)}")
        means.append(float(np.mean(per_token[start - 1 : end - 1])))
    return means


def perplexity(nll: Sequence[float] | np.ndarray) -> float:
    """exp(mean NLL) of a set of tokens."""
    values = np.asarray(list(nll), dtype=np.float64)
    if values.size == 0:
        raise ValueError("perplexity of zero tokens is undefined")
    return float(math.exp(values.mean()))


# ---------------------------------------------------------------------------------------------
# Model passes


def _segment_char_spans(prompt: str, segments: Sequence[str]) -> list[tuple[int, int]]:
    spans, cursor = [], len(prompt)
    for text in segments:
        spans.append((cursor, cursor + len(text)))
        cursor += len(text)
    return spans


@torch.no_grad()
def segment_perplexity_entropy(model, tokenizer, prompt: str, segments: Sequence[str]) -> pd.DataFrame:
    """``segment``, ``n_tokens``, ``log_ppl`` (mean NLL) and ``entropy`` (mean entropy) of every
    segment, from one forward pass over ``prompt + trace`` (module docstring)."""
    if not segments or any(not s for s in segments):
        raise ValueError("segments must be a non-empty list of non-empty strings")
    text = prompt + "".join(segments)
    input_ids, offsets = tokenize_with_offsets(tokenizer, text)
    spans = char_spans_to_token_spans(offsets, _segment_char_spans(prompt, segments))
    device = next(model.parameters()).device
    ids = torch.tensor(input_ids, device=device)
    logits = model(input_ids=ids[None]).logits[0]
    nll, entropy = token_nll_and_entropy(logits, ids)
    return pd.DataFrame(
        {
            "segment": range(len(segments)),
            "n_tokens": [e - s for s, e in spans],
            "log_ppl": span_means(nll, spans),
            "entropy": span_means(entropy, spans),
        }
    )


@torch.no_grad()
def output_perplexities(model, tokenizer, prompt: str, outputs: Sequence[str], batch_size: int = 16) -> list[float]:
    """Perplexity of each ``output`` given ``prompt`` (exp of the mean NLL over the output's tokens),
    batched with right padding. Each ``prompt + output`` is tokenised once; the output's tokens are
    those whose first character lies after the prompt."""
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    encoded = []
    for output in outputs:
        if not output:
            raise ValueError("an output is empty: its perplexity is undefined")
        ids, offsets = tokenize_with_offsets(tokenizer, prompt + output)
        ((start, end),) = char_spans_to_token_spans(offsets, [(len(prompt), len(prompt) + len(output))])
        if start < 1 or end <= start:
            raise ValueError("the output holds no token after the prompt's first token")
        encoded.append((ids, start, end))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    result = []
    for first in range(0, len(encoded), batch_size):
        chunk = encoded[first : first + batch_size]
        width = max(len(ids) for ids, _, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (ids, _, _) in enumerate(chunk):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        for row, (ids, start, end) in enumerate(chunk):
            nll, _ = token_nll_and_entropy(logits[row, : len(ids)], input_ids[row, : len(ids)].to(device))
            result.append(perplexity(nll[start - 1 : end - 1]))
    return result


def removal_perplexity_increase(
    model, tokenizer, prompt: str, segments: Sequence[str], answer_part: str = "", batch_size: int = 16
) -> list[float]:
    """PPL(output without S_m) − PPL(output) for every segment S_m, where output = trace + ``answer_part``
    (Cui et al.'s segment perplexity; module docstring)."""
    if not segments or any(not s for s in segments):
        raise ValueError("segments must be a non-empty list of non-empty strings")
    variants = ["".join(segments) + answer_part]
    variants += ["".join(s for j, s in enumerate(segments) if j != m) + answer_part for m in range(len(segments))]
    ppl = output_perplexities(model, tokenizer, prompt, variants, batch_size)
    return [value - ppl[0] for value in ppl[1:]]


def summed_entropy(mean_entropy: Sequence[float], n_tokens: Sequence[int]) -> np.ndarray:
    """The "Segment Entropy" score of Sec. 4.4's baseline (Li et al.): a segment's token entropy summed
    over its tokens (its mean entropy x its token count), higher = more important. The one definition
    of that score: the Table 3-4 variants select by it, stage 06 orders segments by it."""
    entropy = np.asarray(list(mean_entropy), dtype=np.float64)
    tokens = np.asarray(list(n_tokens), dtype=np.float64)
    if entropy.shape != tokens.shape or entropy.ndim != 1:
        raise ValueError(f"mean_entropy and n_tokens must be 1-D of one length, got {entropy.shape}, {tokens.shape}")
    if not (np.all(np.isfinite(entropy)) and np.all(np.isfinite(tokens))):
        raise ValueError("mean_entropy or n_tokens contains NaN or inf")
    return entropy * tokens


# ---------------------------------------------------------------------------------------------
# BLEU against the preceding segments


def segment_bleu(segments: Sequence[str], reference: BleuReference = "segments") -> list[float]:
    """Sentence BLEU / 100 of every segment against the segments before it (module docstring); 0 for
    the first segment."""
    import sacrebleu

    if reference not in ("segments", "concatenation"):
        raise ValueError(f"reference must be 'segments' or 'concatenation', got {reference!r}")
    scores = [0.0] if segments else []
    for index in range(1, len(segments)):
        previous = list(segments[:index])
        references = previous if reference == "segments" else ["".join(previous)]
        # sacrebleu's percentage can exceed 100 by a rounding error (a verbatim repeat scores 100.00000000000004)
        scores.append(min(1.0, sacrebleu.sentence_bleu(segments[index], references).score / 100.0))
    return scores
