"""Tests of the integrated-gradients engine (``segattr_utils.method.attribution``, Sec. 2.2, Eq. 1-2, App. C.4).

Every numerical check compares the engine against an independent, hand-written computation: the
quadrature rules are rebuilt here from their definitions (``numpy.polynomial.legendre.leggauss`` for
Gauss-Legendre), and the reference IG runs the *full* model forward on ``inputs_embeds`` (all logits,
log-softmax, gather of the answer ids at the shifted positions), one path point at a time, with
``torch.autograd.grad``. Tiny randomly initialised models built from configs: nothing is downloaded.
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2ForCausalLM,
)

from segattr_utils.method.attribution import (
    Attribution,
    CompletenessWarning,
    DegenerateBaselineWarning,
    token_attributions,
)
from segattr_utils.method.quadrature import quadrature_rule

from ..fixtures.tiny_models import tiny_qwen2 as make_tiny_qwen2

VOCAB = 128
MAX_POS = 64
LENGTH = 28
SPAN = (23, 28)  # the last 5 tokens are the "answer"
BASELINE = 3  # a token with an ordinary, non-zero embedding row
ALL_METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre", "official")
# initializer_range 0.1 (instead of HF's 0.02) makes F clearly non-linear along the path while keeping
# attributions O(1), so that float32 comparisons at atol 1e-5 are meaningful.
INIT_RANGE = 0.1


# --------------------------------------------------------------------------- tiny models


def tiny_qwen2(seed: int = 0, **overrides) -> Qwen2ForCausalLM:
    kwargs = dict(
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POS,
        initializer_range=INIT_RANGE,
        pad_token_id=None,
    )
    kwargs.update(overrides)
    return make_tiny_qwen2(VOCAB, seed=seed, **kwargs).float().eval()


def tiny_llama(seed: int = 1) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_POS,
        initializer_range=INIT_RANGE,
        pad_token_id=None,
    )
    return LlamaForCausalLM(cfg).float().eval()


def tiny_gpt2(seed: int = 2) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=MAX_POS,
        initializer_range=INIT_RANGE,
        pad_token_id=None,
    )
    return GPT2LMHeadModel(cfg).float().eval()


BUILDERS = {"qwen2": tiny_qwen2, "llama": tiny_llama, "gpt2": tiny_gpt2}


@pytest.fixture(scope="module")
def qwen():
    return tiny_qwen2()


@pytest.fixture(scope="module")
def ids():
    g = torch.Generator().manual_seed(123)
    # avoid the baseline token so that x - x' is non-zero at every position
    out = torch.randint(4, VOCAB, (LENGTH,), generator=g)
    assert not (out == BASELINE).any()
    return out


# --------------------------------------------------------------------------- independent reference


def gauss_legendre_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre on [0, 1]: nodes (x + 1) / 2, weights w / 2 of the rule on [-1, 1]."""
    nodes, w = np.polynomial.legendre.leggauss(n)
    return w / 2.0, (nodes + 1.0) / 2.0


def captum_trapezoid_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The "riemann_trapezoid" rule as captum defines it: n evenly spaced points 0..1, weight 1/n
    each with the two end points halved.

    NOTE: this is *not* the textbook composite trapezoid rule on those points (step 1/(n-1)): its
    weights sum to (n-1)/n, so it under-estimates the integral by a factor 1 - 1/n (see
    ``test_captum_trapezoid_is_not_the_textbook_rule``).
    """
    weights = np.full(n, 1.0 / n)
    weights[0] /= 2
    weights[-1] /= 2
    return weights, np.linspace(0.0, 1.0, n)


def textbook_trapezoid_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    h = 1.0 / (n - 1)
    weights = np.full(n, h)
    weights[0] /= 2
    weights[-1] /= 2
    return weights, np.linspace(0.0, 1.0, n)


def official_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The authors' rule: J evenly spaced alphas from 0 to 1 inclusive, each weighted 1/J."""
    return np.full(n, 1.0 / n), np.arange(n) / (n - 1)


