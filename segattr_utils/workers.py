"""The rank-worker entry points: ``python -m segattr_utils.workers <job> --profile P ...``.

What the package's launchers (:mod:`segattr_utils.distributed`) start in each process, and what is started
by hand on every machine of a launch over several machines. The stage modules hold the work itself as
library functions; this module only reads a job's command line and calls them. Jobs (:data:`JOBS`):

- ``attribution --items kept|reference|<items.jsonl> [--store S]``: this process's share of IG (Sec. 2.2)
  of notebook 03's kept traces or notebook 08's reference traces
  (:func:`segattr_utils.stages.stage03_ig_attribution.attribute_share`), written to its rank store;
- ``linguistics --items self|reference|<items.jsonl> [--store S]``: this process's share of notebook 05's
  perplexity, entropy and BLEU (:func:`segattr_utils.stages.stage05_linguistics.measure_share`);
- ``evaluation --items <models.jsonl> --store S``: this process's share of notebook 09's generation
  (:func:`segattr_utils.stages.stage09_evaluation.generate_share`);
- ``sft --runs NAME ...``: these SFT runs of notebook 08, one after another (what each process of the
  ``processes`` and ``per_gpu`` launchers and each rank of an ``accelerate`` launch runs;
  :func:`segattr_utils.stages.stage08_selective_sft.train_named_runs`);
- ``score --settings S --items <items.jsonl> --store S``: this process's share of ``segattr score``'s traces
  (:func:`segattr_utils.commands.score.score_share`); it takes the command's settings file, not a profile.

A named item set (``kept``, ``self``, ...) is resolved from the profile, with its store; a JSONL file of
items (what :func:`segattr_utils.distributed.launch_over_processes` writes) needs ``--store``. The next
run of the notebook merges the rank stores. Examples::

    accelerate launch --multi_gpu --num_processes 8 -m segattr_utils.workers attribution --profile paper --items kept
    python -m segattr_utils.workers sft --profile results/paper/08_selective_sft/runs/.launch/profile.yaml \\
        --runs full__self__seed0
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import Profile, load_profile


@dataclass(frozen=True)
class Job:
    """One worker job: its help line, the arguments it adds to ``--profile``, and what it runs (returns
    the exit status)."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Profile | None, argparse.Namespace, argparse.ArgumentParser], int]
    needs_profile: bool = True


def _item_arguments(sets: Sequence[str]) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        named = " or ".join(sets)
        parser.add_argument("--items", required=True, help=f"{named} (from the profile), or a JSONL file of items")
        parser.add_argument("--store", default=None, help="the record store (needed with a JSONL file of items)")

    return add


def _items_and_store(
    args: argparse.Namespace, parser: argparse.ArgumentParser, sets: dict[str, Callable[[], tuple]]
) -> tuple[list[dict], Path] | None:
    """A named set's items and store path (``sets[name]()``), or the JSONL file's items and ``--store``."""
    from .distributed import read_items

    if args.items in sets:
        return sets[args.items]()
    if args.store is None:
        parser.error(f"--items {args.items} is not one of {', '.join(sets)} and needs --store")
    if not Path(args.items).is_file():
        parser.error(f"--items {args.items}: no such file (nor one of {', '.join(sets)})")
    return read_items(args.items), Path(args.store)


ATTRIBUTION_SETS = ("kept", "reference")


