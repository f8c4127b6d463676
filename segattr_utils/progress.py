"""Progress bars that show in a terminal and stay out of executed notebooks.

``python -m segattr_utils.reproduce`` runs the notebooks with papermill and keeps the executed copies
under ``results/``; a bar there would leave one stderr line per update (or a widget with a random id)
in a file that is meant to diff cleanly. The notebook kernels it starts therefore get
:data:`QUIET_ENV` ``=1`` in their environment (:func:`quiet_environment`), and then:

- :func:`progress` returns a disabled bar (the loop runs unchanged, nothing is printed);
- :func:`quiet_libraries` switches off the bars of Hugging Face transformers ("Loading weights",
  "Writing model shards"), huggingface_hub and datasets ("Truncating train dataset", ...) and lowers
  transformers' logging to errors;
- :func:`trainer_progress` makes the Trainer print nothing per logging step (no tqdm bar, no HTML
  table of ``NotebookProgressCallback``, no log dicts of ``PrinterCallback``).

Without the variable everything falls back to tqdm's and the libraries' own behaviour: a bar in a
terminal, a widget in an interactive notebook.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

QUIET_ENV = "SEGATTR_QUIET_PROGRESS"

_TRUE = {"1", "true", "yes", "on"}


def quiet_progress() -> bool:
    """Whether progress output is switched off (``SEGATTR_QUIET_PROGRESS`` set to 1/true/yes/on)."""
    return os.environ.get(QUIET_ENV, "").strip().lower() in _TRUE


def quiet_environment() -> dict[str, str]:
    """The variables :mod:`segattr_utils.reproduce` gives the notebook kernels it starts.

    The Hugging Face variables are read when the libraries are imported, so they also silence the
    bars of code that runs before :func:`quiet_libraries` is called. ``PYTHONWARNINGS`` ignores one
    warning only: tqdm's "IProgress not found" (a ``TqdmWarning`` raised when ``tqdm.auto`` is first
    imported in a Jupyter kernel without ipywidgets, e.g. by huggingface_hub). Installing ipywidgets
    would not help: the executed notebooks would then hold widget views with random model ids, and
    their bars are switched off anyway; no argument of ours reaches that import.
    """
    ignore_iprogress = "ignore:IProgress not found:Warning"
    existing = os.environ.get("PYTHONWARNINGS", "")
    warnings_option = (
        existing
        if ignore_iprogress in existing.split(",")
        else ",".join(part for part in (existing, ignore_iprogress) if part)
    )
    return {
        QUIET_ENV: "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub, and transformers' logging.tqdm bars
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # datasets' map/filter bars (TRL's dataset preparation)
        "TRANSFORMERS_VERBOSITY": "error",
        # tqdm's default for ``disable``: any other library's bar (one created without disable=) stays out of
        # the executed notebook, where it would leave a line with its rate (``33200.30it/s``) and elapsed time.
        "TQDM_DISABLE": "1",
        "PYTHONWARNINGS": warnings_option,
    }


def progress(iterable: Iterable | None = None, **tqdm_kwargs):
    """``tqdm(iterable, **tqdm_kwargs)``, disabled under :data:`QUIET_ENV`.

    Quiet: a plain ``tqdm.std.tqdm`` with ``disable=True`` (iterates, counts, prints nothing; importing
    ``tqdm.auto`` in a kernel is avoided). Otherwise ``tqdm.auto.tqdm`` (console bar in a terminal,
    widget in an interactive notebook), with the caller's arguments unchanged.
    """
    if quiet_progress():
        from tqdm.std import tqdm

        tqdm_kwargs["disable"] = True
        return tqdm(iterable, **tqdm_kwargs)
    from tqdm.auto import tqdm

    return tqdm(iterable, **tqdm_kwargs)


def quiet_libraries() -> bool:
    """Under :data:`QUIET_ENV`, switch off the progress bars of transformers, huggingface_hub and
    datasets and set transformers' logging to errors; returns whether it did (nothing happens, and
    nothing is imported, otherwise). Libraries that are not installed are skipped."""
    if not quiet_progress():
        return False
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    try:
        import huggingface_hub.utils

        huggingface_hub.utils.disable_progress_bars()
    except ImportError:
        pass
    try:
        import transformers.utils.logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
    except ImportError:
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
    return True


def trainer_progress() -> dict:
    """Settings for ``TrainingArguments`` that follow the switch: ``{"disable_tqdm": quiet}``.

    With ``disable_tqdm=False`` the Trainer shows a tqdm bar (``ProgressCallback``) in a terminal, or
    an HTML table (``NotebookProgressCallback``) in a notebook. With ``disable_tqdm=True`` it adds
    ``PrinterCallback`` instead, which prints every log dict: :func:`silence_trainer` removes it.
    """
    return {"disable_tqdm": quiet_progress()}


def silence_trainer(trainer) -> None:
    """Remove the Trainer's per-step printing when quiet (``PrinterCallback``, and any progress
    callback); the log history is still kept in ``trainer.state.log_history``."""
    if not quiet_progress():
        return
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    try:
        from transformers.utils.notebook import NotebookProgressCallback

        trainer.remove_callback(NotebookProgressCallback)
    except ImportError:
        pass
