"""Activation checkpointing of a causal LM's decoder layers for the IG engine (Sec. 2.2, Eq. 1-2 at scale).

An IG pass over one chunk of path points keeps every decoder layer's saved activations until the backward
pass reaches it: at Qwen2-7B's widths about 155 KiB per token per layer per path point in bfloat16, so a
16k-token trace of 28 layers needs ~70 GB per point. :func:`checkpointed_layers` wraps each decoder layer in
``torch.utils.checkpoint`` (non-reentrant): the forward pass keeps only each layer's input (one hidden state,
``hidden_size`` values per token) and the backward pass recomputes the layer's activations one layer at a
time. The cost is one more forward pass of the layers per chunk.

Why not Hugging Face's ``gradient_checkpointing_enable``: it checkpoints only in training mode, and training
mode switches dropout on (GPT-2's default configs have p = 0.1), which would make the recomputed activations,
and hence the attributions, random. Here the model stays in eval mode, so recomputation is exact for every
model, with or without dropout modules. The wrapper replaces each layer's ``forward`` attribute for the
duration of the context (module hooks, e.g. accelerate's device hooks of a ``device_map`` model, stay
outside the checkpoint, as in Hugging Face's own layers) and restores it on exit.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import cast

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

#: Attribute names of the decoder-layer list in Hugging Face backbones, in the order they are tried:
#: ``layers`` (Llama, Qwen2, Mistral, Gemma, ...), ``h`` (GPT-2, GPT-J, Falcon, Bloom), ``blocks``.
LAYER_LIST_NAMES = ("layers", "h", "blocks")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks of a Hugging Face causal LM (``model.model.layers``,
    ``model.transformer.h``, ...): the ``ModuleList`` of the backbone with ``config.num_hidden_layers``
    entries."""
    backbone = getattr(model, "base_model", model)
    expected = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for name in LAYER_LIST_NAMES:
        layers = getattr(backbone, name, None)
        if isinstance(layers, nn.ModuleList) and (expected is None or len(layers) == expected):
            return layers
    found = [
        name
        for name, module in backbone.named_modules()
        if isinstance(module, nn.ModuleList) and (expected is None or len(module) == expected)
    ]
    if len(found) == 1:
        return cast(nn.ModuleList, backbone.get_submodule(found[0]))
    raise TypeError(
        f"cannot find the decoder layers of {type(model).__name__}: no ModuleList named "
        f"{' / '.join(LAYER_LIST_NAMES)} with config.num_hidden_layers = {expected} entries "
        f"(candidates: {found or 'none'})"
    )


def _checkpointed(forward: Callable) -> Callable:
    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():  # no backward will replay it: F(x), F(x') and captum's layer evals
            return forward(*args, **kwargs)
        # Non-reentrant: keyword arguments (position embeddings, masks) pass through, and inputs need not
        # require grad. preserve_rng_state keeps any random op identical in the recomputation.
        return checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=True, **kwargs)

    return run


@contextlib.contextmanager
def checkpointed_layers(model: nn.Module) -> Iterator[nn.ModuleList]:
    """Within the context every decoder layer of ``model`` is recomputed in the backward pass instead of
    keeping its activations; on exit each layer's ``forward`` is what it was before."""
    layers = decoder_layers(model)
    previous = []
    for layer in layers:
        # An instance attribute (accelerate's device hook puts one there) is restored as it was; otherwise
        # the class's forward is found again once the attribute is deleted.
        previous.append(layer.__dict__.get("forward"))
        layer.forward = _checkpointed(layer.forward)
    try:
        yield layers
    finally:
        for layer, forward in zip(layers, previous):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward
