"""segattr score: segment, attribute and score every trace of an R1 JSONL file with your model.

Each trace (question, output with </think> and a \\boxed{} answer, gold answer) is split into segments
at transition keywords, integrated gradients of the gold answer's log-probability give each token an
attribution (Eq. 1-2), and each segment gets its strength and consistency (Eq. 3-4) and the important
flag (Eq. 5-7; the first and last segments are always kept, App. C.4).

Writes into --out: segments.parquet and segments.csv (one row per segment), traces.parquet (per trace:
completeness error, number of tokens, the trace's answer and whether it is correct), skipped.csv (the
traces that were not scored, with the reason), settings.json.

Resumable: every trace is stored in --out/records.jsonl as soon as it is done, keyed by its id, its text
and the settings that change its attributions (model, J, method, keywords, max length, ...). A rerun
scores only what is missing; changing --tau or --beta reuses the attributions.

Over-length traces (an attributed sequence longer than --max-length, or than the model's positions)
are skipped and listed, never truncated: IG needs the whole trace and the answer after it.

Example:
    segattr score --model models/R1-Distill-Qwen-1.5B --traces traces.jsonl --out scores/ --n-steps 50
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from ..artifacts import RecordStore, fingerprint
from ..method.attribution import FLAG_RELATIVE_DELTA
from ..method.importance import AGGREGATIONS
from ..method.quadrature import METHODS
from ..method.segmentation import DEFAULT_KEYWORDS, RETRO_SEARCH_KEYWORDS
from ..method.token_spans import DEFAULT_ANSWER_SUFFIX
from ..progress import progress
from . import scores_dir
from .trace_file import TraceFileError, TraceInput, read_r1_traces

KEYWORD_LISTS = {"default": DEFAULT_KEYWORDS, "retro_search": RETRO_SEARCH_KEYWORDS}
#: Settings that change a trace's attributions: part of every record's key. tau, beta, aggregation and
#: always_keep only change the selection, which is recomputed from the stored attributions.
ATTRIBUTION_KEYS = (
    "model",
    "dtype",
    "n_steps",
    "method",
    "keywords",
    "baseline_token_id",
    "answer_suffix",
    "max_length",
)


def read_keywords(choice: str) -> tuple[str, ...]:
    """``default``, ``retro_search``, or a file: a ``.json`` list of strings, or one keyword per line
    with ``\\n`` written as the two characters backslash-n (``\\n\\nWait``)."""
    if choice in KEYWORD_LISTS:
        return KEYWORD_LISTS[choice]
    path = Path(choice)
    if not path.is_file():
        raise ValueError(f"--keywords {choice!r} is neither 'default', 'retro_search' nor an existing file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        keywords = json.loads(text)
        if not isinstance(keywords, list) or not all(isinstance(k, str) and k for k in keywords):
            raise ValueError(f"{path} must hold a JSON list of non-empty strings")
        return tuple(keywords)
    keywords = tuple(line.replace("\\n", "\n") for line in text.splitlines() if line.strip())
    if not keywords:
        raise ValueError(f"{path} holds no keywords")
    return keywords


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a model folder, or a hub id already in the local cache")
    parser.add_argument("--traces", required=True, help="R1 traces: JSONL with question, output, answer (and id)")
    parser.add_argument("--out", required=True, help="the output folder (created; reruns resume in it)")
    parser.add_argument("--n-steps", type=int, default=50, help="IG path points J (default 50)")
    parser.add_argument(
        "--method",
        default="gausslegendre",
        choices=METHODS,
        help="quadrature rule; 'official' is the authors' (default gausslegendre: complete with fewer points)",
    )
    parser.add_argument("--tau", type=float, default=0.7, help="share of strength the top segments hold (Eq. 6)")
    parser.add_argument("--beta", type=float, default=0.8, help="consistency cap of important segments (Eq. 7)")
    parser.add_argument("--aggregation", default="sqrt_len", choices=AGGREGATIONS, help="segment strength (Eq. 3)")
    parser.add_argument(
        "--always-keep",
        default="first_last",
        choices=("first_last", "official", "none"),
        help="segments always trained (App. C.4; default: first and last)",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="skip (and list) traces whose attributed sequence is longer (default: the model's positions)",
    )
    parser.add_argument(
        "--keywords",
        default="default",
        help="transition keywords: default (App. C.2), retro_search (Table 7), or a file (.json list, or one per line)",
    )
    parser.add_argument("--internal-batch-size", type=int, default=None, help="IG path points per pass (memory)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: CUDA when available)")
    parser.add_argument(
        "--flag-relative-delta",
        type=float,
        default=FLAG_RELATIVE_DELTA,
        help="flag traces whose relative completeness error exceeds this (default 0.05)",
    )
    for field in ("id", "question", "output", "answer"):
        parser.add_argument(f"--{field}-field", default=field, help=f"the trace file's field for the {field}")
    parser.add_argument("--output-index", type=int, default=None, help="which output when the field is a list")


def settings_of(args: argparse.Namespace, keywords: tuple[str, ...]) -> dict:
    return {
        "model": args.model,
        "dtype": args.dtype,
        "n_steps": args.n_steps,
        "method": args.method,
        "keywords": list(keywords),
        "baseline_token_id": None,  # the tokenizer's pad token (App. C.4)
        "answer_suffix": DEFAULT_ANSWER_SUFFIX,
        "max_length": args.max_length,
        "tau": args.tau,
        "beta": args.beta,
        "aggregation": args.aggregation,
        "always_keep": args.always_keep,
        "flag_relative_delta": args.flag_relative_delta,
        "internal_batch_size": args.internal_batch_size,
    }


def record_key(trace: TraceInput, settings: dict) -> list[str]:
    """A record's key: the trace id and a fingerprint of its text and of the attribution settings."""
    attribution = {k: settings[k] for k in ATTRIBUTION_KEYS}
    return [trace.trace_id, fingerprint(attribution, trace.question, trace.output, trace.answer)]


