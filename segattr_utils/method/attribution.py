"""Token-level integrated gradients of the correct answer's log-probability (Sec. 2.2, Eq. 1-2).

``token_attributions`` computes, for a causal LM and a token sequence ``prompt + trace + answer
suffix``, the IG attribution of every input token to

    F(x) = sum_{t in target_span} log p(y_t | x_{<t})                                   (target of Eq. 1)

i.e. the summed log-probability of the answer tokens, each predicted from everything before it, with
respect to the input embeddings, along the straight path from a baseline embedding x' (the pad token's,
App. C.4) to the real embeddings x. One IG run covers the whole answer.

Design choices (and how they differ from the authors' public code):

- captum's ``LayerIntegratedGradients`` on the input-embedding layer does the path construction and
  gradient bookkeeping. The embedding output is cast to float32 before it is hooked, so the path points,
  the gradients captum receives and their weighted sum are float32 whatever the model dtype (the
  authors accumulate in bf16).
- The LM head is evaluated only at the ``len(target_span)`` positions that predict the answer: no
  ``[points, L, vocab]`` logits tensor is ever built (the authors materialise it). Peak memory is the
  model's activations for one chunk of path points, which ``internal_batch_size`` bounds, and
  ``activation_checkpointing=True`` cuts to one hidden state per layer plus one layer's activations
  (:mod:`segattr_utils.method.checkpointing`; :mod:`segattr_utils.method.ig_cost` predicts the peak).
- A model spread over several devices (``device_map``) works: token ids go to the input embedding's
  device, the answer ids to the device the logits come out on (the LM head's).
- Parameters are frozen during the call; only the path embeddings carry gradients.
- F at the baseline still scores the *real* answer ids: only embeddings move along the path, so the
  completeness identity  F(x) - F(x') = sum(IG)  can hold and ``delta`` measures the quadrature error.
- ``method="official"`` reproduces the authors' rule (see :mod:`segattr_utils.method.quadrature`);
  the default is Gauss-Legendre, which reaches <1% completeness error with far fewer points.

Degenerate baseline: if the baseline token's embedding row is all zeros (a pad row zeroed by
``padding_idx`` and never trained), every point of the straight path is a multiple of x. RMSNorm and
LayerNorm are scale-invariant away from 0, so F is constant along the path for alpha > 0 and jumps at
alpha = 0: no quadrature converges to F(x) - F(x'), the attributions are meaningless and ``delta`` is
large. The engine warns (``DegenerateBaselineWarning``); pick another baseline token.

Incomplete attributions: too few path points J leave a quadrature error that can reach tens of percent of
F(x) - F(x') (the authors' rule at small J). The engine warns (``CompletenessWarning``) when the relative
completeness error ``|delta| / |F(x) - F(x')|`` exceeds ``warn_relative_delta`` (5% by default, the
profiles' ``attribution.flag_relative_delta``); raise J or use Gauss-Legendre. Callers that record and
flag every trace's error themselves (stage 03, ``segattr score``) pass ``warn_relative_delta=None``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from captum.attr import IntegratedGradients, LayerIntegratedGradients
from captum.attr._utils.approximation_methods import SUPPORTED_METHODS
from torch import nn

from .checkpointing import checkpointed_layers
from .quadrature import quadrature_rule


class DegenerateBaselineWarning(UserWarning):
    """The IG baseline embedding is all zeros: the straight-line path is degenerate for normed models."""


class CompletenessWarning(UserWarning):
    """The relative completeness error of an IG run exceeds the threshold: sum(IG) does not split
    F(x) - F(x') (Eq. 2) closely enough; raise n_steps (J) or use ``method="gausslegendre"``."""


#: Default threshold of :class:`CompletenessWarning` (the profiles' ``attribution.flag_relative_delta``).
FLAG_RELATIVE_DELTA = 0.05


@dataclass(frozen=True)
class Attribution:
    """Result of :func:`token_attributions`.

    ``values``: float32 tensor of length L, the IG attribution of every input token (summed over
    embedding dimensions; 0 where the position was not interpolated). ``f_input`` and ``f_baseline``:
    F at the real input and at the baseline. ``delta = f_input - f_baseline - sum(values)``: captum's
    convergence delta (the quadrature error of the completeness axiom).
    """

    values: torch.Tensor
    f_input: float
    f_baseline: float
    delta: float
    target_span: tuple[int, int]
    method: str
    n_steps: int

    @property
    def relative_delta(self) -> float:
        """|delta| / |F(x) - F(x')|: the completeness error relative to the quantity being split."""
        gap = abs(self.f_input - self.f_baseline)
        return abs(self.delta) / gap if gap > 0 else (0.0 if self.delta == 0 else math.inf)


class _Float32Embedding(nn.Module):
    """The model's input embedding, returned in float32 so that captum's path and sums are float32."""

    def __init__(self, embedding: nn.Module):
        super().__init__()
        self.embedding = embedding

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(input_ids).float()


class _ChunkedRuleIG(IntegratedGradients):
    """captum IG with an explicit quadrature rule evaluated in chunks of path points.

    captum only knows its own rules by name; passing ``step_sizes_and_alphas`` explicitly lets the
    authors' rule run through the same code, and chunking here (instead of captum's
    ``internal_batch_size``, which looks the rule up by name) works for every rule.
    """

    def __init__(self, forward_func, weights: list[float], alphas: list[float], chunk_size: int):
        super().__init__(forward_func, multiply_by_inputs=True)
        self._weights, self._alphas, self._chunk_size = weights, alphas, chunk_size

    def _attribute(
        self,
        inputs,
        baselines,
        target=None,
        additional_forward_args=None,
        n_steps=50,
        method="gausslegendre",
        step_sizes_and_alphas=None,
    ):
        total = None
        for start in range(0, len(self._alphas), self._chunk_size):
            weights = self._weights[start : start + self._chunk_size]
            alphas = self._alphas[start : start + self._chunk_size]
            part = super()._attribute(
                inputs,
                baselines,
                target=target,
                additional_forward_args=additional_forward_args,
                n_steps=len(alphas),
                method=method,
                step_sizes_and_alphas=(weights, alphas),
            )
            part = tuple(p.detach() for p in part)
            total = part if total is None else tuple(t + p for t, p in zip(total, part))
        return total


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with every parameter frozen; restore both on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    for p, _ in flags:
        p.requires_grad_(False)
    model.eval()
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def split_causal_lm(model: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(input embedding, backbone returning hidden states, LM head) of a Hugging Face causal LM."""
    hf: Any = model  # Hugging Face's accessors, not nn.Module's
    embedding = hf.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = hf.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    backbone = getattr(model, "base_model", None)
    if embedding is None or head is None or backbone is None or backbone is model:
        raise TypeError(
            f"{type(model).__name__} is not a Hugging Face causal LM with input embeddings, a backbone "
            "(base_model) and an LM head (get_output_embeddings)"
        )
    return embedding, backbone, head


def execution_device(module: nn.Module) -> torch.device | None:
    """The device ``module`` computes on: accelerate's ``execution_device`` for a module of a model
    dispatched with ``device_map`` (its weights may be offloaded to "meta" between calls), else the
    device of its first parameter; None for a module without parameters."""
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(device if not isinstance(device, int) else f"cuda:{device}")
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else None


def _max_positions(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _default_baseline_token(model: nn.Module) -> int:
    for source in (getattr(model, "config", None), getattr(model, "generation_config", None)):
        pad = getattr(source, "pad_token_id", None)
        if isinstance(pad, (list, tuple)):
            pad = pad[0] if pad else None
        if pad is not None:
            return int(pad)
    raise ValueError(
        "the model has no pad token (config.pad_token_id is None) and no baseline_token_id was given; "
        "pass baseline_token_id, e.g. tokenizer.pad_token_id"
    )


def _validate_inputs(
    model, input_ids, target_span, interpolate, n_steps, internal_batch_size, activation_checkpointing
):
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.dim() != 1:
        raise ValueError(f"input_ids must be 1-D (one sequence of length L), got shape {tuple(input_ids.shape)}")
    if input_ids.dtype != torch.long:
        raise TypeError(f"input_ids must be a LongTensor, got dtype {input_ids.dtype}")
    length = input_ids.numel()
    if length == 0:
        raise ValueError("input_ids is empty")
    limit = _max_positions(model)
    if limit is not None and length > limit:
        raise ValueError(f"sequence of {length} tokens is longer than the model's maximum of {limit} positions")
    if (
        not isinstance(target_span, (tuple, list))
        or len(target_span) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in target_span)
    ):
        raise TypeError(f"target_span must be a (start, end) pair of ints, got {target_span!r}")
    start, end = target_span
    if end <= start:
        raise ValueError(f"target_span {tuple(target_span)} is empty: the answer has no tokens")
    if start < 1 or end > length:
        raise ValueError(
            f"target_span {tuple(target_span)} lies outside the sequence: it must satisfy 1 <= start < end <= {length} "
            "(token 0 has nothing before it to predict it)"
        )
    if interpolate is not None:
        if not isinstance(interpolate, torch.Tensor) or interpolate.dtype != torch.bool:
            raise TypeError("interpolate must be a boolean torch.Tensor")
        if interpolate.shape != input_ids.shape:
            raise ValueError(f"interpolate has shape {tuple(interpolate.shape)}, input_ids {tuple(input_ids.shape)}")
    if internal_batch_size is not None and (not isinstance(internal_batch_size, int) or internal_batch_size < 1):
        raise ValueError(f"internal_batch_size must be a positive int or None, got {internal_batch_size!r}")
    if not isinstance(activation_checkpointing, bool):
        raise TypeError(f"activation_checkpointing must be True or False, got {activation_checkpointing!r}")


def answer_log_prob(
    backbone: nn.Module,
    head: nn.Module,
    inputs_embeds: torch.Tensor,
    target_ids: torch.Tensor,
    target_span: tuple[int, int],
    softcap: float | None = None,
) -> torch.Tensor:
    """F for a batch of embedded sequences: summed log-probability of ``target_ids`` at ``target_span``.

    The head runs only on the hidden states at positions ``start-1 .. end-2`` (each predicts the next
    token), so memory is O(batch x len(target) x vocab), not O(batch x L x vocab). The answer ids are
    gathered on the device the logits come out on: with a ``device_map`` model the LM head may sit on
    another device than the embedding that ``target_ids`` came from.
    """
    start, end = target_span
    hidden = backbone(inputs_embeds=inputs_embeds, use_cache=False).last_hidden_state
    # A 2-D head input: for a 3-D slice of the hidden states torch.matmul broadcasts the head's weight
    # to every sequence of the batch (bmm), which on the CPU copies the whole [vocab, hidden] matrix per
    # call (1 GB and ~10 s per call at Qwen2-7B's width).
    answer_hidden = hidden[:, start - 1 : end - 1]
    logits = head(answer_hidden.reshape(-1, answer_hidden.shape[-1])).float()
    logits = logits.view(*answer_hidden.shape[:-1], logits.shape[-1])
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    log_probs = torch.log_softmax(logits, dim=-1)
    targets = target_ids.to(log_probs.device).unsqueeze(-1)
    return log_probs.gather(-1, targets).squeeze(-1).sum(-1)


def token_attributions(
    model: nn.Module,
    input_ids: torch.Tensor,
    target_span: tuple[int, int],
    *,
    baseline_token_id: int | None = None,
    interpolate: torch.Tensor | None = None,
    n_steps: int = 50,
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
    warn_relative_delta: float | None = FLAG_RELATIVE_DELTA,
    activation_checkpointing: bool = False,
) -> Attribution:
    """Integrated gradients (Eq. 1-2) of the answer log-probability w.r.t. every input token's embedding.

    Args:
        model: any Hugging Face causal LM (Qwen2, Llama, GPT-2, ...), in any dtype, on any device.
        input_ids: 1-D LongTensor of length L (prompt + trace + answer suffix).
        target_span: ``(start, end)`` token positions of the answer; F sums their log-probabilities.
        baseline_token_id: token whose embedding is x'; defaults to the model's pad token.
        interpolate: boolean mask of positions moved along the path (default: all). Other positions
            keep their real embedding and get attribution 0.
        n_steps: number of path points J.
        method: ``riemann_left/right/middle/trapezoid``, ``gausslegendre`` or ``official`` (the
            authors' J inclusive evenly spaced points with weight 1/J).
        internal_batch_size: path points per forward/backward pass (default: all at once).
        warn_relative_delta: warn (:class:`CompletenessWarning`) when the relative completeness error
            exceeds this (default 5%); ``None`` never warns.
        activation_checkpointing: recompute each decoder layer in the backward pass instead of keeping
            its activations (one more forward pass per chunk; the same attributions up to float
            rounding; the model stays in eval mode, so dropout stays off).

    Returns:
        :class:`Attribution` with float32 ``values`` of length L and the completeness ``delta``.
    """
    _validate_inputs(model, input_ids, target_span, interpolate, n_steps, internal_batch_size, activation_checkpointing)
    weights, alphas = quadrature_rule(method, n_steps)
    embedding, backbone, head = split_causal_lm(model)
    if baseline_token_id is None:
        baseline_token_id = _default_baseline_token(model)
    weight = getattr(embedding, "weight", None)
    vocab_size = weight.shape[0] if weight is not None else None
    if (
        not isinstance(baseline_token_id, int)
        or baseline_token_id < 0
        or (vocab_size and baseline_token_id >= vocab_size)
    ):
        raise ValueError(f"baseline_token_id {baseline_token_id!r} is not a valid token id")
    device = execution_device(embedding) or next(model.parameters()).device
    with torch.no_grad():  # through the module: an offloaded embedding's weight is on "meta" until called
        baseline_row = embedding(torch.tensor([baseline_token_id], device=device))
    if not torch.any(baseline_row):
        warnings.warn(
            f"the baseline token {baseline_token_id} has an all-zero embedding: the straight-line IG path is "
            "degenerate for RMSNorm/LayerNorm models (F jumps at alpha=0) and completeness cannot hold; "
            "use a baseline token with a trained, non-zero embedding",
            DegenerateBaselineWarning,
            stacklevel=2,
        )

    model_dtype = baseline_row.dtype if baseline_row.is_floating_point() else torch.float32
    softcap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    start, end = target_span
    ids = input_ids.to(device).unsqueeze(0)
    mask = torch.ones_like(input_ids, dtype=torch.bool) if interpolate is None else interpolate
    baseline_ids = torch.where(
        mask.to(device), torch.full_like(input_ids.to(device), baseline_token_id), input_ids.to(device)
    ).unsqueeze(0)
    target_ids = ids[:, start:end].clone()
    embed32 = _Float32Embedding(embedding)

    def forward(batch_ids: torch.Tensor, batch_targets: torch.Tensor) -> torch.Tensor:
        embeds = embed32(batch_ids).to(model_dtype)
        return answer_log_prob(backbone, head, embeds, batch_targets, target_span, softcap)

    with frozen_eval(model):
        with torch.no_grad():
            f_input = float(forward(ids, target_ids)[0])
            f_baseline = float(forward(baseline_ids, target_ids)[0])
        lig = LayerIntegratedGradients(forward, embed32)
        chunk = len(alphas) if internal_batch_size is None else internal_batch_size
        lig.ig = _ChunkedRuleIG(forward, weights, alphas, chunk)
        # captum validates the method name; the rule itself comes from _ChunkedRuleIG.
        captum_method = method if method in SUPPORTED_METHODS else "riemann_trapezoid"
        layers = checkpointed_layers(model) if activation_checkpointing else contextlib.nullcontext()
        with layers:
            per_dim = lig.attribute(
                ids,
                baselines=baseline_ids,
                additional_forward_args=(target_ids,),
                n_steps=len(alphas),
                method=captum_method,
            )
    values = per_dim.detach().float().sum(-1).squeeze(0).cpu()
    values = torch.where(mask.cpu(), values, torch.zeros_like(values))  # values live on the CPU
    if not torch.isfinite(values).all() or not math.isfinite(f_input) or not math.isfinite(f_baseline):
        raise FloatingPointError(
            "integrated gradients produced non-finite values (NaN/inf); check the model dtype and inputs"
        )
    delta = f_input - f_baseline - float(values.double().sum())
    result = Attribution(
        values=values,
        f_input=f_input,
        f_baseline=f_baseline,
        delta=delta,
        target_span=(start, end),
        method=method,
        n_steps=n_steps,
    )
    if warn_relative_delta is not None and result.relative_delta > warn_relative_delta:
        warnings.warn(
            f"integrated gradients are incomplete: sum(IG) misses F(x) - F(x') = {f_input - f_baseline:.4g} by "
            f"{result.relative_delta:.1%} (threshold {warn_relative_delta:.0%}) at J = {n_steps} ({method}); raise "
            "n_steps" + ("" if method == "gausslegendre" else " or use method='gausslegendre'"),
            CompletenessWarning,
            stacklevel=2,
        )
    return result
