"""Peak-memory test of the IG engine at a realistic vocabulary and sequence length.

With Qwen2's vocabulary (151,936), L = 2048 and 16 path points evaluated in one chunk, the
``[points, L, vocab]`` float32 logits that a naive implementation builds (the authors' code does)
would take 16 * 2048 * 151936 * 4 bytes ~ 19.9 GB. The engine evaluates the LM head only at the
answer positions, so its peak memory must stay far below that. The measurement runs in a fresh
subprocess so that the peak RSS (``ru_maxrss``) belongs to this computation alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

VOCAB = 151_936
LENGTH = 2048
POINTS = 16
FULL_LOGITS_BYTES = POINTS * LENGTH * VOCAB * 4  # ~19.9 GB
LIMIT_BYTES = 2 * 1024**3

SCRIPT = textwrap.dedent(
    f"""
    import json, os, resource
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from segattr_utils import token_attributions

    torch.set_num_threads(2)

    def current_rss():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size={VOCAB}, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings={LENGTH},
        tie_word_embeddings=True, pad_token_id=None,
    )
    model = Qwen2ForCausalLM(config).float().eval()
    ids = torch.randint(10, {VOCAB}, ({LENGTH},), generator=torch.Generator().manual_seed(1))

    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    rss_before = current_rss()
    result = token_attributions(
        model, ids, ({LENGTH} - 4, {LENGTH}), baseline_token_id=3,
        n_steps={POINTS}, internal_batch_size={POINTS}, method="gausslegendre",
    )
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(dict(
        peak_before=peak_before, rss_before=rss_before, peak_after=peak_after,
        n_values=int(result.values.numel()), finite=bool(torch.isfinite(result.values).all()),
        relative_delta=result.relative_delta,
    )))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss units and /proc/self/statm are Linux's")
def test_peak_memory_far_below_full_logits(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1])

    assert stats["n_values"] == LENGTH and stats["finite"]
    assert stats["relative_delta"] < 0.01
    # Conservative: the peak reached during the call minus the resident memory just before it (an upper
    # bound on what the call itself added, even if model construction had a higher transient peak).
    increase = stats["peak_after"] - stats["rss_before"]
    print(
        f"peak RSS increase during token_attributions: {increase / 1e9:.3f} GB "
        f"(full logits would need {FULL_LOGITS_BYTES / 1e9:.1f} GB)"
    )
    assert increase < LIMIT_BYTES
    assert increase < FULL_LOGITS_BYTES / 10
