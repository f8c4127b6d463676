"""One attribution run of one sequence, planned for the memory at hand (Sec. 2.2, Eq. 1-2, App. C.4).

:func:`attribute_sequence` is the single entry point that stage 03, stage 08's reference traces and
``segattr score`` call. Around the IG engine (:func:`segattr_utils.method.attribution.token_attributions`)
it adds what a long trace on a real accelerator needs:

1. **planning** (:func:`plan_ig`): the path points per pass (``internal_batch_size``) and activation
   checkpointing, as set, or chosen per trace by the cost estimator when ``auto``
   (:func:`segattr_utils.method.ig_cost.choose_ig_settings`: the fastest setting whose predicted memory
   fits what the model's device has free, or ``memory_budget_gb`` when that is set and lower);
2. **the out-of-memory ladder** (:func:`out_of_memory_ladder`): a pass that runs out of accelerator memory
   (``torch.OutOfMemoryError``) is retried with half the chunk, ..., one point per pass, then the same with
   checkpointing; if even one checkpointed point does not fit, the run is skipped with its reason
   (:attr:`IGRun.skipped`) instead of raising;
3. **the completeness check**: ``warn_relative_delta`` warns above a relative completeness error (callers
   that flag every trace themselves pass ``None``).

The settings it chose are returned with the attributions (:meth:`IGRun.settings_record`), so that every
stored record says how it was computed. Settings are validated by :class:`IGSettings` before any model is
loaded.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch

from ..llm.models import free_accelerator_memory
from . import attribution as engine
from .ig_cost import available_memory, choose_ig_settings
from .quadrature import METHODS

AUTO = "auto"


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class IGSettings:
    """How one trace is attributed: ``n_steps`` path points J with the quadrature ``method`` (Eq. 2),
    ``internal_batch_size`` points per pass (an int, ``"auto"``, or ``None``: all J at once),
    ``activation_checkpointing`` (``True``, ``False`` or ``"auto"``) and ``memory_budget_gb``, a cap on
    the memory ``auto`` may plan for beyond the weights (``None``: the device's free memory)."""

    n_steps: int = 50
    method: str = "gausslegendre"
    internal_batch_size: int | str | None = None
    activation_checkpointing: bool | str = False
    memory_budget_gb: float | None = None

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem:
            raise ValueError(problem)

    def problem(self) -> str | None:
        """What is wrong with these settings, in one line, or None."""
        if not _positive_int(self.n_steps) or self.n_steps < 2:
            return f"n_steps must be an integer of at least 2 (IG path points J), got {self.n_steps!r}"
        if self.method not in METHODS:
            return f"method must be one of {', '.join(METHODS)}, got {self.method!r}"
        chunk = self.internal_batch_size
        if not (chunk is None or chunk == AUTO or _positive_int(chunk)):
            return f"internal_batch_size must be a positive integer, 'auto' or null, got {chunk!r}"
        if self.activation_checkpointing not in (True, False, AUTO):
            return f"activation_checkpointing must be true, false or 'auto', got {self.activation_checkpointing!r}"
        budget = self.memory_budget_gb
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0
        ):
            return f"memory_budget_gb must be a positive number of GiB or null, got {budget!r}"
        return None

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> IGSettings:
        """The IG settings of a profile's ``attribution`` section (other keys are ignored)."""
        names = ("n_steps", "method", "internal_batch_size", "activation_checkpointing", "memory_budget_gb")
        return cls(**{name: settings[name] for name in names if name in settings})


@dataclass(frozen=True)
class IGRun:
    """The outcome of :func:`attribute_sequence`: the attributions (``None`` when skipped), the setting
    that produced them, how many out-of-memory retries it took, and why it was skipped."""

    attribution: engine.Attribution | None
    internal_batch_size: int
    activation_checkpointing: bool
    out_of_memory_retries: int
    skipped: str | None = None

    def settings_record(self) -> dict:
        """The per-trace settings a stored record carries."""
        return {
            "internal_batch_size": self.internal_batch_size,
            "activation_checkpointing": self.activation_checkpointing,
            "out_of_memory_retries": self.out_of_memory_retries,
        }


