"""IG memory at Qwen2-7B's widths on the CPU, beside the estimator's prediction.

Run by ``make bench`` as ``.venv/bin/python benchmarks/ig_memory.py --out results/benchmarks``. Writes

- ``ig_memory.csv``   one row per measurement (resumable: rows already there are not measured again)
- ``ig_memory.md``    the Markdown tables pasted into the README's "IG at paper scale" section
- ``ig_memory.png``   measured vs predicted peak, and activation memory per layer per path point

Setting. DeepSeek-R1-Distill-Qwen-7B's config (hidden 3,584, intermediate 18,944, 28 heads / 4 KV heads,
vocabulary 152,064, untied head), built locally with random weights in bfloat16 and only 1 or 2 decoder
layers (``--layers``): nothing is downloaded. Random token ids of length L (``--lengths``: 2k-16k; about
90 minutes in all on a 2-core CPU), a 4-token answer
at the end, baseline token 151643 (the R1 pad), Gauss-Legendre with J = 2 points and 1 point per pass,
so that every number is "per path point". Each measurement runs in a fresh process: after building the
model and a warm-up call the child resets its RSS high-water mark (``/proc/self/clear_refs``) and reports
``VmHWM`` minus the RSS just before the call, i.e. the memory the call added beyond the weights. glibc is
told to return every freed block above 64 KiB at once (``MALLOC_MMAP_THRESHOLD_``), so that RSS follows
the live tensors.

Per layer per path point: (peak with 2 layers - peak with 1 layer) / 1 point, with and without activation
checkpointing. Extrapolated to the real model: peak(1 layer) + 27 x that, scaled linearly to L = 16,384
(every term is linear in L with a fused attention kernel), plus the 15.2 GB of bfloat16 weights.

``full_logits``: the authors' approach at this width, a full forward pass producing ``[points, L, vocab]``
logits, ``log_softmax`` over all of them, gather of the answer, backward (1 layer; skipped where its
predicted peak exceeds ``--mem-cap-gb``). Its prediction is the estimator's with every position treated as
an answer position (the logits term then covers all L).

Timings are wall-clock on a shared 2-core machine (the 1-minute load average is recorded per row);
the memory numbers do not depend on the load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from segattr_utils.llm import architectures

# the real widths, without the 28 layers (config() sets them) and without special token ids
R1_DISTILL_QWEN_7B = {
    **{k: v for k, v in architectures.R1_DISTILL_QWEN_7B.items() if k != "num_hidden_layers"},
    "pad_token_id": None,
    "bos_token_id": None,
    "eos_token_id": None,
}
REAL_LAYERS = architectures.R1_DISTILL_QWEN_7B["num_hidden_layers"]
TARGET_LENGTH = 16_384
BASELINE_TOKEN_ID = 151_643
ANSWER_TOKENS = 4
N_STEPS = 2  # two path points, one per pass: the measured peak is that of one path point
GB, GIB = 1e9, 2**30


def config(layers: int):
    from transformers import Qwen2Config

    return Qwen2Config(num_hidden_layers=layers, **R1_DISTILL_QWEN_7B)


def predicted(spec: dict):
    from segattr_utils import estimate_ig_cost

    full = spec["method"] == "full_logits"
    return estimate_ig_cost(
        config(spec["layers"]),
        spec["length"],
        points_per_chunk=1,
        activation_checkpointing=spec["checkpointing"],
        dtype="bfloat16",
        n_steps=N_STEPS,
        answer_tokens=spec["length"] - 1 if full else ANSWER_TOKENS,
    )


# ---------------------------------------------------------------------------------------------- child


def full_logits(model, ids, span):
    """The authors' approach: every position's logits for each path point, then the answer's log-prob."""
    from segattr_utils import quadrature_rule

    weights, alphas = quadrature_rule("gausslegendre", N_STEPS)
    start, end = span
    embedding = model.get_input_embeddings()
    with torch.no_grad():
        x = embedding(ids).unsqueeze(0).float()
        x_base = embedding(torch.full_like(ids, BASELINE_TOKEN_ID)).unsqueeze(0).float()
    total = torch.zeros_like(x)
    for weight, alpha in zip(weights, alphas):
        path = (x_base + alpha * (x - x_base)).requires_grad_(True)
        logits = model(inputs_embeds=path.to(torch.bfloat16), use_cache=False).logits.float()  # [1, L, vocab]
        log_probs = torch.log_softmax(logits, dim=-1)
        del logits
        picked = log_probs[:, start - 1 : end - 1].gather(-1, ids[start:end].view(1, -1, 1))
        (grad,) = torch.autograd.grad(picked.sum(), path)
        total += weight * grad
        del log_probs, picked, grad
    return ((x - x_base) * total).sum(-1).squeeze(0)


