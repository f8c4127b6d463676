"""SFT precision: float32 master weights with bf16 autocast by default, the authors' bf16 weights on request.

bf16 keeps 8 bits of mantissa: a weight w with 2^e < |w| < 2^(e+1) moves only by multiples of 2^(e-7), so an
update smaller than half that step, 2^(e-8), rounds back to w (at |w| = 2^e a step towards zero needs only
2^(e-9)). The first AdamW step moves every weight by lr * g / (|g| + eps) ~ lr (m_hat = g, v_hat = g^2): at
lr = 1e-5 < 2^-16 every weight with |w| >= 2^-7 keeps its bf16 value, while float32 master weights take the
step. Tiny Qwen2 and a locally built tokenizer: nothing is
downloaded, everything runs on the CPU.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy

import pytest
import torch

from segattr_utils.config import load_profile
from segattr_utils.llm.training import (
    TrainingExample,
    TrainSettings,
    cast_to_training_dtype,
    sft_config,
    train_sft,
)
from segattr_utils.stages.stage08_selective_sft import schedule
from segattr_utils.world.tokenizer import build_bpe_tokenizer

from ..fixtures.tiny_models import tiny_qwen2

LR = 1e-5
TEXT = "What is 12 + 30? Let me add the tens first. 10 + 30 = 40. Then 2 more gives 42. So \\boxed{42}."


@pytest.fixture(scope="module")
def tokenizer():
    return build_bpe_tokenizer([TEXT, "Wait, 7 * 6 = 42. Hmm, let me check: 6 + 36 = 42."] * 8, vocab_size=300)


def tiny_model(tokenizer, dtype=torch.float32):
    model = tiny_qwen2(
        tokenizer=tokenizer,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.1,
        tie_word_embeddings=False,
    )
    return model.to(dtype)


def one_step_settings(**overrides) -> TrainSettings:
    values = dict(
        epochs=1,
        learning_rate=LR,
        batch_size=1,
        warmup_ratio=0.0,
        lr_scheduler_type="constant",
        max_grad_norm=1e9,
        save_strategy="no",
        logging_steps=1,
    )
    return TrainSettings(**{**values, **overrides})


def manual_gradients(model, example: TrainingExample) -> dict[str, torch.Tensor]:
    """d loss / d w of the example (float32 forward, labels shifted by the model), per parameter."""
    model = copy.deepcopy(model).float().train()
    ids = torch.tensor([example.input_ids])
    model(input_ids=ids, labels=torch.tensor([example.labels])).loss.backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def test_one_small_step_moves_fp32_master_weights_and_is_lost_in_bf16(tmp_path, tokenizer):
    """A student loaded in bf16 (as the paper profile loads it) trains float32 master weights by default:
    one AdamW step at lr 1e-5 moves each weight by lr * g / (|g| + eps), computed by hand; the same step
    applied to bf16 weights rounds back to every weight with |w| >= 2^-7, and the authors' bf16_weights
    setting indeed leaves those weights unchanged."""
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    example = TrainingExample(ids, list(ids))
    loaded = tiny_model(tokenizer, torch.bfloat16)  # what load_causal_lm(dtype="bfloat16") gives
    start = {name: p.detach().float().clone() for name, p in loaded.named_parameters()}  # exact widening
    grads = manual_gradients(loaded, example)

    master = copy.deepcopy(loaded)
    train_sft(master, tokenizer, [example], one_step_settings(), tmp_path / "fp32", seed=0)
    authors = copy.deepcopy(loaded)
    train_sft(authors, tokenizer, [example], one_step_settings(precision="bf16_weights"), tmp_path / "bf16", seed=0)

    moved = lost_by_hand = checked = 0
    for name, p in master.named_parameters():
        assert p.dtype == torch.float32, name
        w0, g = start[name], grads[name]
        clear = g.abs() > 1e-5  # AdamW's eps (1e-8) is negligible against |g| here
        expected = w0 - LR * g / (g.abs() + 1e-8)
        torch.testing.assert_close(p.detach()[clear], expected[clear], rtol=0, atol=LR * 1e-3)
        moved += int((p.detach()[clear] != w0[clear]).sum())
        checked += int(clear.sum())
        # the same step on bf16 weights, by hand: lost wherever half a bf16 step exceeds lr
        big = clear & (w0.abs() >= 2**-7)
        stepped = (w0.bfloat16().float() - LR * torch.sign(g)).bfloat16().float()
        lost_by_hand += int((stepped[big] == w0[big]).sum())
        assert torch.equal(stepped[big], w0[big]), name
        bf16_param = dict(authors.named_parameters())[name]
        assert bf16_param.dtype == torch.bfloat16
        assert torch.equal(bf16_param.detach().float()[big], w0[big]), name
    assert checked > 10_000 and moved == checked and lost_by_hand > 0.9 * checked


def test_paper_settings_autocast_in_bf16_over_float32_weights(tmp_path, tokenizer):
    """The paper profile's training.sft: SFTConfig carries bf16 mixed precision (not TRL's defaults: its
    max_length 1024 is replaced by 16384), and a training step runs the matrix products in bf16 while the
    weights (and so the optimizer's updates) stay in float32."""
    (settings,) = schedule(load_profile("paper"))
    assert settings.precision == "fp32_master" and settings.weight_dtype == "float32" and settings.bf16
    config = sft_config(settings, tmp_path / "config", seed=3407)
    assert config.bf16 and not config.fp16 and not config.bf16_full_eval
    assert config.mixed_precision == "bf16" and config.max_length == 16384
    assert config.gradient_checkpointing and config.learning_rate == 3e-5 and config.per_device_train_batch_size == 2

    # the same settings, sized for a CPU (no bitsandbytes here): one step of a student loaded in bf16
    cpu = TrainSettings.from_dict(
        {**vars(settings), "epochs": 1, "stop_after_epoch": None, "batch_size": 1, "optim": "adamw_torch"}
        | {"max_length": 64, "save_strategy": "no"}
    )
    model = tiny_model(tokenizer, torch.bfloat16)
    seen = []
    hook = model.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda module, args, output: seen.append((module.weight.dtype, output.dtype))
    )
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    summary = train_sft(model, tokenizer, [TrainingExample(ids, list(ids))], cpu, tmp_path / "run", seed=0)
    hook.remove()
    assert summary["steps"] == 1 and seen
    assert set(seen) == {(torch.float32, torch.bfloat16)}  # fp32 weights, bf16 autocast
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_cpu_profiles_train_in_float32_without_autocast():
    for name in ("tiny", "smoke"):
        for settings in schedule(load_profile(name)):
            assert settings.weight_dtype == "float32" and not settings.bf16, name
            assert not sft_config(settings, "/tmp/unused", seed=0).bf16


