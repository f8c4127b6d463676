"""The paper's models as their ``config.json`` describes them (paper.yaml's ``models``), so that the GPU checks,
the GPU-hours estimate and the engine-layout tests build random-weight stand-ins of the real shapes without
downloading anything. One place for these numbers: every user imports them from here."""

from __future__ import annotations

#: deepseek-ai/DeepSeek-R1-Distill-Qwen-7B (``models.generator``): Qwen2, 7,615,616,512 parameters.
R1_DISTILL_QWEN_7B: dict = dict(
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    vocab_size=152064,
    rope_theta=10000.0,
    max_position_embeddings=131072,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)

#: deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B (``models.student``): Qwen2, 1,777,088,000 parameters.
R1_DISTILL_QWEN_1_5B: dict = dict(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    vocab_size=151936,
    rope_theta=10000.0,
    max_position_embeddings=131072,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)

#: Qwen/Qwen3-8B (``models.judge``): Qwen3 (head dim 128 set explicitly), 8,190,735,360 parameters.
QWEN3_8B: dict = dict(
    hidden_size=4096,
    intermediate_size=12288,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=151936,
    tie_word_embeddings=False,
)