def plan_ig(model, n_tokens: int, answer_tokens: int, settings: IGSettings) -> tuple[int, bool]:
    """(points per pass, activation checkpointing) for one sequence of ``n_tokens`` tokens: the settings as
    set, an ``auto`` one chosen by the cost estimator. When nothing is predicted to fit, or the architecture
    has no cost model, the most frugal setting is used (the out-of-memory ladder then has the last word)."""
    n_steps = settings.n_steps
    chunk = settings.internal_batch_size or n_steps  # None: every path point in one pass
    chunk = chunk if chunk == AUTO else min(chunk, n_steps)
    checkpointing = settings.activation_checkpointing
    if chunk != AUTO and checkpointing != AUTO:
        return cast(int, chunk), cast(bool, checkpointing)
    device = engine.execution_device(model.get_input_embeddings()) or torch.device("cpu")
    budget = None if settings.memory_budget_gb is None else int(settings.memory_budget_gb * 2**30)
    available = available_memory(device, budget)
    if budget is not None:
        available = min(available, budget)
    try:
        choice = choose_ig_settings(
            model.config,
            n_tokens,
            available,
            n_steps=n_steps,
            dtype=model.dtype,
            answer_tokens=answer_tokens,
            internal_batch_size=chunk,
            activation_checkpointing=checkpointing,
        )
    except ValueError as error:  # no cost model for this architecture
        warnings.warn(f"attribution settings 'auto': {error}; using the most frugal setting", stacklevel=2)
        choice = None
    if choice is None:
        return (1 if chunk == AUTO else cast(int, chunk)), (
            True if checkpointing == AUTO else cast(bool, checkpointing)
        )
    return choice.points_per_chunk, choice.activation_checkpointing


def out_of_memory_ladder(chunk: int, checkpointing: bool) -> list[tuple[int, bool]]:
    """The settings tried in turn when the accelerator runs out of memory: the chunk of path points halved
    down to one point per pass, then the same with activation checkpointing."""
    halvings = [chunk]
    while halvings[-1] > 1:
        halvings.append(halvings[-1] // 2)
    ladder = [(c, checkpointing) for c in halvings]
    if not checkpointing:
        ladder += [(c, True) for c in halvings]
    return ladder


def attribute_sequence(
    model,
    input_ids: torch.Tensor,
    answer_span: tuple[int, int],
    *,
    baseline_token_id: int | None,
    settings: IGSettings,
    warn_relative_delta: float | None = None,
) -> IGRun:
    """Token IG of the answer's log-probability (Eq. 1-2) for one sequence, planned (:func:`plan_ig`) and
    retried down :func:`out_of_memory_ladder`; never raises for running out of memory.

    ``torch.OutOfMemoryError`` is what CUDA and other accelerators raise; the CPU's allocator raises a plain
    ``RuntimeError`` and Linux's OOM killer ends the process first, so on the CPU the ladder does not apply.
    """
    answer_tokens = answer_span[1] - answer_span[0]
    first = plan_ig(model, int(input_ids.numel()), answer_tokens, settings)
    failures: list[str] = []
    message = ""
    for chunk, checkpointing in out_of_memory_ladder(*first):
        try:
            result = engine.token_attributions(
                model,
                input_ids,
                answer_span,
                baseline_token_id=baseline_token_id,
                n_steps=settings.n_steps,
                method=settings.method,
                internal_batch_size=chunk,
                activation_checkpointing=checkpointing,
                warn_relative_delta=warn_relative_delta,
            )
            return IGRun(result, chunk, checkpointing, len(failures))
        except torch.OutOfMemoryError as error:
            # keep the message only: the exception's traceback holds the failed pass's tensors
            failures.append(f"{chunk} point(s) per pass{' checkpointed' if checkpointing else ''}")
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
        free_accelerator_memory()  # outside the except block, once the traceback is released
    reason = f"out_of_memory after {len(failures)} attempts ({'; '.join(failures)}): {message}"
    return IGRun(None, chunk, checkpointing, len(failures), skipped=reason)
