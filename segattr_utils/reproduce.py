"""Run the numbered notebooks in order with papermill: ``python -m segattr_utils.reproduce --profile tiny``.

Each notebook ``notebooks/NN_name.ipynb`` is executed with ``PROFILE`` injected into its
``parameters`` cell and saved to ``results/<profile>/NN_name/NN_name.ipynb``. The run stops at the
first failing notebook and names it. ``--nbval`` instead prepares the notebooks with the profile
injected and runs them under ``pytest --nbval-lax`` (the tests' smoke run), which checks the outputs
of cells marked ``# NBVAL_CHECK_OUTPUT``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .config import find_project_root, load_profile, results_dir


def notebooks_in_order(notebook_dir: Path, only: list[str] | None = None) -> list[Path]:
    notebooks = sorted(p for p in notebook_dir.glob("[0-9][0-9]_*.ipynb"))
    if only:
        notebooks = [p for p in notebooks if any(p.stem.startswith(prefix) for prefix in only)]
    return notebooks


def _strip_volatile_metadata(path: Path) -> None:
    """Drop papermill's timestamps and durations so re-runs differ only where results differ."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    notebook.get("metadata", {}).get("papermill", {}).pop("start_time", None)
    notebook.get("metadata", {}).get("papermill", {}).pop("end_time", None)
    notebook.get("metadata", {}).get("papermill", {}).pop("duration", None)
    for cell in notebook.get("cells", []):
        cell.get("metadata", {}).pop("execution", None)
        papermill = cell.get("metadata", {}).get("papermill")
        if papermill:
            for key in ("start_time", "end_time", "duration"):
                papermill.pop(key, None)
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


RUN_TIMES_FILE = "run_times.csv"


def record_run_time(out_root: Path, notebook: str, seconds: float, resumed: bool) -> None:
    """Keep one row per notebook in ``results/<profile>/run_times.csv`` (latest run wins).

    ``resumed`` says the notebook found artifacts of an earlier run in its folder, so its time
    may cover only the work that was left; the README quotes times of fresh runs only.
    """
    path = out_root / RUN_TIMES_FILE
    rows: dict[str, dict[str, str]] = {}
    if path.exists():
        with path.open(newline="", encoding="utf-8") as handle:
            rows = {row["notebook"]: row for row in csv.DictReader(handle)}
    rows[notebook] = {"notebook": notebook, "wall_seconds": f"{seconds:.1f}", "resumed": str(resumed).lower()}
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["notebook", "wall_seconds", "resumed"])
        writer.writeheader()
        writer.writerows(rows[name] for name in sorted(rows))


def run_papermill(profile_name: str, notebooks: list[Path], out_root: Path) -> int:
    import papermill

    for notebook in notebooks:
        out_dir = out_root / notebook.stem
        resumed = out_dir.exists() and any(p.name != notebook.name for p in out_dir.iterdir())
        out_dir.mkdir(parents=True, exist_ok=True)
        output = out_dir / notebook.name
        print(f"[reproduce:{profile_name}] running {notebook.name} -> {output}", flush=True)
        started = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(notebook), str(output), parameters={"PROFILE": profile_name},
                cwd=str(notebook.parent), kernel_name="python3", progress_bar=False,
            )
        except Exception as error:  # papermill raises PapermillExecutionError with the cell's traceback
            print(f"\n[reproduce:{profile_name}] FAILED in notebook {notebook.name}: {type(error).__name__}", file=sys.stderr)
            print(str(error)[-4000:], file=sys.stderr)
            print(f"The partially executed notebook is at {output}", file=sys.stderr)
            return 1
        _strip_volatile_metadata(output)
        elapsed = time.perf_counter() - started
        record_run_time(out_root, notebook.stem, elapsed, resumed)
        print(f"[reproduce:{profile_name}] {notebook.name} took {elapsed / 60:.1f} min"
              f"{' (resumed from earlier artifacts)' if resumed else ''}", flush=True)
    print(f"[reproduce:{profile_name}] all {len(notebooks)} notebooks ran; results in {out_root}")
    return 0


def run_nbval(profile_name: str, notebooks: list[Path], out_root: Path) -> int:
    import papermill

    prepared_dir = out_root / "_nbval"
    shutil.rmtree(prepared_dir, ignore_errors=True)
    prepared_dir.mkdir(parents=True)
    prepared = []
    for notebook in notebooks:
        target = prepared_dir / notebook.name
        papermill.execute_notebook(str(notebook), str(target), parameters={"PROFILE": profile_name},
                                   prepare_only=True, kernel_name="python3", progress_bar=False)
        prepared.append(str(target))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
               "--nbval-current-env", *prepared]
    print(f"[reproduce:{profile_name}] nbval: {' '.join(command)}", flush=True)
    return subprocess.call(command, cwd=str(prepared_dir))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m segattr_utils.reproduce`` and ``segattr reproduce``."""
    parser.add_argument("--profile", default="tiny", help="smoke, tiny, paper, or a path to a profile YAML")
    parser.add_argument("--only", nargs="*", help="run only notebooks whose name starts with these prefixes (e.g. 02 03)")
    parser.add_argument("--nbval", action="store_true", help="run the notebooks under pytest --nbval-lax instead")
    parser.add_argument("--fresh", action="store_true", help="delete results/<profile>/ first (no resuming)")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the notebooks as ``args`` (from :func:`add_arguments`) say; 0 when every notebook ran."""
    root = find_project_root()
    profile = load_profile(args.profile)
    out_root = results_dir(profile, root)
    if args.fresh:
        shutil.rmtree(out_root, ignore_errors=True)
    notebooks = notebooks_in_order(root / "notebooks", args.only)
    if not notebooks:
        print("no notebooks found under notebooks/", file=sys.stderr)
        return 1
    if args.nbval:
        return run_nbval(args.profile, notebooks, out_root)
    return run_papermill(args.profile, notebooks, out_root)


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
