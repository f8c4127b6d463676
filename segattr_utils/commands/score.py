"""segattr score: segment, attribute and score every trace of an R1 JSONL file with your model.

Each trace (question, output with </think> and a \\boxed{} answer, gold answer) is split into segments
at transition keywords, integrated gradients of the gold answer's log-probability give each token an
attribution (Eq. 1-2), and each segment gets its strength and consistency (Eq. 3-4) and the important
flag (Eq. 5-7; the first and last segments are always kept, App. C.4).

Writes into --out: segments.parquet and segments.csv (one row per segment), traces.parquet (per trace:
completeness error, number of tokens, the trace's answer and whether it is correct, and how IG ran),
skipped.csv (the traces that were not scored, with the reason), settings.json, and run_log.csv (seconds
per trace; the tables hold no timings, so a rerun of equal data writes equal bytes).

The traces file is read and checked by notebook 01's trace import (:mod:`.trace_file`): a record that is
not valid is listed in skipped.csv with its problem, never dropped silently.

Memory (App. C.4): with ``--internal-batch-size auto`` and ``--activation-checkpointing auto`` (the
defaults) the cost estimator chooses, per trace, the fastest setting predicted to fit ``--memory-budget``
(default: the device's free memory); a pass that still runs out of memory is retried with fewer path
points per pass, then with checkpointing, and a trace that fits nowhere is skipped (``out_of_memory``)
while the run goes on (:func:`segattr_utils.method.ig_plan.attribute_sequence`).

Every argument is checked before the model is loaded; a bad one is a one-line error (exit 2).

Resumable: every trace is stored in --out/records.jsonl as soon as it is done, keyed by its id, its text
and the settings that change its attributions (model, J, method, keywords, max length, ...). A rerun
scores only what is missing; changing --tau or --beta reuses the attributions.

Over-length traces (an attributed sequence longer than --max-length, or than the model's positions)
are skipped and listed, never truncated: IG needs the whole trace and the answer after it.

Several GPUs: ``--processes N`` (or ``auto``, one per visible GPU) attributes the traces in N processes of
one ``accelerate launch`` (the same path as notebook 03: each rank loads its own copy of the model on its
GPU, takes every N-th trace of the list sorted longest first and appends to its own rank store; the ranks'
records are then merged into records.jsonl in the file's order, so the tables do not depend on the split).
A killed launch keeps every rank's finished traces; the next run merges them first. On several machines,
start ``accelerate launch ... -m segattr_utils.workers score --settings ... --items ... --store ...`` on
each (the files a ``--processes`` run leaves in ``--out/records.launch/`` when it fails), then run the same
``segattr score`` command once more to merge.

Example:
    segattr score --model models/R1-Distill-Qwen-7B --traces traces.jsonl --out scores/ --n-steps 50 \\
        --memory-budget 70 --activation-checkpointing auto --internal-batch-size auto
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

from .. import distributed
from ..artifacts import RecordStore, atomic_write_text, fingerprint
from ..method.attribution import FLAG_RELATIVE_DELTA
from ..method.ig_plan import AUTO, IGSettings
from ..method.importance import AGGREGATIONS
from ..method.quadrature import METHODS
from ..method.segmentation import DEFAULT_KEYWORDS, RETRO_SEARCH_KEYWORDS
from ..method.token_spans import DEFAULT_ANSWER_SUFFIX
from ..progress import progress
from ..run_log import append_seconds
from . import scores_dir
from .trace_file import TraceFileError, TraceInput, read_score_traces, trace_settings

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
        try:
            keywords = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"--keywords {path}: not valid JSON ({error.msg}, line {error.lineno})") from None
        if not isinstance(keywords, list) or not keywords or not all(isinstance(k, str) and k for k in keywords):
            raise ValueError(f"{path} must hold a JSON list of non-empty strings")
        return tuple(keywords)
    keywords = tuple(line.replace("\\n", "\n") for line in text.splitlines() if line.strip())
    if not keywords:
        raise ValueError(f"{path} holds no keywords")
    return keywords


def _chunk(value: str) -> int | str:
    """``--internal-batch-size``: ``auto`` or the text of an integer (checked by :func:`argument_problem`)."""
    if value == AUTO:
        return AUTO
    try:
        return int(value)
    except ValueError:
        return value


CHECKPOINTING = {"auto": AUTO, "on": True, "off": False}


def _processes(value: str) -> int | str:
    """``--processes``: ``auto`` or the text of an integer (checked by :func:`argument_problem`)."""
    return _chunk(value)


def resolve_processes(choice: int | str) -> int:
    """The number of attribution processes: ``auto`` is one per visible CUDA GPU (one without a GPU)."""
    if choice != AUTO:
        return int(choice)
    import torch

    return max(torch.cuda.device_count(), 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a model folder, or a hub id already in the local cache")
    parser.add_argument("--traces", required=True, help="R1 traces: JSONL with question, output, answer (and id)")
    parser.add_argument("--out", required=True, help="the output folder (created; reruns resume in it)")
    parser.add_argument("--n-steps", type=int, default=50, help="IG path points J, at least 2 (default 50)")
    parser.add_argument(
        "--method",
        default="gausslegendre",
        choices=METHODS,
        help="quadrature rule; 'official' is the authors' (default gausslegendre: complete with fewer points)",
    )
    parser.add_argument(
        "--tau", type=float, default=0.7, help="share of strength the top segments hold, in (0, 1] (Eq. 6)"
    )
    parser.add_argument(
        "--beta", type=float, default=0.8, help="consistency cap of important segments, in [0, 1] (Eq. 7)"
    )
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
    parser.add_argument(
        "--internal-batch-size",
        type=_chunk,
        default=AUTO,
        metavar="auto|N",
        help="IG path points per pass: N, or auto (default: the most --memory-budget allows)",
    )
    parser.add_argument(
        "--activation-checkpointing",
        default="auto",
        choices=tuple(CHECKPOINTING),
        help="recompute each layer in the backward pass: on, off, or auto (default: only where a trace needs it)",
    )
    parser.add_argument(
        "--memory-budget",
        type=float,
        default=None,
        metavar="GiB",
        help="memory IG may use beside the weights, in GiB (default: the device's free memory)",
    )
    parser.add_argument(
        "--retry-out-of-memory",
        action="store_true",
        help="attribute again the traces an earlier run in --out skipped for memory (default: keep them skipped)",
    )
    parser.add_argument(
        "--processes",
        type=_processes,
        default=1,
        metavar="N|auto",
        help="attribution processes, one GPU each, under accelerate launch (auto: one per visible GPU; default 1)",
    )
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: CUDA when available)")
    parser.add_argument(
        "--flag-relative-delta",
        type=float,
        default=FLAG_RELATIVE_DELTA,
        help="flag traces whose relative completeness error exceeds this (default 0.05)",
    )
    parser.add_argument("--id-field", default=None, help="the trace file's field for the id (default: id, if present)")
    for field in ("question", "output", "answer"):
        parser.add_argument(f"--{field}-field", default=field, help=f"the trace file's field for the {field}")
    parser.add_argument(
        "--output-index", type=int, default=None, help="which output (from 0) when the output field is a list"
    )


#: IGSettings' names of the IG arguments, as the command line spells them.
IG_OPTIONS = {
    "n_steps": "--n-steps",
    "method": "--method",
    "internal_batch_size": "--internal-batch-size",
    "activation_checkpointing": "--activation-checkpointing",
    "memory_budget_gb": "--memory-budget",
}


def ig_settings(args: argparse.Namespace) -> IGSettings:
    """The IG settings of the arguments; ``ValueError`` names the option (:meth:`IGSettings.problem`)."""
    if args.internal_batch_size != AUTO and not (
        isinstance(args.internal_batch_size, int) and args.internal_batch_size > 0
    ):
        raise ValueError(
            f"--internal-batch-size must be 'auto' or a positive integer, got {args.internal_batch_size!r}"
        )
    try:
        return IGSettings(
            n_steps=args.n_steps,
            method=args.method,
            internal_batch_size=args.internal_batch_size,
            activation_checkpointing=CHECKPOINTING[args.activation_checkpointing],
            memory_budget_gb=args.memory_budget,
        )
    except ValueError as error:
        message = str(error).replace(" or null", "")
        name = message.split()[0]
        raise ValueError(message.replace(name, IG_OPTIONS.get(name, name), 1)) from None


def argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments (other than the IG ones and the files), in one line, or None."""
    if not 0 < args.tau <= 1:
        return f"--tau must lie in (0, 1] (the share of strength the top segments hold, Eq. 6), got {args.tau}"
    if not 0 <= args.beta <= 1:
        return f"--beta must lie in [0, 1] (the consistency cap of important segments, Eq. 7), got {args.beta}"
    if not (math.isfinite(args.flag_relative_delta) and args.flag_relative_delta >= 0):
        return f"--flag-relative-delta must be a finite number of at least 0, got {args.flag_relative_delta}"
    if args.max_length is not None and args.max_length < 1:
        return f"--max-length must be a positive number of tokens, got {args.max_length}"
    processes = getattr(args, "processes", 1)
    if processes != AUTO and not (isinstance(processes, int) and processes > 0):
        return f"--processes must be 'auto' or a positive integer, got {processes!r}"
    if processes != 1 and args.device not in (None, "cpu", "cuda"):
        return f"--device {args.device} names one device; with --processes every process takes its own GPU"
    if args.output_index is not None and args.output_index < 0:
        return f"--output-index must be 0 or more (the first output is 0), got {args.output_index}"
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return f"--out {str(out)!r} is a file, not a folder"
    return None


