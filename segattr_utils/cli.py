"""The ``segattr`` command: one front end for the toolkit's tasks.

``segattr reproduce --profile tiny`` runs the numbered notebooks (the same as
``python -m segattr_utils.reproduce``); ``segattr score``, ``segattr view`` and ``segattr export`` take a
model and a JSONL of R1 traces to segment scores, an HTML view and a TRL-ready dataset
(:mod:`segattr_utils.commands`); ``segattr estimate`` predicts IG's memory and time; ``segattr --help`` lists every subcommand.

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
from .commands import estimate, export, score, view

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
# Subcommands: each lives in a module with add_arguments(parser), run(args) and a docstring (its --help)

_MODULES = (
    ("reproduce", "run the numbered notebooks in order with papermill (or under nbval)", reproduce),
    ("score", "segment, attribute (IG) and score the traces of an R1 JSONL file with a model", score),
    ("view", "the scored traces as standalone HTML pages: an index and a page per trace", view),
    ("export", "a TRL-ready SFT dataset (input_ids, labels, completion_mask) from scored traces", export),
    ("estimate", "predict the memory and time of token IG for a model config, sequence length and GPU", estimate),
)


def _module_handler(module) -> Handler:
    # looks module.run up at call time, so a test (or a plugin) can replace it
    return lambda args: module.run(args)


for _name, _help, _module in _MODULES:
    subcommand(_name, help=_help, arguments=_module.add_arguments, description=_module.__doc__)(
        _module_handler(_module)
    )


if __name__ == "__main__":
    sys.exit(main())
