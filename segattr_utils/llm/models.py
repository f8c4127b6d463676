"""Loading causal LMs and tokenizers: hub ids (paper profile) and local folders (tiny world) through
one loader.

Nothing is downloaded at run time unless the caller allows it: with ``HF_HUB_OFFLINE=1`` (or
``allow_download=False``) a hub id that is not in the local cache raises :class:`ModelUnavailableError`
saying what to download and where to put it.
"""

from __future__ import annotations

import difflib
import gc
import json
import os
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from ..progress import quiet_libraries

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


class ModelUnavailableError(RuntimeError):
    """A configured model or dataset is not available locally and may not be downloaded."""


def offline() -> bool:
    truthy = {"1", "true", "yes", "on"}
    return (
        os.environ.get("HF_HUB_OFFLINE", "0").lower() in truthy
        or os.environ.get("TRANSFORMERS_OFFLINE", "0").lower() in truthy
    )


def looks_like_path(name: str) -> bool:
    """Whether ``name`` means a folder rather than a hub id: written as a path (a leading ``/``, ``.`` or
    ``~``, more than one ``/``, a trailing ``/``) or an ``owner/name`` whose ``owner`` is an existing local
    folder (``models/R1-7B`` next to a ``models`` folder)."""
    return (
        name.startswith(("/", "./", "../", "~", ".\\"))
        or name in (".", "..")
        or name.count("/") > 1
        or "\\" in name
        or name.endswith("/")
        or ("/" in name and Path(name.split("/")[0]).expanduser().is_dir())
    )


def _missing_folder(folder: str, model_id: str | None) -> ModelUnavailableError:
    """The error for a model folder that does not exist: says so first (a typo is the usual cause), names
    the nearest existing parent and its closest entries, then how to download the model there."""
    path = Path(folder).expanduser()
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    hint = ""
    if parent.is_dir():
        names = sorted(p.name for p in parent.iterdir() if p.is_dir())
        close = difflib.get_close_matches(path.relative_to(parent).parts[0], names, n=3, cutoff=0.6)
        hint = f"\nThe nearest existing folder is {str(parent)!r}" + (
            f"; did you mean {', '.join(repr(str(parent / c)) for c in close)}?" if close else "."
        )
    what = "is a file, not a model folder" if path.exists() else "does not exist (check the path for a typo)"
    message = f"the model folder {folder!r} {what}.{hint}"
    if model_id and model_id != folder:
        message += (
            f"\nIf {model_id!r} is not downloaded yet, download it there with\n"
            f"    huggingface-cli download {model_id} --local-dir {folder}\n"
            "or clear local_path in the profile to use the Hugging Face cache."
        )
    return ModelUnavailableError(message)


def resolve_model_path(model_id: str, local_path: str | None = None) -> str:
    """A local folder if ``local_path`` (or ``model_id`` itself) is one, else the hub id.

    A ``local_path`` that is not a folder, or a ``model_id`` written as a path (``./models/x``,
    ``/data/x``) that is not one, raises :class:`ModelUnavailableError` saying the folder does not exist.
    """
    for candidate in (local_path, model_id):
        if candidate and Path(candidate).expanduser().is_dir():
            return str(Path(candidate).expanduser())
    if local_path:
        raise _missing_folder(local_path, model_id)
    if looks_like_path(model_id):
        raise _missing_folder(model_id, None)
    return model_id


def _unavailable(model_id: str, error: Exception) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"model {model_id!r} is not available locally and downloads are disabled ({type(error).__name__}: {error}).\n"
        f"On a machine with network access run\n    huggingface-cli download {model_id} --local-dir models/{model_id.split('/')[-1]}\n"
        "then set models.<role>.local_path in the profile YAML to that folder (or unset HF_HUB_OFFLINE to "
        "let transformers download it into its cache)."
    )


def load_tokenizer(path_or_id: str, allow_download: bool | None = None):
    """Load a tokenizer; a folder saved from a locally built ``PreTrainedTokenizerFast`` is loaded with
    that class explicitly (``AutoTokenizer`` would swap in Qwen's class next to a Qwen2 config)."""
    allow_download = (not offline()) if allow_download is None else allow_download
    folder = Path(path_or_id)
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file():
        tokenizer_class = json.loads(config_file.read_text()).get("tokenizer_class")
        if tokenizer_class in (None, "PreTrainedTokenizerFast", "TokenizersBackend"):
            return PreTrainedTokenizerFast.from_pretrained(str(folder))
    try:
        return AutoTokenizer.from_pretrained(path_or_id, local_files_only=not allow_download)
    except (OSError, ValueError) as error:
        raise _unavailable(path_or_id, error) from error


def load_model_config(model_id: str, allow_download: bool | None = None):
    """The transformers config of a hub id or of a local folder holding ``config.json``, without weights.
    Offline (``HF_HUB_OFFLINE=1``) a hub id must already be in the local cache, else
    :class:`ModelUnavailableError` says what to do."""
    path = resolve_model_path(model_id)
    if Path(path).is_dir() and not (Path(path) / "config.json").is_file():
        raise ModelUnavailableError(f"{path} is a folder without a config.json")
    allow_download = (not offline()) if allow_download is None else allow_download
    try:
        return AutoConfig.from_pretrained(path, local_files_only=not allow_download)
    except OSError as error:
        if Path(path).is_dir():
            raise
        raise ModelUnavailableError(
            f"the config of {model_id!r} is not available locally and downloads are disabled "
            f"(HF_HUB_OFFLINE=1 or TRANSFORMERS_OFFLINE=1; {type(error).__name__}). Pass a folder holding its "
            f"config.json instead (huggingface-cli download {model_id} config.json --local-dir <folder> on a "
            "machine with network access), or unset HF_HUB_OFFLINE to let transformers fetch the config."
        ) from error


def load_causal_lm(
    model_id: str,
    local_path: str | None = None,
    dtype: str = "float32",
    device: str | None = None,
    allow_download: bool | None = None,
    device_map: str | dict | None = None,
):
    """(model, tokenizer) for a hub id or local folder, in eval mode on ``device`` (default: CUDA if
    available, else CPU). ``device_map`` (``"auto"``, ``"balanced"`` or a module -> device dict; needs
    accelerate) spreads a model too large for one GPU over several and replaces ``device``: the IG engine
    puts token ids on the embedding's device and the answer ids on the LM head's."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    path = resolve_model_path(model_id, local_path)
    allow_download = (not offline()) if allow_download is None else allow_download
    quiet_libraries()  # under reproduce: no "Loading weights" bar in the executed notebook
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=DTYPES[dtype], local_files_only=not allow_download, device_map=device_map
        )
    except OSError as error:
        raise _unavailable(model_id, error) from error
    tokenizer = load_tokenizer(path, allow_download=allow_download)
    if device_map is None:
        model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.eval()
    return model, tokenizer


def free_accelerator_memory() -> None:
    """Return the memory of models no longer referenced to the GPU (collected now, and the CUDA cache
    emptied), so that the next stage or a training subprocess can use it."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
