"""The ``segattr`` command: one front end for the toolkit's tasks.

``segattr reproduce --profile tiny`` runs the numbered notebooks (the same as
``python -m segattr_utils.reproduce``); ``segattr score``, ``segattr view`` and ``segattr export`` take a
model and a JSONL of R1 traces to segment scores, an HTML view and a TRL-ready dataset
(:mod:`segattr_utils.commands`); ``segattr --help`` lists every subcommand.

A subcommand is one function registered with :func:`subcommand`. It receives the parsed
:class:`argparse.Namespace` and returns an exit status (``None`` counts as 0)::

    def _score_arguments(parser):
        parser.add_argument("--profile", default="tiny")

    @subcommand("score", help="score traces", arguments=_score_arguments)
    def score(args):
        ...
        return 0
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import reproduce
from .commands import export, score, view

Handler = Callable[[argparse.Namespace], int | None]
Arguments = Callable[[argparse.ArgumentParser], None]


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    handler: Handler
    arguments: Arguments | None = None
    description: str | None = None


#: Subcommands by name, in the order they were registered (the order ``segattr --help`` lists them).
SUBCOMMANDS: dict[str, Subcommand] = {}


def subcommand(
    name: str, help: str, *, arguments: Arguments | None = None, description: str | None = None
) -> Callable[[Handler], Handler]:
    """Register the decorated function as ``segattr <name>``.

    ``help`` is the one-line summary in ``segattr --help``; ``arguments(parser)`` adds the
    subcommand's options; ``description`` (default: ``help``) heads ``segattr <name> --help``.
    """

    def register(handler: Handler) -> Handler:
        if name in SUBCOMMANDS:
            raise ValueError(f"segattr subcommand {name!r} is registered twice")
        SUBCOMMANDS[name] = Subcommand(name, help, handler, arguments, description)
        return handler

    return register


def _version() -> str:
    try:
        return importlib.metadata.version("segattr")
    except importlib.metadata.PackageNotFoundError:  # running from a checkout that is not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segattr",
        description="Segment-level attribution for selective learning of long reasoning traces.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for command in SUBCOMMANDS.values():
        sub = commands.add_parser(
            command.name,
            help=command.help,
            description=command.description or command.help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if command.arguments is not None:
            command.arguments(sub)
        sub.set_defaults(_handler=command.handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``segattr`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    status = args._handler(args)
    return 0 if status is None else int(status)


# ----------------------------------------------------------------------------------------------
# Subcommands


@subcommand(
    "reproduce",
    help="run the numbered notebooks in order with papermill (or under nbval)",
    arguments=reproduce.add_arguments,
    description=reproduce.__doc__,
)
def _reproduce(args: argparse.Namespace) -> int:
    return reproduce.run(args)


@subcommand(
    "score",
    help="segment, attribute (IG) and score the traces of an R1 JSONL file with a model",
    arguments=score.add_arguments,
    description=score.__doc__,
)
def _score(args: argparse.Namespace) -> int:
    return score.run(args)


@subcommand(
    "view",
    help="one scored trace as a standalone HTML page",
    arguments=view.add_arguments,
    description=view.__doc__,
)
def _view(args: argparse.Namespace) -> int:
    return view.run(args)


@subcommand(
    "export",
    help="a TRL-ready SFT dataset (input_ids, labels, completion_mask) from scored traces",
    arguments=export.add_arguments,
    description=export.__doc__,
)
def _export(args: argparse.Namespace) -> int:
    return export.run(args)


def _estimate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="hub id or local folder holding config.json (no weights)")
    parser.add_argument("--seq-len", type=int, required=True, help="tokens of prompt + trace + answer suffix")
    parser.add_argument("--gpu-memory", type=float, required=True, help="memory of one GPU in GiB, e.g. 80")
    parser.add_argument("--n-steps", type=int, default=50, help="path points J (default 50, the paper's)")
    parser.add_argument(
        "--tflops",
        type=float,
        default=200.0,
        help="sustained TFLOP/s assumed for the time column (default 200: an assumption, not a measurement)",
    )
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--answer-tokens", type=int, default=8, help="answer tokens whose log-probability is F")
    parser.add_argument("--chunks", default=None, help="comma-separated chunk sizes (default 1,2,4,...,J)")
    parser.add_argument("--margin", type=float, default=0.1, help="share of the GPU memory kept free (default 0.1)")


@subcommand(
    "estimate",
    help="predict the memory and time of token IG for a model config, sequence length and GPU",
    arguments=_estimate_arguments,
    description="Predict the peak memory (weights included) and time of token IG (Eq. 1-2) of one trace\n"
    "for each chunk size x activation checkpointing, from the model's config alone, and the setting that\n"
    "attribution.internal_batch_size / activation_checkpointing: auto would pick on that GPU.\n"
    "See segattr_utils/method/ig_cost.py for the cost model.",
)
def _estimate(args: argparse.Namespace) -> int:
    from .llm.models import ModelUnavailableError, load_model_config
    from .method.ig_cost import Architecture, cost_table

    try:
        config = load_model_config(args.model)
        architecture = Architecture.from_config(config)
    except (ModelUnavailableError, ValueError) as error:
        print(f"segattr estimate: {error}", file=sys.stderr)
        return 2
    chunks = tuple(int(c) for c in args.chunks.split(",")) if args.chunks else None
    memory = int(args.gpu_memory * 2**30)
    rows, choice = cost_table(
        config,
        args.seq_len,
        memory,
        n_steps=args.n_steps,
        dtype=args.dtype,
        answer_tokens=args.answer_tokens,
        flops_per_second=args.tflops * 1e12,
        chunk_sizes=chunks,
        margin=args.margin,
    )
    a = architecture
    print(
        f"{args.model}: {a.model_type}, {a.layers} layers, hidden {a.hidden}, intermediate {a.intermediate}, "
        f"{a.heads} heads / {a.kv_heads} KV heads, {a.parameters() / 1e9:.2f}B parameters"
    )
    print(
        f"one trace of {args.seq_len:,} tokens, J = {args.n_steps} path points, {args.dtype}; GPU of "
        f"{args.gpu_memory:g} GiB with {args.margin:.0%} kept free; {args.tflops:g} TFLOP/s assumed"
    )
    print()
    print(f"{'points/chunk':>12}  {'checkpointing':>13}  {'peak GiB':>9}  {'fits':>4}  {'TFLOP':>9}  {'minutes':>8}")
    for row in rows:
        print(
            f"{row['points_per_chunk']:>12}  {'yes' if row['checkpointing'] else 'no':>13}  "
            f"{row['peak_GiB']:>9.1f}  {'yes' if row['fits'] else 'no':>4}  {row['TFLOP_per_trace']:>9.0f}  "
            f"{row['seconds_per_trace'] / 60:>8.2f}"
        )
    print()
    if choice is None:
        smallest = min(rows, key=lambda r: r["peak_GiB"])
        print(
            f"choice: none fits; the smallest peak is {smallest['peak_GiB']:.1f} GiB (1 point per chunk with "
            "checkpointing). Spread the model over several GPUs (models.generator.device_map) or shorten the trace."
        )
        return 1
    print(
        f"choice: internal_batch_size={choice.points_per_chunk}, activation_checkpointing="
        f"{str(choice.activation_checkpointing).lower()} (peak {choice.peak_bytes / 2**30:.1f} GiB, "
        f"{choice.seconds / 60:.2f} min per trace)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