def settings_of(args: argparse.Namespace, keywords: tuple[str, ...], ig: IGSettings) -> dict:
    return {
        "model": args.model,
        "dtype": args.dtype,
        "n_steps": ig.n_steps,
        "method": ig.method,
        "keywords": list(keywords),
        "baseline_token_id": None,  # the tokenizer's pad token (App. C.4)
        "answer_suffix": DEFAULT_ANSWER_SUFFIX,
        "max_length": args.max_length,
        "tau": args.tau,
        "beta": args.beta,
        "aggregation": args.aggregation,
        "always_keep": args.always_keep,
        "flag_relative_delta": args.flag_relative_delta,
        "internal_batch_size": ig.internal_batch_size,
        "activation_checkpointing": ig.activation_checkpointing,
        "memory_budget_gb": ig.memory_budget_gb,
    }


def record_key(trace: TraceInput, settings: dict) -> list[str]:
    """A record's key: the trace id and a fingerprint of its text and of the attribution settings."""
    attribution = {k: settings[k] for k in ATTRIBUTION_KEYS}
    return [trace.trace_id, fingerprint(attribution, trace.question, trace.output, trace.answer)]


def score_one(model, tokenizer, trace: TraceInput, settings: dict) -> dict:
    """The stored record of one trace: the scored trace (with the IG settings it ran with), or the
    reason it was skipped."""
    from ..scored_trace import AttributionOutOfMemoryError, OverLengthError, TraceFormatError, score_trace

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
            activation_checkpointing=settings["activation_checkpointing"],
            memory_budget_gb=settings["memory_budget_gb"],
            answer_suffix=settings["answer_suffix"],
            max_length=settings["max_length"],
            warn_relative_delta=None,  # flagged in traces.parquet and in the summary instead
        )
    except (TraceFormatError, OverLengthError, AttributionOutOfMemoryError) as error:
        return {"skipped": error.reason, "detail": str(error)}
    except ValueError as error:  # anything else about this trace's content: listed, the run goes on
        return {"skipped": "invalid", "detail": str(error)}
    return {"skipped": None, "scored": scored.to_record()}