def riemann_rule(kind: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    weights = np.full(n, 1.0 / n)
    if kind == "left":
        return weights, np.arange(n) / n
    if kind == "right":
        return weights, np.arange(1, n + 1) / n
    if kind == "middle":
        return weights, (np.arange(n) + 0.5) / n
    raise ValueError(kind)


def reference_rule(method: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    if method == "gausslegendre":
        return gauss_legendre_rule(n)
    if method == "riemann_trapezoid":
        return captum_trapezoid_rule(n)
    if method == "official":
        return official_rule(n)
    return riemann_rule(method.split("_")[1], n)


def full_log_prob(model, embeds: torch.Tensor, ids: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
    """F from a full forward: all logits, log-softmax over the vocabulary, the answer ids gathered at the
    positions that predict them (t - 1 predicts t)."""
    start, end = span
    logits = model(inputs_embeds=embeds.unsqueeze(0), use_cache=False).logits[0].float()  # [L, V]
    log_probs = torch.log_softmax(logits, dim=-1)
    positions = torch.arange(start - 1, end - 1)
    return log_probs[positions, ids[start:end]].sum()


def baseline_ids_for(ids: torch.Tensor, baseline_id: int, interpolate=None) -> torch.Tensor:
    out = ids.clone()
    mask = torch.ones_like(ids, dtype=torch.bool) if interpolate is None else interpolate
    out[mask] = baseline_id
    return out


def reference_ig(model, ids, span, baseline_id, weights, alphas, interpolate=None):
    """Hand-written IG: sum_k w_k * dF/de (e(alpha_k)) * (x - x'), summed over the embedding dimension."""
    model.eval()
    emb = model.get_input_embeddings()
    with torch.no_grad():
        x = emb(ids).float()
        x_base = emb(baseline_ids_for(ids, baseline_id, interpolate)).float()
    total = torch.zeros_like(x, dtype=torch.float64)
    for w, a in zip(weights, alphas):
        e = (x_base + float(a) * (x - x_base)).detach().requires_grad_(True)
        f = full_log_prob(model, e, ids, span)
        (grad,) = torch.autograd.grad(f, e)
        total += float(w) * grad.double()
    return (total * (x - x_base).double()).sum(-1)


def manual_f(model, ids, span, embed_ids) -> float:
    """F with the embeddings of ``embed_ids`` at every position, scoring the real answer ``ids``."""
    with torch.no_grad():
        embeds = model.get_input_embeddings()(embed_ids).float()
        return float(full_log_prob(model, embeds, ids, span))


# --------------------------------------------------------------------------- quadrature rules


@pytest.mark.parametrize("n", [2, 3, 16, 50])
@pytest.mark.parametrize("method", ALL_METHODS)
def test_hand_written_rules_match_quadrature_rule(method, n):
    weights, alphas = quadrature_rule(method, n)
    ref_w, ref_a = reference_rule(method, n)
    assert len(weights) == len(alphas) == n
    np.testing.assert_allclose(weights, ref_w, rtol=0, atol=1e-12)
    # captum builds the Riemann alphas with torch.linspace in float32
    np.testing.assert_allclose(alphas, ref_a, rtol=0, atol=1e-6)


def test_official_rule_properties():
    weights, alphas = quadrature_rule("official", 5)
    assert alphas[0] == 0.0 and alphas[-1] == 1.0
    assert np.isclose(sum(weights), 1.0)


def test_gauss_legendre_rule_is_exact_for_polynomials():
    # sanity of the hand-written reference: n nodes integrate degree 2n-1 exactly on [0, 1]
    w, a = gauss_legendre_rule(4)
    for degree in range(8):
        assert np.isclose(np.sum(w * a**degree), 1.0 / (degree + 1), atol=1e-12)


def test_captum_trapezoid_is_not_the_textbook_rule():
    """Documents an inherited quirk: captum's "riemann_trapezoid" (and hence ``quadrature_rule``) uses
    weight 1/n instead of 1/(n-1), so its weights sum to 1 - 1/n and a constant integrand is
    under-estimated by 1/n. Completeness with this rule is therefore off by roughly 1/n."""
    n = 50
    weights, _ = quadrature_rule("riemann_trapezoid", n)
    assert np.isclose(sum(weights), (n - 1) / n)
    assert np.isclose(textbook_trapezoid_rule(n)[0].sum(), 1.0)


# --------------------------------------------------------------------------- engine vs reference


@pytest.mark.parametrize(
    "method,n_steps",
    [
        ("gausslegendre", 20),
        ("riemann_trapezoid", 12),
        ("official", 12),
        ("riemann_left", 8),
        ("riemann_right", 8),
        ("riemann_middle", 8),
    ],
)
def test_engine_matches_hand_written_reference(qwen, ids, method, n_steps):
    weights, alphas = reference_rule(method, n_steps)
    expected = reference_ig(qwen, ids, SPAN, BASELINE, weights, alphas)
    got = token_attributions(qwen, ids, SPAN, baseline_token_id=BASELINE, method=method, n_steps=n_steps)
    assert isinstance(got, Attribution)
    assert got.values.dtype == torch.float32 and got.values.shape == (LENGTH,)
    assert expected.abs().max() > 1e-2  # the comparison is not vacuous
    torch.testing.assert_close(got.values.double(), expected, rtol=0, atol=1e-5)
    assert got.method == method and got.n_steps == n_steps and got.target_span == SPAN
    # delta is defined from the returned quantities
    assert got.delta == pytest.approx(got.f_input - got.f_baseline - float(got.values.double().sum()), abs=1e-9)
    assert got.relative_delta == pytest.approx(abs(got.delta) / abs(got.f_input - got.f_baseline))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_engine_matches_reference_other_architectures(arch, ids):
    model = BUILDERS[arch]()
    weights, alphas = gauss_legendre_rule(12)
    expected = reference_ig(model, ids, SPAN, BASELINE, weights, alphas)
    got = token_attributions(model, ids, SPAN, baseline_token_id=BASELINE, n_steps=12)
    torch.testing.assert_close(got.values.double(), expected, rtol=0, atol=1e-5)


def test_engine_matches_reference_with_tied_embeddings(ids):
    model = tiny_qwen2(seed=5, tie_word_embeddings=True)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    weights, alphas = gauss_legendre_rule(10)
    expected = reference_ig(model, ids, SPAN, BASELINE, weights, alphas)
    got = token_attributions(model, ids, SPAN, baseline_token_id=BASELINE, n_steps=10)
    torch.testing.assert_close(got.values.double(), expected, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- chunking


@pytest.mark.parametrize("method", ALL_METHODS)
def test_chunking_does_not_change_the_result(qwen, ids, method):
    n_steps = 15  # 7 does not divide it: the last chunk is short
    results = [
        token_attributions(
            qwen, ids, SPAN, baseline_token_id=BASELINE, method=method, n_steps=n_steps, internal_batch_size=ibs
        )
        for ibs in (None, 1, 7)
    ]
    reference = results[0]
    for other in results[1:]:
        torch.testing.assert_close(other.values, reference.values, rtol=0, atol=1e-6)
        assert other.delta == pytest.approx(reference.delta, abs=1e-5)
        assert other.f_input == reference.f_input and other.f_baseline == reference.f_baseline


# --------------------------------------------------------------------------- interpolate mask


def test_interpolate_mask(qwen, ids):
    interpolate = torch.zeros(LENGTH, dtype=torch.bool)
    interpolate[2:20] = True  # e.g. the reasoning trace only; prompt and answer keep their embeddings
    got = token_attributions(qwen, ids, SPAN, baseline_token_id=BASELINE, interpolate=interpolate, n_steps=50)
    assert torch.all(got.values[~interpolate] == 0)  # exactly zero
    assert torch.all(got.values[interpolate] != 0)
    # the baseline only replaces the interpolated positions
    expected_fb = manual_f(qwen, ids, SPAN, baseline_ids_for(ids, BASELINE, interpolate))
    assert got.f_baseline == pytest.approx(expected_fb, abs=1e-5)
    assert got.f_input == pytest.approx(manual_f(qwen, ids, SPAN, ids), abs=1e-5)
    # completeness still holds for the partial path
    assert got.relative_delta <= 0.01
    # and the values equal the hand-written reference with the same mask
    weights, alphas = gauss_legendre_rule(50)
    expected = reference_ig(qwen, ids, SPAN, BASELINE, weights, alphas, interpolate=interpolate)
    torch.testing.assert_close(got.values.double(), expected, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- completeness


def test_completeness_gauss_legendre_50(qwen, ids):
    assert torch.any(qwen.get_input_embeddings().weight[BASELINE] != 0)
    got = token_attributions(qwen, ids, SPAN, baseline_token_id=BASELINE, method="gausslegendre", n_steps=50)
    gap = got.f_input - got.f_baseline
    assert abs(gap) > 0.1  # a non-trivial quantity to split
    assert abs(got.f_input - got.f_baseline - float(got.values.double().sum())) / abs(gap) <= 0.01
    assert got.relative_delta <= 0.01


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gpt2"])
def test_architectures_run_and_are_complete(arch, ids):
    model = BUILDERS[arch]()
    got = token_attributions(model, ids, SPAN, baseline_token_id=BASELINE, method="gausslegendre", n_steps=50)
    assert got.values.shape == (LENGTH,)
    assert got.values.dtype == torch.float32
    assert torch.isfinite(got.values).all()
    assert np.isfinite(got.f_input) and np.isfinite(got.f_baseline)
    assert abs(got.f_input - got.f_baseline) > 1e-3
    assert got.relative_delta <= 0.01
    # F is a sum of log-probabilities of 5 tokens: negative, bounded by 5 * log(V) for a near-uniform model
    assert got.f_input < 0


# --------------------------------------------------------------------------- f_input / f_baseline


def test_f_input_and_f_baseline_score_the_real_answer(qwen, ids):
    got = token_attributions(qwen, ids, SPAN, baseline_token_id=BASELINE, n_steps=8)
    f_x = manual_f(qwen, ids, SPAN, ids)
    baseline_ids = torch.full_like(ids, BASELINE)
    f_xb = manual_f(qwen, ids, SPAN, baseline_ids)
    assert got.f_input == pytest.approx(f_x, abs=1e-5)
    assert got.f_baseline == pytest.approx(f_xb, abs=1e-5)
    # scoring the baseline's own tokens instead of the answer would be a different number
    f_wrong_target = manual_f(qwen, baseline_ids, SPAN, baseline_ids)
    assert abs(f_wrong_target - got.f_baseline) > 1e-2


# --------------------------------------------------------------------------- dtype, freezing


def test_bf16_model_float32_values_and_state_restored(ids):
    model = tiny_qwen2(seed=7).to(torch.bfloat16)
    model.train()
    frozen_before = {"model.embed_tokens.weight"}
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen_before)
    flags_before = {name: p.requires_grad for name, p in model.named_parameters()}

    seen = []

    def spy(module, args, output):
        seen.append((model.training, any(p.requires_grad for p in model.parameters())))

    handle = model.model.layers[0].register_forward_hook(spy)
    try:
        got = token_attributions(model, ids, SPAN, baseline_token_id=BASELINE, n_steps=16, internal_batch_size=5)
    finally:
        handle.remove()

    assert got.values.dtype == torch.float32
    assert torch.isfinite(got.values).all()
    assert np.isfinite(got.f_input) and np.isfinite(got.f_baseline)
    # during the call: eval mode, every parameter frozen
    assert seen and all(state == (False, False) for state in seen)
    # afterwards: flags and mode restored, no gradient accumulated on any parameter
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags_before
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())

    # the bf16 attributions track the float32 reference on the same (upcast) weights
    ref_model = tiny_qwen2(seed=7)
    ref_model.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    weights, alphas = gauss_legendre_rule(16)
    expected = reference_ig(ref_model, ids, SPAN, BASELINE, weights, alphas).float()
    corr = torch.corrcoef(torch.stack([got.values, expected]))[0, 1]
    assert corr > 0.95
    assert got.f_input == pytest.approx(manual_f(ref_model, ids, SPAN, ids), abs=0.3)


def test_float32_model_state_restored(qwen, ids):
    qwen.train()
    try:
        token_attributions(qwen, ids, SPAN, baseline_token_id=BASELINE, n_steps=4)
        assert qwen.training
        assert all(p.requires_grad for p in qwen.parameters())
        assert all(p.grad is None for p in qwen.parameters())
    finally:
        qwen.eval()


# --------------------------------------------------------------------------- baseline choice


def test_default_baseline_is_config_pad_token(ids):
    pad = 5
    model = tiny_qwen2(seed=3, pad_token_id=pad)
    emb = model.get_input_embeddings().weight
    assert torch.all(emb[pad] == 0)  # padding_idx row zeroed at init
    with torch.no_grad():  # give the pad row a real embedding so the path is not degenerate
        emb[pad] = torch.randn(emb.shape[1], generator=torch.Generator().manual_seed(0)) * INIT_RANGE
    ids = torch.where(ids == pad, torch.full_like(ids, 6), ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateBaselineWarning)
        got = token_attributions(model, ids, SPAN, n_steps=12)
    assert got.f_baseline == pytest.approx(manual_f(model, ids, SPAN, torch.full_like(ids, pad)), abs=1e-5)
    weights, alphas = gauss_legendre_rule(12)
    expected = reference_ig(model, ids, SPAN, pad, weights, alphas)
    torch.testing.assert_close(got.values.double(), expected, rtol=0, atol=1e-5)


def test_no_pad_and_no_baseline_raises(qwen, ids):
    assert qwen.config.pad_token_id is None
    with pytest.raises(ValueError, match="pad"):
        token_attributions(qwen, ids, SPAN, n_steps=4)


def test_zero_baseline_embedding_warns(ids):
    model = tiny_qwen2(seed=4, pad_token_id=0)
    assert torch.all(model.get_input_embeddings().weight[0] == 0)
    with pytest.warns(DegenerateBaselineWarning, match="zero"):
        got = token_attributions(model, ids, SPAN, n_steps=8)
    assert torch.isfinite(got.values).all()
    with pytest.warns(DegenerateBaselineWarning):
        token_attributions(model, ids, SPAN, baseline_token_id=0, n_steps=4)


def test_non_zero_baseline_does_not_warn(qwen, ids):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateBaselineWarning)
        token_attributions(qwen, ids, SPAN, baseline_token_id=BASELINE, n_steps=4)


def test_incomplete_attributions_warn_above_the_threshold(qwen, ids):
    # J = 2 of the authors' rule leaves a large quadrature error; Gauss-Legendre at J = 50 does not
    with pytest.warns(CompletenessWarning, match="incomplete") as caught:
        coarse = token_attributions(qwen, ids, SPAN, baseline_token_id=BASELINE, n_steps=2, method="official")
    error = abs(coarse.f_input - coarse.f_baseline - float(coarse.values.double().sum()))
    relative = error / abs(coarse.f_input - coarse.f_baseline)  # recomputed from the returned parts
    assert relative > 0.05 and len(caught) == 1 and f"{relative:.1%}" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompletenessWarning)
        fine = token_attributions(qwen, ids, SPAN, baseline_token_id=BASELINE, n_steps=50)
        assert fine.relative_delta < 0.05
        token_attributions(
            qwen, ids, SPAN, baseline_token_id=BASELINE, n_steps=2, method="official", warn_relative_delta=None
        )
    with pytest.warns(CompletenessWarning):  # a stricter threshold is the caller's choice
        token_attributions(qwen, ids, SPAN, baseline_token_id=BASELINE, n_steps=50, warn_relative_delta=0.0)


@pytest.mark.parametrize("bad", [-1, VOCAB, 10_000])
def test_invalid_baseline_token_raises(qwen, ids, bad):
    with pytest.raises(ValueError, match="baseline_token_id"):
        token_attributions(qwen, ids, SPAN, baseline_token_id=bad, n_steps=4)


# --------------------------------------------------------------------------- input validation


def _ids(n=LENGTH):
    return torch.arange(4, 4 + n) % VOCAB


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(target_span=(10, 10)), ValueError, "empty"),
        (dict(target_span=(12, 10)), ValueError, "empty"),
        (dict(target_span=(20, LENGTH + 1)), ValueError, "outside"),
        (dict(target_span=(0, 3)), ValueError, "outside"),
        (dict(target_span=(-2, 3)), ValueError, "outside"),
        (dict(target_span=(1, 2, 3)), TypeError, "target_span"),
        (dict(input_ids=_ids(MAX_POS + 1), target_span=(60, 65)), ValueError, "longer"),
        (dict(input_ids=_ids().unsqueeze(0)), ValueError, "1-D"),
        (dict(input_ids=_ids().to(torch.int32)), TypeError, "LongTensor"),
        (dict(input_ids=_ids().tolist()), TypeError, "torch.Tensor"),
        (dict(input_ids=torch.zeros(0, dtype=torch.long), target_span=(1, 2)), ValueError, "empty"),
        (dict(interpolate=torch.ones(LENGTH - 1, dtype=torch.bool)), ValueError, "interpolate"),
        (dict(interpolate=torch.ones(LENGTH, dtype=torch.long)), TypeError, "interpolate"),
        (dict(interpolate=[True] * LENGTH), TypeError, "interpolate"),
        (dict(method="simpson"), ValueError, "unknown IG method"),
        (dict(n_steps=1), ValueError, "n_steps"),
        (dict(n_steps=0), ValueError, "n_steps"),
        (dict(internal_batch_size=0), ValueError, "internal_batch_size"),
        (dict(internal_batch_size=-3), ValueError, "internal_batch_size"),
    ],
)
def test_bad_input_raises(qwen, kwargs, exc, match):
    call = dict(input_ids=_ids(), target_span=SPAN, baseline_token_id=BASELINE, n_steps=4)
    call.update(kwargs)
    model = qwen
    with pytest.raises(exc, match=match):
        token_attributions(model, call.pop("input_ids"), call.pop("target_span"), **call)


