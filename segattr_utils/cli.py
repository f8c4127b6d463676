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


if __name__ == "__main__":
    sys.exit(main())