LAUNCH_SETTINGS = "settings.json"


def launch_scoring(out: Path, settings: dict, todo: list[dict], store: RecordStore, processes: int) -> None:
    """Score ``todo`` (items: ``key``, ``trace_id``, ``question``, ``output``, ``answer``) in ``processes``
    ranks of one ``accelerate launch`` (:func:`segattr_utils.distributed.launch_items`, job ``score``), each
    running :func:`score_share`; their records are merged into ``store`` in the order of ``todo``."""
    import os

    folder = distributed.launch_folder(store)
    folder.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // processes)
    launch = {"settings": settings, "threads": threads, "run_log": str(out / scores_dir.RUN_LOG)}
    atomic_write_text(folder / LAUNCH_SETTINGS, json.dumps(launch, indent=1, sort_keys=True))
    if not (out / scores_dir.RUN_LOG).exists():  # the header once, before the ranks append to it
        atomic_write_text(out / scores_dir.RUN_LOG, "what,seconds\n")
    distributed.launch_items(
        "score",
        ["--settings", str(folder / LAUNCH_SETTINGS)],
        todo,
        store,
        processes,
        threads,
        "integrated gradients",
        unit="trace",
    )


def score_share(settings_path: Path, items: list[dict], store_path: Path) -> int:
    """This process's share of a ``--processes`` launch (a rank under ``accelerate launch``; all of the
    items outside one): the traces that neither the store nor any rank store holds, dealt longest first
    over the ranks (:func:`segattr_utils.distributed.share_of_this_process`), each record appended to this
    rank's own store. Returns how many traces this rank scored."""
    import torch

    from ..llm.models import load_causal_lm

    launch = json.loads(Path(settings_path).read_text(encoding="utf-8"))
    settings = launch["settings"]
    store = RecordStore(store_path, key_fn=lambda r: r["key"])
    on_cpu = settings.get("device") == "cpu" or not torch.cuda.is_available()
    state, mine, own = distributed.share_of_this_process(
        items, store, cpu=on_cpu, weight=lambda item: len(item["output"])
    )
    if not mine:
        return 0
    torch.set_num_threads(int(launch["threads"]))
    device = "cpu" if on_cpu else str(state.device)
    model, tokenizer = load_causal_lm(settings["model"], dtype=settings["dtype"], device=device)
    bar = progress(mine, desc=f"IG, rank {state.process_index}", unit="trace", disable=not state.is_local_main_process)
    for item in bar:
        trace = TraceInput(item["trace_id"], item["question"], item["output"], item["answer"])
        started = time.perf_counter()
        record = score_one(model, tokenizer, trace, settings)
        own.append([{"key": item["key"], "trace_id": trace.trace_id, **record}])
        what = f"{trace.trace_id}: " + ("integrated gradients" if record["skipped"] is None else record["skipped"])
        append_seconds(launch["run_log"], what, time.perf_counter() - started)
    return len(mine)