def _attribution(profile: Profile, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .stages import stage03_ig_attribution as stage03
    from .stages import stage08_selective_sft as stage08

    sets = {
        "kept": lambda: stage03.kept_traces_to_attribute(profile),
        "reference": lambda: stage08.reference_traces_to_attribute(profile),  # their store is stage 08's
    }
    traces, store_path = _items_and_store(args, parser, sets)
    stage03.attribute_share(profile, traces, Path(store_path))
    return 0


LINGUISTICS_SETS = ("self", "reference")


def _linguistics(profile: Profile, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .artifacts import RecordStore
    from .stages import stage05_linguistics as stage05

    def named(source: str):
        items, store = stage05.items_to_measure(profile, source)
        return items, store.path

    items, store_path = _items_and_store(args, parser, {s: (lambda s=s: named(s)) for s in LINGUISTICS_SETS})
    stage05.measure_share(profile, items, RecordStore(store_path, key_fn=stage05._record_key))
    return 0


def _evaluation(profile: Profile, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .artifacts import RecordStore
    from .stages import stage09_evaluation as stage09

    models, store_path = _items_and_store(args, parser, {})
    stage09.generate_share(profile, models, RecordStore(store_path, key_fn=stage09._model_key))
    return 0


def _sft_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", nargs="+", required=True, help="run names from plan_runs (see runs.parquet)")


def _sft(profile: Profile, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .stages import stage08_selective_sft as stage08

    planned = [spec.name for spec in stage08.plan_runs(profile)]
    unknown = [name for name in args.runs if name not in planned]
    if unknown:
        parser.error(f"no planned run {', '.join(map(repr, unknown))}; planned: {', '.join(planned)}")
    stage08.train_named_runs(profile, args.runs)
    return 0


def _score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--settings", required=True, help="the launch's settings file that `segattr score` wrote")
    parser.add_argument("--items", required=True, help="the JSONL file of traces that `segattr score` wrote")
    parser.add_argument("--store", required=True, help="the record store (records.jsonl of the --out folder)")


def _score(profile: Profile | None, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .commands import score
    from .distributed import read_items

    for option in ("settings", "items"):
        if not Path(getattr(args, option)).is_file():
            parser.error(f"--{option} {getattr(args, option)}: no such file")
    score.score_share(Path(args.settings), read_items(args.items), Path(args.store))
    return 0


#: The jobs ``python -m segattr_utils.workers <job>`` runs.
JOBS: dict[str, Job] = {
    "attribution": Job("this rank's share of IG (notebooks 03, 08)", _item_arguments(ATTRIBUTION_SETS), _attribution),
    "linguistics": Job(
        "this rank's share of the perplexity passes (notebook 05)", _item_arguments(LINGUISTICS_SETS), _linguistics
    ),
    "evaluation": Job("this rank's share of the models' generation (notebook 09)", _item_arguments(()), _evaluation),
    "sft": Job("these SFT runs, one after another (notebook 08)", _sft_arguments, _sft),
    "score": Job("this rank's share of `segattr score`'s traces", _score_arguments, _score, needs_profile=False),
}


def parser() -> argparse.ArgumentParser:
    """``python -m segattr_utils.workers <job> --profile P ...`` with one subcommand per job of :data:`JOBS`."""
    top = argparse.ArgumentParser(
        prog="python -m segattr_utils.workers", description=__doc__.split("\n\n")[0].split(": ")[0]
    )
    jobs = top.add_subparsers(dest="job", required=True, metavar="<job>")
    for name, job in JOBS.items():
        sub = jobs.add_parser(name, help=job.help, description=job.help)
        if job.needs_profile:
            sub.add_argument("--profile", required=True, help="a profile name or YAML file")
        job.add_arguments(sub)
        sub.set_defaults(job_parser=sub)  # a job's own usage line in its errors
    return top


def main(argv: Sequence[str] | None = None) -> int:
    # torchrun's error file: the launcher's summary (what a failed launch shows) then holds the rank's error
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(_main)(argv)


def _main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(None if argv is None else list(argv))
    job_parser, job = args.job_parser, JOBS[args.job]
    profile = None
    if job.needs_profile:
        try:
            profile = load_profile(args.profile)
        except (FileNotFoundError, ValueError) as error:
            job_parser.error(f"--profile {args.profile}: {error}")
    return job.run(profile, args, job_parser)


if __name__ == "__main__":
    sys.exit(main())