def test_precision_settings_are_validated_and_bf16_weights_casts(tokenizer):
    with pytest.raises(ValueError, match=r"training\.sft\.precision must be one of fp32_master, bf16_weights"):
        TrainSettings.from_dict({"precision": "fp16"})
    with pytest.raises(ValueError, match=r"training\.sft\.save_dtype"):
        TrainSettings(save_dtype="float16")
    model = tiny_model(tokenizer)
    cast_to_training_dtype(model, TrainSettings(precision="bf16_weights"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    cast_to_training_dtype(model, TrainSettings())
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_stage08_loads_the_student_in_its_training_dtype(tmp_path, monkeypatch):
    """The paper's student is bf16 on the hub; stage 08 loads it in float32 for fp32_master training (and
    in bf16 for bf16_weights), so no update is rounded away before the first step."""
    from segattr_utils.stages import stage08_selective_sft as sft

    class Loaded(Exception):
        pass

    for precision, wanted in (("fp32_master", "float32"), ("bf16_weights", "bfloat16")):
        profile = load_profile("paper")
        profile["results_root"] = str(tmp_path / precision)
        profile["training"]["sft"] = {**profile["training"]["sft"], "precision": precision}
        calls = []

        def fake_load(profile, role, device=None, path=None, dtype=None, calls=calls):
            calls.append((role, dtype))
            raise Loaded

        monkeypatch.setattr(sft.services, "load_model", fake_load)
        spec = next(r for r in sft.plan_runs(profile) if r.variant == "full")
        with pytest.raises(Loaded):
            sft.train_run(profile, spec, [])
        assert calls == [("student", wanted)]