def child(spec: dict) -> None:
    from transformers import Qwen2ForCausalLM

    from segattr_utils import token_attributions

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # build in bfloat16: no float32 copy of the weights
    model = Qwen2ForCausalLM(config(spec["layers"])).eval()
    torch.set_default_dtype(torch.float32)
    model.requires_grad_(False)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    length = spec["length"]
    ids = torch.randint(0, R1_DISTILL_QWEN_7B["vocab_size"], (length,), generator=torch.Generator().manual_seed(1))
    span = (length - ANSWER_TOKENS, length)

    def run(sequence, answer):
        if spec["method"] == "full_logits":
            return full_logits(model, sequence, answer)
        return token_attributions(
            model,
            sequence,
            answer,
            baseline_token_id=BASELINE_TOKEN_ID,
            n_steps=N_STEPS,
            method="gausslegendre",
            internal_batch_size=1,
            activation_checkpointing=spec["checkpointing"],
        ).values

    run(ids[:32], (28, 32))  # warm-up: lazy initialisation does not belong to the measurement

    def rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # VmHWM := current RSS
    before = rss()
    started, cpu = time.perf_counter(), time.process_time()
    values = run(ids, span)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    with open("/proc/self/status") as handle:
        high_water = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM"))
    print(
        json.dumps(
            {
                "measured_bytes": high_water - before,
                "weight_bytes": weight_bytes,
                "rss_before_bytes": before,
                "seconds": seconds,
                "cpu_seconds": cpu,
                "finite": bool(torch.isfinite(values).all()),
                "attribution_sum": float(values.double().sum()),
            }
        )
    )


# --------------------------------------------------------------------------------------------- parent


def measure(spec: dict, timeout: float) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", MALLOC_MMAP_THRESHOLD_="65536")
    repo = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = str(repo) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plan(args) -> list[dict]:
    specs = []
    for length in args.lengths:
        for layers in args.layers:
            for checkpointing in (False, True):
                specs.append(dict(method="engine", length=length, layers=layers, checkpointing=checkpointing))
    for length in args.full_logits_lengths:
        specs.append(dict(method="full_logits", length=length, layers=1, checkpointing=False))
    return [dict(spec, threads=args.threads) for spec in specs]


def key(row) -> tuple:
    return (row["method"], int(row["length"]), int(row["layers"]), bool(row["checkpointing"]))


def run_all(args) -> list[dict]:
    import pandas as pd

    csv = args.out / "ig_memory.csv"
    rows = pd.read_csv(csv).to_dict("records") if csv.exists() and not args.fresh else []
    done = {key(r) for r in rows}
    for spec in plan(args):
        if key(spec) in done:
            continue
        cost = predicted(spec)
        row = {
            **{k: spec[k] for k in ("method", "length", "layers", "checkpointing")},
            "predicted_bytes": cost.working_bytes,
            "predicted_weight_bytes": cost.weight_bytes,
            "load1": os.getloadavg()[0],
        }
        if cost.working_bytes / GB > args.mem_cap_gb:
            row["skipped"] = f"predicted {cost.working_bytes / GB:.1f} GB > --mem-cap-gb {args.mem_cap_gb:g}"
            print(f"skip {key(spec)}: {row['skipped']}", flush=True)
        else:
            print(f"measure {key(spec)} (predicted {cost.working_bytes / GB:.2f} GB) ...", flush=True)
            row.update(measure(spec, args.timeout))
            print(f"  measured {row['measured_bytes'] / GB:.2f} GB in {row['seconds']:.0f} s", flush=True)
        rows.append(row)
        args.out.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(csv.with_suffix(".tmp"), index=False)
        os.replace(csv.with_suffix(".tmp"), csv)
    return rows