def score_one(model, tokenizer, trace: TraceInput, settings: dict) -> dict:
    """The stored record of one trace: the scored trace, or the reason it was skipped."""
    from ..scored_trace import OverLengthError, TraceFormatError, score_trace

    started = time.perf_counter()
    try:
        scored = score_trace(
            model,
            tokenizer,
            trace.question,
            trace.output,
            trace.answer,
            n_steps=settings["n_steps"],
            method=settings["method"],
            tau=settings["tau"],
            beta=settings["beta"],
            keywords=settings["keywords"],
            aggregation=settings["aggregation"],
            always_keep=settings["always_keep"],
            baseline_token_id=settings["baseline_token_id"],
            internal_batch_size=settings["internal_batch_size"],
            answer_suffix=settings["answer_suffix"],
            max_length=settings["max_length"],
            warn_relative_delta=None,  # flagged in traces.parquet and in the summary instead
        )
    except (TraceFormatError, OverLengthError) as error:
        return {"skipped": error.reason, "detail": str(error)}
    except ValueError as error:  # anything else about this trace's content: listed, the run goes on
        return {"skipped": "invalid", "detail": str(error)}
    return {"skipped": None, "seconds": round(time.perf_counter() - started, 3), "scored": scored.to_record()}


def _ids(ids: list[str], limit: int = 10) -> str:
    return ", ".join(ids[:limit]) + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def run(args: argparse.Namespace) -> int:
    from ..llm.models import ModelUnavailableError, load_causal_lm
    from ..scored_trace import ScoredTrace

    try:
        fields = {f: getattr(args, f"{f}_field") for f in ("id", "question", "output", "answer")}
        traces = read_r1_traces(args.traces, fields, args.output_index)
        keywords = read_keywords(args.keywords)
    except (TraceFileError, ValueError) as error:
        print(f"segattr score: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    settings = settings_of(args, keywords)
    store = RecordStore(out / scores_dir.RECORDS, key_fn=lambda r: r["key"])
    keys = {t.trace_id: record_key(t, settings) for t in traces}
    todo = [t for t in traces if keys[t.trace_id] not in store]
    print(f"segattr score: {len(traces)} traces, {len(traces) - len(todo)} already scored in {out}", flush=True)
    if todo:
        try:
            model, tokenizer = load_causal_lm(args.model, dtype=args.dtype, device=args.device)
        except ModelUnavailableError as error:
            print(f"segattr score: {error}", file=sys.stderr)
            return 2
        for trace in progress(todo, desc="integrated gradients", unit="trace"):
            store.append(
                [
                    {
                        "key": keys[trace.trace_id],
                        "trace_id": trace.trace_id,
                        **score_one(model, tokenizer, trace, settings),
                    }
                ]
            )

    records = {tuple(r["key"]): r for r in store.records()}
    scored, skipped, seconds = {}, [], {}
    for trace in traces:
        record = records[tuple(keys[trace.trace_id])]
        if record["skipped"]:
            skipped.append({"trace_id": trace.trace_id, "reason": record["skipped"], "detail": record["detail"]})
            continue
        selection = {k: settings[k] for k in scores_dir.SELECTION_KEYS}
        scored[trace.trace_id] = ScoredTrace.from_record(record["scored"]).rescored(**selection)
        seconds[trace.trace_id] = record["seconds"]
    scores_dir.write_scores(out, scored, skipped, settings, seconds)

    n_segments = sum(s.n_segments for s in scored.values())
    n_important = sum(len(s.important) for s in scored.values())
    print(f"scored {len(scored)} traces: {n_segments} segments, {n_important} important (Eq. 7) -> {out}")
    for reason, count in Counter(s["reason"] for s in skipped).most_common():
        ids = [s["trace_id"] for s in skipped if s["reason"] == reason]
        print(f"skipped {count} ({reason}): {_ids(ids)}")
    if any(s["reason"] == "over-length" for s in skipped):
        print("  over-length traces are skipped, never truncated (IG needs the whole trace); raise --max-length")
    flagged = [tid for tid, s in scored.items() if s.relative_delta > settings["flag_relative_delta"]]
    if flagged:
        print(
            f"flagged {len(flagged)} traces whose completeness error exceeds {settings['flag_relative_delta']:.0%} "
            f"(raise --n-steps or use --method gausslegendre): {_ids(flagged)}"
        )
    if skipped:
        print(f"see {out / scores_dir.SKIPPED}")
    return 0 if scored else 1