def test_sequence_at_max_positions_is_accepted(qwen):
    ids = _ids(MAX_POS)
    got = token_attributions(qwen, ids, (MAX_POS - 3, MAX_POS), baseline_token_id=BASELINE, n_steps=4)
    assert got.values.shape == (MAX_POS,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_model_and_inputs_on_gpu(ids):
    """input_ids / interpolate already on the model's device (the usual case on a GPU) must work."""
    cpu_model = tiny_qwen2(seed=9)
    gpu_model = tiny_qwen2(seed=9).cuda()
    interpolate = torch.zeros(LENGTH, dtype=torch.bool)
    interpolate[2:20] = True
    weights, alphas = gauss_legendre_rule(12)
    expected = reference_ig(cpu_model, ids, SPAN, BASELINE, weights, alphas, interpolate=interpolate)
    for mask in (interpolate, interpolate.cuda()):
        got = token_attributions(gpu_model, ids.cuda(), SPAN, baseline_token_id=BASELINE, interpolate=mask, n_steps=12)
        assert got.values.device.type == "cpu"
        torch.testing.assert_close(got.values.double(), expected, rtol=0, atol=1e-4)
    got = token_attributions(gpu_model, ids.cuda(), SPAN, baseline_token_id=BASELINE, n_steps=12)
    assert torch.isfinite(got.values).all()


# --------------------------------------------------------------------------- LM head at scale


def test_lm_head_weight_is_never_broadcast_to_a_batch(ids):
    """The LM head gets a 2-D input. Given the 3-D slice of answer positions, torch.matmul broadcast the
    [vocab, hidden] weight to every sequence of the batch (bmm), and the CPU kernel copied it each call:
    1 GB and ~10 s per call at Qwen2-7B's width (found by benchmarks/ig_memory.py)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    model = tiny_qwen2(seed=4)
    weight_numel = model.get_output_embeddings().weight.numel()
    batched = []

    class WatchBatchedMatmul(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default):
                batched.append(max(a.numel() for a in args if isinstance(a, torch.Tensor)))
            return func(*args, **(kwargs or {}))

    with WatchBatchedMatmul():
        got = token_attributions(model, ids, SPAN, baseline_token_id=BASELINE, n_steps=4, internal_batch_size=2)
    assert torch.isfinite(got.values).all()
    assert all(numel < weight_numel for numel in batched), (batched, weight_numel)
