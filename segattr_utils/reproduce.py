"""Run the numbered notebooks in order with papermill: ``python -m segattr_utils.reproduce --profile tiny``.

Each notebook ``notebooks/NN_name.ipynb`` is executed with ``PROFILE`` injected into its
``parameters`` cell and saved to ``results/<profile>/NN_name/NN_name.ipynb``. The run stops at the
first failing notebook and names it. ``--nbval`` instead prepares the notebooks with the profile
injected and runs them under ``pytest --nbval-lax`` (the tests' smoke run), which checks the outputs
of cells marked ``# NBVAL_CHECK_OUTPUT``.

The kernels of both runs get :func:`segattr_utils.progress.quiet_environment` (no progress bars,
no per-step trainer output), and every executed notebook is rewritten by :func:`clean_notebook`
(no timings, absolute paths or random ids), so a re-run with identical results gives identical files.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .config import ProfileError, find_project_root, load_profile, results_dir
from .progress import quiet_environment


def notebooks_in_order(notebook_dir: Path, only: list[str] | None = None) -> list[Path]:
    notebooks = sorted(p for p in notebook_dir.glob("[0-9][0-9]_*.ipynb"))
    if only:
        notebooks = [p for p in notebooks if any(p.stem.startswith(prefix) for prefix in only)]
    return notebooks


PAPERMILL_VOLATILE = ("start_time", "end_time", "duration", "environment_variables")
_TEXT_FIELDS = ("text", "traceback", "evalue")
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# pandas' Styler names each table "T_" + a random 5-hex uuid unless given one with set_uuid()
_STYLER_TABLE_ID = re.compile(r'<table id="T_([0-9a-f]{5})"')
# the default repr of an object names its memory address: "<pandas.io.formats.style.Styler at 0x7f14e8930bd0>"
_MEMORY_ADDRESS = re.compile(r"(<[\w.]+(?: object)?) at 0x[0-9a-fA-F]+>")


def _path_replacer(root: Path, home: Path | None):
    """A function replacing absolute paths under ``root`` by relative ones and ``home`` by ``~`` (and
    dropping the memory addresses of default reprs) in a string, or in the strings of a list or dict."""
    start, end = r"(?<![\w./~-])", r"(?![\w-]|\.\w)"  # whole path components only
    rules = []
    roots = {str(root).rstrip("/"), str(Path(root).resolve()).rstrip("/")}
    for prefix in sorted(roots, key=len, reverse=True):
        if prefix:
            rules.append((re.compile(start + re.escape(prefix) + "/"), ""))
            rules.append((re.compile(start + re.escape(prefix) + end), "."))
    if home is not None and str(home).rstrip("/"):
        rules.append((re.compile(start + re.escape(str(home).rstrip("/")) + end), "~"))

    def replace(value):
        if isinstance(value, str):
            for pattern, substitute in rules:
                value = pattern.sub(substitute, value)
            return _MEMORY_ADDRESS.sub(r"\1>", value)
        if isinstance(value, list):
            return [replace(item) for item in value]
        if isinstance(value, dict):
            return {key: replace(item) for key, item in value.items()}
        return value

    return replace


def _relative_path(path: str, root: Path, replace) -> str:
    """``path`` relative to the project root (POSIX separators), else with the home folder as ``~``."""
    if not path or not Path(path).is_absolute():
        return path
    for base in (Path(root), Path(root).resolve()):
        try:
            return Path(path).relative_to(base).as_posix()
        except ValueError:
            continue
    return replace(path)


def _textual(mimetype: str) -> bool:
    return mimetype.startswith("text/") or mimetype.endswith("json") or mimetype == "image/svg+xml"


def _stable_styler_ids(html, tag: str):
    """Replace the random uuids of pandas Styler tables in ``html`` (str or list of lines) by ``tag`` + n."""
    joined = "".join(html) if isinstance(html, list) else html
    uuids = list(dict.fromkeys(_STYLER_TABLE_ID.findall(joined)))
    if not uuids:
        return html
    for number, uuid in enumerate(uuids):
        joined = re.sub(r"\bT_" + uuid + r"(?![0-9a-f])", f"T_{tag}t{number}", joined)
    return joined.splitlines(keepends=True) if isinstance(html, list) else joined


def clean_notebook(notebook: dict, root: Path, home: Path | None = None) -> dict:
    """An executed notebook without what changes from run to run or machine to machine.

    Drops papermill's and nbclient's timings, ``environment_variables`` and widget state; stores
    papermill's ``input_path``/``output_path`` relative to ``root``; in cell outputs, replaces
    absolute paths under ``root`` (and the home folder, as ``~``) and drops memory addresses
    (``<... at 0x7f...>``); numbers the cell ids ``cell-00``, ``cell-01``, ... (papermill gives its
    injected-parameters cell a random one) and pandas Styler table ids. Applying it twice gives the
    same notebook.
    """
    replace = _path_replacer(Path(root), home)
    metadata = notebook.setdefault("metadata", {})
    metadata.pop("widgets", None)
    papermill = metadata.get("papermill")
    if isinstance(papermill, dict):
        for key in PAPERMILL_VOLATILE:
            papermill.pop(key, None)
        for key in ("input_path", "output_path"):
            if isinstance(papermill.get(key), str):
                papermill[key] = _relative_path(papermill[key], Path(root), replace)
        if "parameters" in papermill:
            papermill["parameters"] = replace(papermill["parameters"])
    cells = notebook.get("cells", [])
    width = max(2, len(str(len(cells) - 1)))
    with_ids = (notebook.get("nbformat", 4), notebook.get("nbformat_minor", 0)) >= (4, 5)
    for index, cell in enumerate(cells):
        if with_ids or "id" in cell:
            cell["id"] = f"cell-{index:0{width}d}"
        cell_metadata = cell.get("metadata", {})
        cell_metadata.pop("execution", None)
        if isinstance(cell_metadata.get("papermill"), dict):
            for key in PAPERMILL_VOLATILE:
                cell_metadata["papermill"].pop(key, None)
        outputs = []
        for output in cell.get("outputs", []):
            for field in _TEXT_FIELDS:
                if field in output:
                    output[field] = replace(output[field])
            data = output.get("data")
            if isinstance(data, dict):
                data.pop(_WIDGET_VIEW, None)
                if not data:
                    continue
                for mimetype in list(data):
                    if _textual(mimetype):
                        data[mimetype] = replace(data[mimetype])
                if "text/html" in data:
                    data["text/html"] = _stable_styler_ids(data["text/html"], f"c{index:0{width}d}")
            outputs.append(output)
        if "outputs" in cell:
            cell["outputs"] = outputs
    return notebook


def _strip_volatile_metadata(path: Path, root: Path | None = None) -> None:
    """Rewrite the executed notebook at ``path`` with :func:`clean_notebook`, in nbformat's layout
    (sorted keys, one-space indent), so re-runs differ only where results differ."""
    root = Path(root) if root is not None else find_project_root()
    notebook = json.loads(path.read_text(encoding="utf-8"))
    clean_notebook(notebook, root, Path.home())
    path.write_text(json.dumps(notebook, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


@contextmanager
def kernel_environment():
    """Set :func:`~segattr_utils.progress.quiet_environment` in ``os.environ`` while kernels start (they
    inherit it): no progress bars or per-step trainer output in the executed notebooks."""
    # The kernels also get a fixed hash seed, so set and dict orders that depend on string hashing are
    # the same in every run whoever starts it (make, python -m segattr_utils.reproduce, segattr reproduce).
    environment = {**quiet_environment(), "PYTHONHASHSEED": "0"}
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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
            with kernel_environment():
                papermill.execute_notebook(
                    str(notebook),
                    str(output),
                    parameters={"PROFILE": profile_name},
                    cwd=str(notebook.parent),
                    kernel_name="python3",
                    progress_bar=False,
                )
        except Exception as error:  # papermill raises PapermillExecutionError with the cell's traceback
            print(
                f"\n[reproduce:{profile_name}] FAILED in notebook {notebook.name}: {type(error).__name__}",
                file=sys.stderr,
            )
            print(str(error)[-4000:], file=sys.stderr)
            if output.exists():  # what failed and where, without the timings of the cells that ran
                _strip_volatile_metadata(output, notebook.parent.parent)
            print(f"The partially executed notebook is at {output}", file=sys.stderr)
            return 1
        _strip_volatile_metadata(output, notebook.parent.parent)
        elapsed = time.perf_counter() - started
        record_run_time(out_root, notebook.stem, elapsed, resumed)
        print(
            f"[reproduce:{profile_name}] {notebook.name} took {elapsed / 60:.1f} min"
            f"{' (resumed from earlier artifacts)' if resumed else ''}",
            flush=True,
        )
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
        papermill.execute_notebook(
            str(notebook),
            str(target),
            parameters={"PROFILE": profile_name},
            prepare_only=True,
            kernel_name="python3",
            progress_bar=False,
        )
        prepared.append(str(target))
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--nbval-lax",
        "--nbval-current-env",
        *prepared,
    ]
    print(f"[reproduce:{profile_name}] nbval: {' '.join(command)}", flush=True)
    return subprocess.call(command, cwd=str(prepared_dir), env={**os.environ, **quiet_environment()})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m segattr_utils.reproduce`` and ``segattr reproduce``."""
    parser.add_argument("--profile", default="tiny", help="smoke, tiny, paper, or a path to a profile YAML")
    parser.add_argument(
        "--only", nargs="*", help="run only notebooks whose name starts with these prefixes (e.g. 02 03)"
    )
    parser.add_argument("--nbval", action="store_true", help="run the notebooks under pytest --nbval-lax instead")
    parser.add_argument("--fresh", action="store_true", help="delete results/<profile>/ first (no resuming)")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return parser


