"""segattr estimate: predict the memory and time of token IG (Eq. 1-2) for one trace.

From the model's config alone (no weights): the peak memory (weights included) and time of one trace
for each chunk size x activation checkpointing, and the setting that ``attribution.internal_batch_size``
/ ``activation_checkpointing: auto`` would pick on that GPU. The cost model is
:mod:`segattr_utils.method.ig_cost`.

Example:
    segattr estimate --model deepseek-ai/DeepSeek-R1-Distill-Qwen-7B --seq-len 16384 --gpu-memory 80
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="hub id or local folder holding config.json (no weights)")
    parser.add_argument("--seq-len", type=int, required=True, help="tokens of prompt + trace + answer suffix")
    parser.add_argument("--gpu-memory", type=float, required=True, help="memory of one GPU in GiB, e.g. 80")
    parser.add_argument("--n-steps", type=int, default=50, help="path points J (default 50, the paper's)")
    parser.add_argument(
        "--tflops",
        type=float,
        default=200.0,
        help="sustained TFLOP/s assumed for the time column (default 200: an assumption, not a measurement)",
    )
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--answer-tokens", type=int, default=8, help="answer tokens whose log-probability is F")
    parser.add_argument("--chunks", default=None, help="comma-separated chunk sizes (default 1,2,4,...,J)")
    parser.add_argument("--margin", type=float, default=0.1, help="share of the GPU memory kept free (default 0.1)")


def run(args: argparse.Namespace) -> int:
    from ..llm.models import ModelUnavailableError, load_model_config
    from ..method.ig_cost import Architecture, cost_table

    try:
        config = load_model_config(args.model)
        architecture = Architecture.from_config(config)
    except (ModelUnavailableError, ValueError) as error:
        print(f"segattr estimate: {error}", file=sys.stderr)
        return 2
    chunks = tuple(int(c) for c in args.chunks.split(",")) if args.chunks else None
    memory = int(args.gpu_memory * 2**30)
    rows, choice = cost_table(
        config,
        args.seq_len,
        memory,
        n_steps=args.n_steps,
        dtype=args.dtype,
        answer_tokens=args.answer_tokens,
        flops_per_second=args.tflops * 1e12,
        chunk_sizes=chunks,
        margin=args.margin,
    )
    a = architecture
    print(
        f"{args.model}: {a.model_type}, {a.layers} layers, hidden {a.hidden}, intermediate {a.intermediate}, "
        f"{a.heads} heads / {a.kv_heads} KV heads, {a.parameters() / 1e9:.2f}B parameters"
    )
    print(
        f"one trace of {args.seq_len:,} tokens, J = {args.n_steps} path points, {args.dtype}; GPU of "
        f"{args.gpu_memory:g} GiB with {args.margin:.0%} kept free; {args.tflops:g} TFLOP/s assumed"
    )
    print()
    print(f"{'points/chunk':>12}  {'checkpointing':>13}  {'peak GiB':>9}  {'fits':>4}  {'TFLOP':>9}  {'minutes':>8}")
    for row in rows:
        print(
            f"{row['points_per_chunk']:>12}  {'yes' if row['checkpointing'] else 'no':>13}  "
            f"{row['peak_GiB']:>9.1f}  {'yes' if row['fits'] else 'no':>4}  {row['TFLOP_per_trace']:>9.0f}  "
            f"{row['seconds_per_trace'] / 60:>8.2f}"
        )
    print()
    if choice is None:
        smallest = min(rows, key=lambda r: r["peak_GiB"])
        print(
            f"choice: none fits; the smallest peak is {smallest['peak_GiB']:.1f} GiB (1 point per chunk with "
            "checkpointing). Spread the model over several GPUs (models.generator.device_map) or shorten the trace."
        )
        return 1
    print(
        f"choice: internal_batch_size={choice.points_per_chunk}, activation_checkpointing="
        f"{str(choice.activation_checkpointing).lower()} (peak {choice.peak_bytes / 2**30:.1f} GiB, "
        f"{choice.seconds / 60:.2f} min per trace)"
    )
    return 0