def _ids(ids: list[str], limit: int = 10) -> str:
    return ", ".join(ids[:limit]) + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def _refuse(message: str) -> int:
    print(f"segattr score: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from ..llm.models import ModelUnavailableError, load_causal_lm
    from ..scored_trace import AttributionOutOfMemoryError, ScoredTrace

    # every argument first, then the keywords file, then the traces file: nothing heavy before all are good
    try:
        ig = ig_settings(args)
        problem = argument_problem(args)
        if problem:
            return _refuse(problem)
        keywords = read_keywords(args.keywords)
        fields = {f: getattr(args, f"{f}_field") for f in ("id", "question", "output", "answer")}
        source = trace_settings(args.traces, fields, args.output_index)
        traces, rejected = read_score_traces(source)
    except (TraceFileError, ValueError) as error:
        return _refuse(str(error))
    out = Path(args.out)
    settings = settings_of(args, keywords, ig)
    store = RecordStore(out / scores_dir.RECORDS, key_fn=lambda r: r["key"])
    keys = {t.trace_id: record_key(t, settings) for t in traces}
    # the finished traces of a killed --processes launch (or of ranks started by hand on several machines)
    distributed.merge_rank_stores(store, [keys[t.trace_id] for t in traces])
    if args.retry_out_of_memory:
        wanted = {tuple(k) for k in keys.values()}
        memory = [r["key"] for r in store.records() if r["skipped"] == AttributionOutOfMemoryError.reason]
        store.discard([k for k in memory if tuple(k) in wanted])
    todo = [t for t in traces if keys[t.trace_id] not in store]
    invalid = f", {len(rejected)} invalid record(s) not scored" if rejected else ""
    print(
        f"segattr score: {len(traces)} traces, {len(traces) - len(todo)} already scored in {out}{invalid}", flush=True
    )
    processes = min(resolve_processes(args.processes), max(len(todo), 1))
    if todo and processes > 1:
        items = [
            {
                "key": keys[t.trace_id],
                "trace_id": t.trace_id,
                "question": t.question,
                "output": t.output,
                "answer": t.answer,
            }
            for t in todo
        ]
        try:
            launch_scoring(out, dict(settings, device=args.device), items, store, processes)
        except RuntimeError as error:
            print(f"segattr score: {error}", file=sys.stderr)
            return 1
    elif todo:
        try:
            model, tokenizer = load_causal_lm(args.model, dtype=args.dtype, device=args.device)
        except ModelUnavailableError as error:
            return _refuse(str(error))
        for trace in progress(todo, desc="integrated gradients", unit="trace"):
            started = time.perf_counter()
            record = score_one(model, tokenizer, trace, settings)
            store.append([{"key": keys[trace.trace_id], "trace_id": trace.trace_id, **record}])
            what = f"{trace.trace_id}: " + ("integrated gradients" if record["skipped"] is None else record["skipped"])
            append_seconds(out / scores_dir.RUN_LOG, what, time.perf_counter() - started)

    records = {tuple(r["key"]): r for r in store.records()}
    scored, skipped = {}, list(rejected)
    for trace in traces:
        record = records[tuple(keys[trace.trace_id])]
        if record["skipped"]:
            skipped.append({"trace_id": trace.trace_id, "reason": record["skipped"], "detail": record["detail"]})
            continue
        selection = {k: settings[k] for k in scores_dir.SELECTION_KEYS}
        scored[trace.trace_id] = ScoredTrace.from_record(record["scored"]).rescored(**selection)
    scores_dir.write_scores(out, scored, skipped, settings)

    n_segments = sum(s.n_segments for s in scored.values())
    n_important = sum(len(s.important) for s in scored.values())
    print(f"scored {len(scored)} traces: {n_segments} segments, {n_important} important (Eq. 7) -> {out}")
    for reason, count in Counter(s["reason"] for s in skipped).most_common():
        ids = [s["trace_id"] for s in skipped if s["reason"] == reason]
        print(f"skipped {count} ({reason}): {_ids(ids)}")
    if any(s["reason"] == "over-length" for s in skipped):
        print("  over-length traces are skipped, never truncated (IG needs the whole trace); raise --max-length")
    if any(s["reason"] == AttributionOutOfMemoryError.reason for s in skipped):
        print(
            "  out_of_memory: not even one checkpointed path point per pass fitted; rerun with "
            "--retry-out-of-memory on a device with more memory"
        )
    flagged = [tid for tid, s in scored.items() if s.relative_delta > settings["flag_relative_delta"]]
    if flagged:
        print(
            f"flagged {len(flagged)} traces whose completeness error exceeds {settings['flag_relative_delta']:.0%} "
            f"(raise --n-steps or use --method gausslegendre): {_ids(flagged)}"
        )
    if skipped:
        print(f"see {out / scores_dir.SKIPPED}")
    return 0 if scored else 1