#: The notebooks a student profile runs (one with ``upstream``: it fine-tunes and evaluates another model on
#: the traces its upstream run generated, segmented and attributed in notebooks 01-03).
STUDENT_NOTEBOOKS = ("08", "09")


def student_notebooks(profile, notebooks: list[Path], only: list[str] | None) -> list[Path]:
    """The notebooks of ``notebooks`` that a profile runs: all of them, or for a profile with ``upstream``
    :data:`STUDENT_NOTEBOOKS`. Naming another with ``--only`` under such a profile raises ``ValueError``."""
    if not profile.get("upstream"):
        return notebooks
    others = [p.stem for p in notebooks if p.stem[:2] not in STUDENT_NOTEBOOKS]
    if only and others:
        raise ValueError(
            f"profile {profile.name!r} trains on the traces of its upstream {profile['upstream']!r}: only notebooks "
            f"{' and '.join(STUDENT_NOTEBOOKS)} run under it, not {', '.join(others)} (run those with "
            f"--profile {profile['upstream']})"
        )
    return [p for p in notebooks if p.stem[:2] in STUDENT_NOTEBOOKS]


def run(args: argparse.Namespace) -> int:
    """Run the notebooks as ``args`` (from :func:`add_arguments`) say; 0 when every notebook ran."""
    root = find_project_root()
    try:
        profile = load_profile(args.profile)
    except (ProfileError, FileNotFoundError) as error:  # the user's profile: one line, before any notebook
        print(f"segattr reproduce: {error}", file=sys.stderr)
        return 2
    try:
        notebooks = student_notebooks(profile, notebooks_in_order(root / "notebooks", args.only), args.only)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    out_root = results_dir(profile, root)
    if args.fresh:
        shutil.rmtree(out_root, ignore_errors=True)
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
