"""segattr export: a selective-SFT dataset from a `segattr score` folder, ready for TRL's SFTTrainer.

Each scored trace becomes one example: prompt + reasoning + the trace's own answer part + EOS, with
  input_ids        the tokens;
  labels           the token ids where the loss applies, -100 elsewhere: never on the prompt; on the
                   selected segments (important, or the always-kept first and last) with --mask selective
                   (Eq. 9), on every segment with --mask full (Eq. 8); --mask pruned deletes the unselected
                   segments and trains the rest; the answer part and EOS are always trained;
  completion_mask  1 exactly where a label is set.
SFTTrainer uses `labels` as they are (its collator pads them with -100), so the loss is the mean token
cross-entropy over the labelled tokens (Eq. 9). Traces whose own answer is wrong are left out unless
--include-incorrect.

Over-length policy (--max-length): truncate (default) keeps the first N tokens, as SFTTrainer's
keep_start truncation and the authors' trainer do (a cut trace loses its answer part and EOS); skip
drops the example. Both are listed in --out/export_report.json and --out/skipped.csv, with counts; an
example left with no labelled token is dropped and listed.

--format hf saves a `datasets` dataset in --out (datasets.load_from_disk(OUT)); --format jsonl writes
--out/train.jsonl.

Example:
    segattr export --scores scores/ --out sft_data/ --mask selective --max-length 16384
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pandas as pd

from ..artifacts import atomic_write_text, write_json, write_table
from ..scored_trace import MASKS, OVERLENGTH_POLICIES
from . import scores_dir

REPORT = "export_report.json"
JSONL = "train.jsonl"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scores", required=True, help="a folder written by `segattr score`")
    parser.add_argument("--out", required=True, help="the dataset folder (replaced if it holds an earlier export)")
    parser.add_argument("--format", default="hf", choices=("hf", "jsonl"), help="datasets' save_to_disk, or JSONL")
    parser.add_argument("--mask", default="selective", choices=MASKS, help="selective (Eq. 9), full (Eq. 8), pruned")
    parser.add_argument("--max-length", type=int, default=None, help="longest example in tokens (default: no limit)")
    parser.add_argument(
        "--overlength",
        default="truncate",
        choices=OVERLENGTH_POLICIES,
        help="longer examples: truncate to --max-length (keep_start) or skip; both are listed",
    )
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder or hub id (default: the scored model's)")
    parser.add_argument("--include-incorrect", action="store_true", help="also export traces with a wrong answer")


def _prepare_out(out: Path) -> None:
    """Create ``out``; an earlier export there is replaced, any other non-empty folder is left alone."""
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"--out {out} is a file")
        if any(out.iterdir()):
            if not (out / REPORT).is_file():
                raise FileExistsError(f"--out {out} is not empty and holds no earlier export: choose another folder")
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def build_rows(tokenizer, scored: dict, mask: str, max_length, overlength: str, include_incorrect: bool):
    """(dataset rows, skipped [{trace_id, reason, detail}], ids of truncated examples)."""
    from ..scored_trace import training_example

    rows, skipped, truncated = [], [], []
    for trace_id, trace in scored.items():
        if not trace.correct and not include_incorrect:
            detail = f"predicted {trace.predicted!r}, gold {trace.gold_answer!r}"
            skipped.append({"trace_id": trace_id, "reason": "incorrect answer", "detail": detail})
            continue
        try:
            whole = training_example(tokenizer, trace, mask)
        except ValueError as error:  # e.g. pruned with no selected segment: listed, the export goes on
            skipped.append({"trace_id": trace_id, "reason": "invalid", "detail": str(error)})
            continue
        example = training_example(tokenizer, trace, mask, max_length=max_length, overlength=overlength)
        if example is None:
            what = "skip policy" if overlength == "skip" else "no labelled token within it"
            detail = f"{len(whole['input_ids'])} tokens > --max-length {max_length} ({what})"
            skipped.append({"trace_id": trace_id, "reason": "over-length", "detail": detail})
            continue
        if len(example["input_ids"]) < len(whole["input_ids"]):
            truncated.append(trace_id)
        rows.append({"trace_id": trace_id, **example})
    return rows, skipped, truncated


def run(args: argparse.Namespace) -> int:
    from ..llm.models import ModelUnavailableError, load_tokenizer, resolve_model_path

    try:
        settings = scores_dir.read_settings(args.scores)
        scored = scores_dir.load_scored(args.scores)
        tokenizer = load_tokenizer(resolve_model_path(args.tokenizer or settings["model"]))
    except (FileNotFoundError, ValueError, ModelUnavailableError) as error:
        print(f"segattr export: {error}", file=sys.stderr)
        return 2
    rows, skipped, truncated = build_rows(
        tokenizer, scored, args.mask, args.max_length, args.overlength, args.include_incorrect
    )
    if not rows:
        print(f"segattr export: no example to export ({len(skipped)} skipped)", file=sys.stderr)
        return 1
    out = Path(args.out)
    try:
        _prepare_out(out)
    except FileExistsError as error:
        print(f"segattr export: {error}", file=sys.stderr)
        return 2
    if args.format == "hf":
        from datasets import Dataset

        Dataset.from_list(rows).save_to_disk(str(out))
    else:
        atomic_write_text(out / JSONL, "".join(json.dumps(r) + "\n" for r in rows))
    write_table(out / "skipped.csv", pd.DataFrame(skipped, columns=list(scores_dir.SKIPPED_COLUMNS)))
    report = {
        "scores": str(args.scores),
        "not_scored": _not_scored(Path(args.scores)),
        "format": args.format,
        "mask": args.mask,
        "max_length": args.max_length,
        "overlength": args.overlength,
        "examples": len(rows),
        "tokens": sum(len(r["input_ids"]) for r in rows),
        "labelled_tokens": sum(sum(r["completion_mask"]) for r in rows),
        "truncated": truncated,
        "skipped": skipped,
    }
    write_json(out / REPORT, report)
    print(
        f"exported {len(rows)} examples ({args.mask}; {report['labelled_tokens']} of {report['tokens']} tokens "
        f"labelled) -> {out}"
    )
    if truncated:
        print(
            f"truncated {len(truncated)} to --max-length {args.max_length}, keeping the start (a cut trace's answer "
            f"is not trained; --overlength skip drops them): {', '.join(truncated)}"
        )
    if skipped:
        print(f"skipped {len(skipped)}: " + "; ".join(f"{s['trace_id']} ({s['reason']})" for s in skipped))
    not_scored = _not_scored(Path(args.scores))
    if not_scored:
        print(f"{not_scored} traces were not scored by `segattr score` (see {Path(args.scores) / scores_dir.SKIPPED})")
    return 0


def _not_scored(folder: Path) -> int:
    path = folder / scores_dir.SKIPPED
    return len(pd.read_csv(path)) if path.is_file() else 0
