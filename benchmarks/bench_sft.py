"""Benchmark: a selective-SFT step costs the same as a full-CoT SFT step (Sec. 2.3, Eq. 8 vs Eq. 9).

Both variants train the same tiny Qwen2 (the tiny profile's architecture) on the same tokenised world
traces with TRL's SFTTrainer and the same settings; only the labels differ (selective: about half the
segments masked, as the important set of notebook 03). Runs alternate between the two variants, each
in a fresh model, and the trainer's own runtime per optimizer step is recorded. A pruned variant (the
unselected segments deleted) is timed too: it trains on shorter sequences, so its steps are cheaper.

Usage: ``python benchmarks/bench_sft.py --out results/benchmarks`` (``make bench``).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from segattr_utils.artifacts import write_table
from segattr_utils.config import load_profile
from segattr_utils.data.questions import r1_prompt, world_suites
from segattr_utils.llm.training import TrainSettings, build_training_example, train_sft
from segattr_utils.world.tiny_model import answer_part, build_tiny_model, build_world_tokenizer, teacher_traces


def examples(profile, n: int, seed: int):
    world = dict(profile["world"], n_pretrain=n)
    suites = world_suites(world, seed)
    problems = suites["pretrain"]
    traces = teacher_traces(problems, world["rates"], seed)
    tokenizer = build_world_tokenizer(problems, traces, world["tokenizer_vocab_size"])
    rng = random.Random(seed)
    variants = {"full": [], "selective": [], "pruned": []}
    for problem, trace in zip(problems, traces):
        prompt = r1_prompt(tokenizer, problem.question)
        n_seg = len(trace.segments)
        chosen = sorted({0, n_seg - 1} | {i for i in range(n_seg) if rng.random() < 0.4})
        tail = answer_part(problem.answer)
        variants["full"].append(build_training_example(tokenizer, prompt, trace.segments, tail))
        variants["selective"].append(build_training_example(tokenizer, prompt, trace.segments, tail, selected=chosen))
        variants["pruned"].append(build_training_example(tokenizer, prompt, [trace.segments[i] for i in chosen], tail))
    return tokenizer, variants


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/benchmarks")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    profile = load_profile("tiny")
    tokenizer, variants = examples(profile, args.examples, seed=0)
    sft = dict(profile.get_path("training.sft"), epochs=1, save_strategy="no", logging_steps=10_000)
    settings = TrainSettings.from_dict(sft)
    rows = []
    started = time.time()
    for repeat in range(args.repeats):
        for name in ("full", "selective", "pruned"):
            model = build_tiny_model(tokenizer, profile.get_path("models.architecture"), seed=repeat)
            with tempfile.TemporaryDirectory() as tmp:
                summary = train_sft(model, tokenizer, variants[name], settings, Path(tmp) / "run", seed=repeat)
            rows.append(
                {
                    "variant": name,
                    "repeat": repeat,
                    "steps": summary["steps"],
                    "seconds_per_step": summary["train_runtime"] / summary["steps"],
                    "trained_tokens": summary["n_trained_tokens"],
                    "sequence_tokens": summary["n_tokens"],
                }
            )
            print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    out = Path(args.out)
    write_table(out / "sft_cost.csv", frame)
    summary = (
        frame.groupby("variant")
        .agg(
            seconds_per_step=("seconds_per_step", "mean"),
            std=("seconds_per_step", "std"),
            steps=("steps", "first"),
            trained_tokens=("trained_tokens", "first"),
            sequence_tokens=("sequence_tokens", "first"),
        )
        .reset_index()
    )
    full = summary.set_index("variant").loc["full", "seconds_per_step"]
    summary["relative_to_full"] = summary["seconds_per_step"] / full
    write_table(out / "sft_cost_summary.csv", summary)
    header = (
        f"SFT step cost: tiny Qwen2 ({sum(p.numel() for p in model.parameters()):,} parameters), {args.examples} "
        f"world traces, batch {settings.batch_size}, {args.threads} torch thread(s), {args.repeats} repeats "
        f"(interleaved), CPU; {time.time() - started:.0f} s in all.\n\n"
    )
    (out / "sft_cost_table.md").write_text(header + summary.round(4).to_markdown(index=False) + "\n", encoding="utf-8")
    print(header + summary.round(4).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