def tables(rows: list[dict]) -> tuple[str, dict]:
    """The Markdown tables and the numbers the README quotes."""
    import pandas as pd

    from segattr_utils import estimate_ig_cost

    frame = pd.DataFrame(rows)
    if "skipped" not in frame:
        frame["skipped"] = None
    measured = frame[frame["skipped"].isna()].copy()
    measured["error"] = measured["predicted_bytes"] / measured["measured_bytes"] - 1
    engine = measured[measured["method"] == "engine"]
    lines = [
        "**Measured peak per path point** (memory the call adds beyond the weights; 1 point per pass):",
        "",
        "| L | layers | checkpointing | measured [GiB] | estimator [GiB] | estimator error | wall [s] | "
        "estimator TFLOP | achieved GFLOP/s | load |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in measured.sort_values(["method", "length", "layers", "checkpointing"]).to_dict("records"):
        label = "full logits (authors)" if row["method"] == "full_logits" else ("yes" if row["checkpointing"] else "no")
        # FLOPs of the engine's trace (4 passes without gradients + J points); the full-logits loop has no
        # passes without gradients, so the estimator's count does not apply to it
        flops = predicted({k: row[k] for k in ("method", "length", "layers", "checkpointing")}).flops
        speed = f"{flops / 1e12:.1f} | {flops / row['seconds'] / 1e9:.0f}" if row["method"] == "engine" else "- | -"
        lines.append(
            f"| {row['length']:,} | {row['layers']} | {label} | {row['measured_bytes'] / GIB:.3f} | "
            f"{row['predicted_bytes'] / GIB:.3f} | {row['error']:+.1%} | {row['seconds']:.0f} | {speed} | "
            f"{row['load1']:.1f} |"
        )
    for row in frame[frame["skipped"].notna()].to_dict("records"):
        lines.append(
            f"| {row['length']:,} | {row['layers']} | {row['method']} | - | - | - | - | - | - | {row['skipped']} |"
        )
    summary = {"max_abs_error": float(measured["error"].abs().max()) if len(measured) else float("nan")}

    lines += [
        "",
        "**Per layer per path point** (peak with 2 layers minus peak with 1 layer), and extrapolated to the real "
        f"model ({REAL_LAYERS} layers, L = {TARGET_LENGTH:,}, weights included):",
        "",
        "| L | checkpointing | per layer, measured [MiB] | per layer, estimator [MiB] | checkpointed / plain "
        f"(measured) | {REAL_LAYERS} layers at L = 16k, from this row [GiB] | estimator [GiB] |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    by = {(r["length"], r["layers"], bool(r["checkpointing"])): r for r in engine.to_dict("records")}
    ratios = {}
    for length in sorted({r[0] for r in by}):
        per_layer = {}
        for checkpointing in (False, True):
            one, two = by.get((length, 1, checkpointing)), by.get((length, 2, checkpointing))
            if one is None or two is None:
                continue
            per_layer[checkpointing] = two["measured_bytes"] - one["measured_bytes"]
        for checkpointing, marginal in per_layer.items():
            one = by[(length, 1, checkpointing)]
            cost = estimate_ig_cost(
                config(1),
                length,
                activation_checkpointing=checkpointing,
                n_steps=N_STEPS,
                answer_tokens=ANSWER_TOKENS,
            )
            scale = TARGET_LENGTH / length
            real = estimate_ig_cost(
                config(REAL_LAYERS),
                TARGET_LENGTH,
                activation_checkpointing=checkpointing,
                n_steps=N_STEPS,
                answer_tokens=ANSWER_TOKENS,
            )
            extrapolated = (one["measured_bytes"] + (REAL_LAYERS - 1) * marginal) * scale + real.weight_bytes
            ratio = per_layer[True] / per_layer[False] if len(per_layer) == 2 else float("nan")
            if checkpointing:
                ratios[length] = ratio
            lines.append(
                f"| {length:,} | {'yes' if checkpointing else 'no'} | {marginal / 2**20:.1f} | "
                f"{cost.kept_bytes_per_layer * length / 2**20:.1f} | "
                f"{f'{ratio:.3f} (1/{1 / ratio:.0f})' if checkpointing else ''} | {extrapolated / GIB:.1f} | "
                f"{real.peak_bytes / GIB:.1f} |"
            )
    summary["checkpointed_over_plain"] = ratios
    for checkpointing in (False, True):
        real = estimate_ig_cost(
            config(REAL_LAYERS), TARGET_LENGTH, activation_checkpointing=checkpointing, n_steps=50, answer_tokens=8
        )
        summary[f"real_peak_gib_{'checkpointed' if checkpointing else 'plain'}"] = real.peak_bytes / GIB
        summary[f"real_activations_gib_{'checkpointed' if checkpointing else 'plain'}"] = real.working_bytes / GIB

    full = measured[measured["method"] == "full_logits"]
    if len(full):
        lines += [
            "",
            "**Engine vs the authors' full logits** (1 layer, 1 point per pass, no checkpointing):",
            "",
            "| L | engine [GiB] | full logits [GiB] | ratio | engine [s] | full logits [s] |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for row in full.to_dict("records"):
            mine = by.get((row["length"], 1, False))
            if mine is None:
                continue
            lines.append(
                f"| {row['length']:,} | {mine['measured_bytes'] / GIB:.3f} | {row['measured_bytes'] / GIB:.3f} | "
                f"{row['measured_bytes'] / mine['measured_bytes']:.1f}x | {mine['seconds']:.0f} | {row['seconds']:.0f} |"
            )
    return "\n".join(lines) + "\n", summary


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from segattr_utils import estimate_ig_cost

    frame = pd.DataFrame(rows)
    if "skipped" in frame:
        frame = frame[frame["skipped"].isna()]
    engine = frame[frame["method"] == "engine"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for (layers, checkpointing), group in engine.groupby(["layers", "checkpointing"]):
        group = group.sort_values("length")
        label = f"{layers} layer{'s' if layers > 1 else ''}, {'checkpointed' if checkpointing else 'plain'}"
        line = left.plot(group["length"], group["measured_bytes"] / GIB, "o-", label=f"{label} (measured)")[0]
        left.plot(group["length"], group["predicted_bytes"] / GIB, "x--", color=line.get_color())
    left.set(xlabel="sequence length L", ylabel="peak beyond weights [GiB] (x--: estimator)", xscale="log")
    left.set_title("One path point at Qwen2-7B widths (CPU, bf16)")
    left.legend(fontsize=7)
    for checkpointing in (False, True):
        marginal = []
        for length in sorted(engine["length"].unique()):
            sel = engine[(engine["length"] == length) & (engine["checkpointing"] == checkpointing)]
            by_layers = dict(zip(sel["layers"], sel["measured_bytes"]))
            if 1 in by_layers and 2 in by_layers:
                marginal.append((length, (by_layers[2] - by_layers[1]) / 2**20))
        if marginal:
            xs, ys = zip(*marginal)
            label = "checkpointed" if checkpointing else "plain"
            line = right.plot(xs, ys, "o-", label=f"{label} (measured)")[0]
            kept = estimate_ig_cost(config(1), xs[0], activation_checkpointing=checkpointing).kept_bytes_per_layer
            right.plot(xs, [kept * x / 2**20 for x in xs], "x--", color=line.get_color(), label=f"{label} (estimator)")
    right.set(xlabel="sequence length L", ylabel="per layer per path point [MiB]", xscale="log", yscale="log")
    right.set_title("Activation memory of one more layer")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    parser.add_argument("--lengths", type=lambda s: [int(v) for v in s.split(",")], default=[2048, 4096, 8192, 16384])
    parser.add_argument("--layers", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2])
    parser.add_argument(
        "--full-logits-lengths", type=lambda s: [int(v) for v in s.split(",") if v], default=[2048, 4096]
    )
    parser.add_argument("--mem-cap-gb", type=float, default=14.0, help="skip a measurement predicted above this")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3 * 3600)
    parser.add_argument("--fresh", action="store_true", help="measure every row again")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child is not None:
        child(json.loads(args.child))
        return
    started = time.perf_counter()
    rows = run_all(args)
    text, summary = tables(rows)
    (args.out / "ig_memory.md").write_text(text)
    (args.out / "ig_memory_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    figure(rows, args.out / "ig_memory.png")
    print(text)
    print(json.dumps(summary, indent=2, default=str))
    print(f"wrote {args.out}/ig_memory.csv, .md, .png in {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
