"""Benchmark of the integrated-gradients engine (``segattr_utils.token_attributions``).

Run by ``make bench`` as ``.venv/bin/python benchmarks/bench_ig.py --out results/benchmarks``. Writes

- ``ig.csv``              wall time, CPU time and peak memory of four IG implementations at each length L
- ``completeness.csv``    relative completeness error against n_steps for three quadrature rules
- ``ig_benchmark.png/pdf`` the figure (time and memory against L; completeness error against n_steps)
- ``README_table.md``     Markdown tables of the same numbers, ready to paste into the README

Setting (everything is built locally, nothing is downloaded):

- Model: a randomly initialised ``Qwen2ForCausalLM`` with Qwen's real vocabulary (151,936 tokens), hidden
  size 64, 2 layers, tied embeddings, float32, ``pad_token_id=None`` (so no embedding row is zeroed), fixed
  seed. The vocabulary is what makes full logits expensive: one ``[L, vocab]`` float32 slab is
  L x 0.61 MB, 2.5 GB at L = 4096.
- Input: uniformly random token ids of length L; the answer is the last ``--answer-tokens`` (3) tokens;
  the IG baseline is token 151643 (Qwen's ``<|endoftext|>``, the R1-Distill pad) at every position.
- Methods (all Gauss-Legendre with the same ``--n-steps``, all with frozen parameters, eval mode):

  ``engine``          ``token_attributions(..., internal_batch_size=--batch)``: the LM head only at the
                      answer positions; one IG run for the whole answer.
  ``engine_onepass``  the same with every path point in one forward/backward pass.
  ``captum_llm``      captum's stock ``LLMGradientAttribution(LayerIntegratedGradients(model,
                      model.model.embed_tokens), tokenizer)`` driven with a ``TextTokenInput``. It runs one
                      IG per answer token (each with the earlier answer tokens appended un-interpolated)
                      and the model's full ``[points, L, vocab]`` logits in every forward pass. Random ids
                      have no text, so a 20-line shim tokenizer (``IdTokenizer``) maps the text
                      ``"t12 t7 t99"`` to the ids ``[12, 7, 99]`` and back, with offsets.
  ``full_logits``     a straightforward loop like the authors' code: for each chunk of path points, a full
                      forward on interpolated ``inputs_embeds`` producing ``[points, L, vocab]`` logits,
                      ``log_softmax`` over all of them, gather of the answer tokens, backward, accumulate.

- Memory: every (method, L) runs in a fresh subprocess. After building model and inputs (and a tiny
  warm-up), the child resets its RSS high-water mark (``/proc/self/clear_refs``) and records its RSS;
  the reported peak is ``ru_maxrss`` after the method minus that RSS, i.e. what the method itself added.
- Points per pass: ``--batch`` (4) for every method, lowered for ``captum_llm`` / ``full_logits`` until
  their estimated peak fits ``--mem-cap-gb`` (12 GB; the machine is shared). A configuration that does
  not fit even with one point per pass is skipped and recorded with its estimate. The estimate counts
  the vocab-sized float32 tensors alive at the peak: ``full_logits`` keeps logits, log-probabilities and
  their two gradients (4 x points x L x vocab x 4 bytes); ``captum_llm`` one such slab (the logits are
  freed when its forward function returns, but the backward of ``logits[:, -1]`` allocates a zero-filled
  gradient of the full logits). ``ig.csv`` lists estimate and measurement side by side.
- Threads: ``--threads`` (default 1) intra-op threads in every process. On a shared 2-core machine,
  2 threads under load spend most of their time in OpenMP barriers (the engine at L = 64 took 2-4 s
  with 2 threads and 0.15 s with 1 while other jobs ran), so single-thread timings are the reproducible
  ones; CPU seconds are recorded next to wall seconds.
- Agreement: ``full_logits`` uses the engine's quadrature, so its per-token attributions must equal
  ``engine``'s (max abs difference reported). ``captum_llm`` interpolates only the prompt (answer tokens
  stay real) and sums per-answer-token IGs; by linearity of IG in the target it must equal the engine run
  with ``interpolate`` = prompt positions, which the captum worker computes after its timed section.
- Completeness: relative error ``|F(x) - F(x') - sum IG| / |F(x) - F(x')|`` of the engine for
  ``riemann_trapezoid``, ``gausslegendre`` and ``official`` (the authors' rule) at n_steps in
  {8, 16, 32, 50, 100}, L = 256, mean over ``--sequences`` (3) random sequences.

Flags: ``--lengths``, ``--n-steps``, ``--batch``, ``--mem-cap-gb``, ``--quick`` (L in {64, 128} and a
small completeness sweep, for a smoke check; writes to a temporary folder unless ``--out`` is given).
Timings are wall-clock on whatever the machine is doing; the 1-minute load average at the start of each
configuration is recorded (``load1``) because other jobs may share the CPUs.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

BASELINE_TOKEN_ID = 151643  # Qwen's <|endoftext|> (the R1-Distill-Qwen pad token); non-zero embedding here
VOCAB_SIZE = 151_936
METHODS = ("engine", "engine_onepass", "captum_llm", "full_logits")
METHOD_LABELS = {
    "engine": "segattr engine (token_attributions)",
    "engine_onepass": "segattr engine, all points in one pass",
    "captum_llm": "captum LLMGradientAttribution + LayerIntegratedGradients",
    "full_logits": "full-logits loop (authors' style)",
}
COMPLETENESS_METHODS = ("riemann_trapezoid", "gausslegendre", "official")
COMPLETENESS_STEPS = (8, 16, 32, 50, 100)
#: vocab-sized float32 tensors alive at the peak, per path point in a pass (see module docstring)
VOCAB_SLABS = {"captum_llm": 1, "full_logits": 4, "engine": 0, "engine_onepass": 0}
GB = 1e9


# ----------------------------------------------------------------------------------------------- setup


def build_model(seed: int, hidden: int, layers: int, init_range: float, max_positions: int):
    """The tiny Qwen2 causal LM with the real Qwen vocabulary, float32, eval mode, parameters frozen."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    heads = max(1, hidden // 16)
    config = Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
        initializer_range=init_range,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).float().eval()
    model.requires_grad_(False)
    if not torch.any(model.get_input_embeddings().weight[BASELINE_TOKEN_ID]):
        raise RuntimeError("the baseline token's embedding is all zeros")
    return model


def make_sequence(seed: int, length: int, index: int = 0) -> torch.Tensor:
    """Uniformly random token ids; deterministic in (seed, length, index)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + length * 101 + index)
    return torch.randint(0, VOCAB_SIZE, (length,), generator=generator)


class IdTokenizer:
    """Minimal captum ``TokenizerLike`` for sequences without text: ``"t12 t7 t99"`` <-> ``[12, 7, 99]``."""

    def encode(self, text, add_special_tokens=True, return_tensors=None):
        ids = [int(tok[1:]) for tok in text.split()]
        return torch.tensor([ids]) if return_tensors == "pt" else ids

    def decode(self, token_ids):
        ids = token_ids.reshape(-1).tolist() if isinstance(token_ids, torch.Tensor) else token_ids
        ids = [ids] if isinstance(ids, int) else ids
        return " ".join(f"t{i}" for i in ids)

    def __call__(self, text, return_offsets_mapping=False, add_special_tokens=True, **kwargs):
        ids, offsets, pos = [], [], 0
        for tok in text.split(" "):
            ids.append(int(tok[1:]))
            offsets.append((pos, pos + len(tok)))
            pos += len(tok) + 1
        return {"input_ids": ids, "offset_mapping": offsets}

    def convert_ids_to_tokens(self, token_ids):
        return [f"t{i}" for i in token_ids] if isinstance(token_ids, list) else f"t{token_ids}"

    def convert_tokens_to_ids(self, tokens):
        return [int(t[1:]) for t in tokens] if isinstance(tokens, list) else int(tokens[1:])


# ---------------------------------------------------------------------------------------------- methods


def run_engine(model, ids, span, n_steps, batch, interpolate=None):
    from segattr_utils import token_attributions

    result = token_attributions(
        model,
        ids,
        span,
        baseline_token_id=BASELINE_TOKEN_ID,
        n_steps=n_steps,
        method="gausslegendre",
        internal_batch_size=batch,
        interpolate=interpolate,
    )
    return result.values, {"f_gap": result.f_input - result.f_baseline, "delta": result.delta}


def run_captum_llm(model, ids, span, n_steps, batch):
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput

    start, _ = span
    tokenizer = IdTokenizer()
    inp = TextTokenInput(tokenizer.decode(ids[:start]), tokenizer, baselines=BASELINE_TOKEN_ID)
    llm_attr = LLMGradientAttribution(LayerIntegratedGradients(model, model.get_input_embeddings()), tokenizer)
    result = llm_attr.attribute(
        inp, target=ids[start:], n_steps=n_steps, method="gausslegendre", internal_batch_size=batch
    )
    values = torch.zeros(ids.numel())
    values[:start] = result.seq_attr.detach().float().reshape(-1)
    return values, {}


def run_full_logits(model, ids, span, n_steps, batch):
    """The straightforward loop: full [points, L, vocab] logits and log_softmax for every chunk."""
    from segattr_utils import quadrature_rule

    weights, alphas = quadrature_rule("gausslegendre", n_steps)
    start, end = span
    embedding = model.get_input_embeddings()
    x = embedding(ids).unsqueeze(0)
    x_base = embedding(torch.full_like(ids, BASELINE_TOKEN_ID)).unsqueeze(0)
    targets = ids[start:end]
    total_grad = torch.zeros_like(x)
    for lo in range(0, n_steps, batch):
        alpha = torch.tensor(alphas[lo : lo + batch]).view(-1, 1, 1)
        weight = torch.tensor(weights[lo : lo + batch]).view(-1, 1, 1)
        path = (x_base + alpha * (x - x_base)).requires_grad_(True)
        out = model(inputs_embeds=path, use_cache=False)
        log_probs = torch.log_softmax(out.logits, dim=-1)  # [points, L, vocab]
        picked = log_probs[:, start - 1 : end - 1].gather(-1, targets.view(1, -1, 1).expand(path.shape[0], -1, 1))
        (grad,) = torch.autograd.grad(picked.sum(), path)
        total_grad += (weight * grad).sum(0, keepdim=True)
        del out, log_probs, picked, grad
    return ((x - x_base) * total_grad).sum(-1).squeeze(0), {}


RUNNERS = {
    "engine": run_engine,
    "engine_onepass": run_engine,
    "captum_llm": run_captum_llm,
    "full_logits": run_full_logits,
}


# ----------------------------------------------------------------------------------------------- worker


def _rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (and so ru_maxrss) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def worker(spec: dict) -> None:
    """One (method, L) measurement in this fresh process; writes a JSON result and the attributions."""
    torch.set_num_threads(spec["threads"])
    model = build_model(spec["seed"], spec["hidden"], spec["layers"], spec["init_range"], spec["max_positions"])
    length, method, n_steps, batch = spec["length"], spec["method"], spec["n_steps"], spec["batch"]
    ids = make_sequence(spec["seed"], length)
    span = (length - spec["answer_tokens"], length)
    runner = RUNNERS[method]
    warm_ids = make_sequence(spec["seed"] + 1, 32)
    runner(model, warm_ids, (32 - spec["answer_tokens"], 32), 2, 2)  # lazy init outside the measurement
    gc.collect()
    rss_before = _rss_bytes()
    peak_reset = _reset_peak_rss()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    values, extra = runner(model, ids, span, n_steps, batch)
    wall = time.perf_counter() - t0
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage1.ru_maxrss * 1024 - rss_before
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    saved = {"values": values.detach().float()}
    if method == "captum_llm":
        # Reference outside the timed section: the engine interpolating the prompt only.
        prompt_only = torch.arange(length) < span[0]
        saved["reference"], ref_extra = run_engine(model, ids, span, n_steps, batch, interpolate=prompt_only)
        extra["reference_f_gap"] = ref_extra["f_gap"]
    torch.save(saved, spec["values_path"])
    result = {
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_gb": peak / GB,
        "rss_after_build_gb": rss_before / GB,
        "peak_reset": peak_reset,
        "attr_sum": float(values.double().sum()),
        "threads": torch.get_num_threads(),
        **extra,
    }
    tmp = spec["result_path"] + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(result, fh)
    os.replace(tmp, spec["result_path"])


# ----------------------------------------------------------------------------------------------- parent


def estimate_peak_gb(method: str, length: int, points: int, answer_tokens: int) -> float:
    """Vocab-sized float32 tensors at the peak (module docstring); the engine's head sees only the answer."""
    slab = length * VOCAB_SIZE * 4 / GB
    if method in ("engine", "engine_onepass"):
        return 4 * points * answer_tokens * VOCAB_SIZE * 4 / GB
    return VOCAB_SLABS[method] * points * slab


def choose_points(method: str, length: int, requested: int, cap_gb: float, answer_tokens: int):
    """Largest points-per-pass <= requested (halving) whose estimate fits the cap; None if even 1 does not."""
    points = requested
    while points >= 1:
        if estimate_peak_gb(method, length, points, answer_tokens) <= cap_gb:
            return points
        if points == 1:
            break
        points = max(1, points // 2)
    return None


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_csv(frame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def atomic_savefig(fig, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=150, bbox_inches="tight")
    os.replace(tmp, path)


def run_cost_benchmark(args, workdir: Path):
    from tqdm import tqdm

    rows, stored = [], {}
    configs = [(length, method) for length in args.lengths for method in METHODS]
    for length, method in tqdm(configs, desc="IG cost (L, method)", unit="config"):
        requested = args.n_steps if method == "engine_onepass" else args.batch
        points = choose_points(method, length, requested, args.mem_cap_gb, args.answer_tokens)
        passes = None if points is None else math.ceil(args.n_steps / points)
        if method == "captum_llm" and passes is not None:
            passes *= args.answer_tokens
        row = {
            "L": length,
            "method": method,
            "implementation": METHOD_LABELS[method],
            "quadrature": "gausslegendre",
            "n_steps": args.n_steps,
            "answer_tokens": args.answer_tokens,
            "points_per_pass": points,
            "forward_backward_passes": passes,
            "load1": round(os.getloadavg()[0], 2),
        }
        if points is None:
            est = estimate_peak_gb(method, length, 1, args.answer_tokens)
            row.update(
                status=f"skipped (estimated {est:.1f} GB with 1 point per pass > cap {args.mem_cap_gb:g} GB)",
                est_peak_gb=round(est, 3),
            )
            rows.append(row)
            continue
        row["est_peak_gb"] = round(estimate_peak_gb(method, length, points, args.answer_tokens), 3)
        tag = f"{method}_L{length}"
        spec = {
            "method": method,
            "length": length,
            "n_steps": args.n_steps,
            "batch": points,
            "seed": args.seed,
            "hidden": args.hidden,
            "layers": args.layers,
            "init_range": args.init_range,
            "max_positions": max(4096, max(args.lengths)),
            "answer_tokens": args.answer_tokens,
            "threads": args.threads,
            "result_path": str(workdir / f"{tag}.json"),
            "values_path": str(workdir / f"{tag}.pt"),
        }
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--_worker", json.dumps(spec)],
                capture_output=True,
                text=True,
                timeout=args.worker_timeout,
            )
            rc, err = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired:
            rc, err = None, ""
        row["process_s"] = round(time.perf_counter() - t0, 2)
        if rc is None:
            row["status"] = f"timeout after {args.worker_timeout} s"
        elif rc != 0 or not Path(spec["result_path"]).exists():
            last = (err.strip().splitlines() or ["(no stderr)"])[-1][:200]
            row["status"] = f"failed (rc={rc}: {last})" if rc != -9 else "failed (killed, rc=-9: out of memory?)"
        else:
            result = json.loads(Path(spec["result_path"]).read_text())
            row.update(
                status="ok",
                **{
                    k: result[k]
                    for k in (
                        "wall_s",
                        "cpu_s",
                        "peak_rss_gb",
                        "rss_after_build_gb",
                        "attr_sum",
                        "threads",
                        "peak_reset",
                    )
                },
            )
            for key in ("f_gap", "delta", "reference_f_gap"):
                if key in result:
                    row[key] = result[key]
            stored[(length, method)] = torch.load(spec["values_path"])
        rows.append(row)

    # agreement checks
    for row in rows:
        key = (row["L"], row["method"])
        if key not in stored:
            continue
        values = stored[key]["values"]
        if row["method"] == "captum_llm":
            ref = stored[key]["reference"]
            row["compared_with"] = "engine, prompt positions interpolated"
            row["max_abs_diff"] = float((values - ref).abs().max())
            row["reference_attr_sum"] = float(ref.double().sum())
        elif row["method"] in ("full_logits", "engine_onepass") and (row["L"], "engine") in stored:
            ref = stored[(row["L"], "engine")]["values"]
            row["compared_with"] = "engine"
            row["max_abs_diff"] = float((values - ref).abs().max())
    return rows


def run_completeness(args):
    from tqdm import tqdm

    from segattr_utils import token_attributions

    model = build_model(args.seed, args.hidden, args.layers, args.init_range, max(4096, args.completeness_length))
    length = args.completeness_length
    span = (length - args.answer_tokens, length)
    sequences = [make_sequence(args.seed, length, 1 + i) for i in range(args.sequences)]
    rows = []
    configs = [(m, n) for m in COMPLETENESS_METHODS for n in args.completeness_steps]
    for method, n_steps in tqdm(configs, desc=f"completeness (L={length})", unit="config"):
        errors, gaps = [], []
        for ids in sequences:
            res = token_attributions(
                model,
                ids,
                span,
                baseline_token_id=BASELINE_TOKEN_ID,
                n_steps=n_steps,
                method=method,
                internal_batch_size=min(n_steps, 32),
            )
            errors.append(res.relative_delta)
            gaps.append(res.f_input - res.f_baseline)
        row = {
            "L": length,
            "method": method,
            "n_steps": n_steps,
            "n_sequences": len(sequences),
            "rel_error_mean": sum(errors) / len(errors),
            "rel_error_min": min(errors),
            "rel_error_max": max(errors),
            "mean_abs_f_gap": sum(abs(g) for g in gaps) / len(gaps),
        }
        row.update({f"rel_error_seq{i}": e for i, e in enumerate(errors)})
        rows.append(row)
    return rows


def make_figure(cost, comp, out: Path, batch: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    markers = {"engine": "o", "engine_onepass": "s", "captum_llm": "^", "full_logits": "D"}
    ok = cost[cost["status"] == "ok"]
    for method in METHODS:
        sub = ok[ok["method"] == method].sort_values("L")
        if sub.empty:
            continue
        axes[0].plot(sub["L"], sub["wall_s"], marker=markers[method], label=METHOD_LABELS[method])
        axes[1].plot(sub["L"], sub["peak_rss_gb"].clip(lower=1e-3), marker=markers[method], label=METHOD_LABELS[method])
        for _, r in sub.iterrows():
            if r["points_per_pass"] != (r["n_steps"] if method == "engine_onepass" else batch):
                axes[1].annotate(
                    f"{method}: {int(r['points_per_pass'])} pt/pass",
                    (r["L"], max(r["peak_rss_gb"], 1e-3)),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(-40, -12),
                )
    skipped = cost[cost["status"].str.startswith("skipped")]
    for _, r in skipped.iterrows():
        axes[1].scatter([r["L"]], [r["est_peak_gb"]], marker="x", color="grey")
        axes[1].annotate("skipped (est.)", (r["L"], r["est_peak_gb"]), fontsize=7)
    n_steps = int(cost["n_steps"].iloc[0])
    for ax, ylabel, title in (
        (axes[0], "wall time [s]", f"IG wall time ({n_steps} Gauss-Legendre points)"),
        (axes[1], "peak memory added [GB]", "peak RSS above model + inputs"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L [tokens]")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    for method in COMPLETENESS_METHODS:
        sub = comp[comp["method"] == method].sort_values("n_steps")
        axes[2].plot(sub["n_steps"], sub["rel_error_mean"], marker="o", label=method)
    axes[2].set_yscale("log")
    axes[2].set_xscale("log")
    axes[2].set_xticks(sorted(comp["n_steps"].unique()))
    axes[2].set_xticklabels([str(n) for n in sorted(comp["n_steps"].unique())])
    axes[2].minorticks_off()
    axes[2].set_xlabel("n_steps (path points)")
    axes[2].set_ylabel("|F(x) - F(x') - sum IG| / |F(x) - F(x')|")
    axes[2].set_title(
        f"completeness error (L={int(comp['L'].iloc[0])}, mean of {int(comp['n_sequences'].iloc[0])} seqs)"
    )
    axes[2].grid(True, which="both", alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    atomic_savefig(fig, out / "ig_benchmark.png")
    atomic_savefig(fig, out / "ig_benchmark.pdf")
    plt.close(fig)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fmt(value, spec):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def readme_tables(cost, comp, args, runtime_s: float) -> str:
    lines = [
        "<!-- generated by benchmarks/bench_ig.py; numbers from one run -->",
        f"IG cost: tiny Qwen2ForCausalLM (vocab {VOCAB_SIZE:,}, hidden {args.hidden}, {args.layers} layers, "
        f"float32, random init), random token ids, {args.answer_tokens}-token answer at the end, baseline token "
        f"{BASELINE_TOKEN_ID}, {args.n_steps} Gauss-Legendre points; CPU {cpu_name()} ({os.cpu_count()} cores, {args.threads} torch "
        f"thread(s) per process), torch {torch.__version__}. Peak = max RSS added by the method (fresh process "
        "per row). Passes = forward+backward passes; `pt/pass` = path points per pass; load = 1-minute load "
        "average when the row started (the machine is shared).",
        "",
        "| L | method | pt/pass | passes | wall [s] | CPU [s] | peak [GB] | est. vocab tensors [GB] | sum of attributions | max abs diff (vs) | load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for _, r in cost.iterrows():
        if r["status"] != "ok":
            lines.append(
                f"| {r['L']} | {r['method']} | - | - | {r['status']} | | | {_fmt(r.get('est_peak_gb'), '.2f')} | | | {r['load1']} |"
            )
            continue
        diff = "-"
        if isinstance(r.get("compared_with"), str):
            diff = f"{r['max_abs_diff']:.1e} ({'engine, prompt only' if r['method'] == 'captum_llm' else 'engine'})"
        lines.append(
            f"| {r['L']} | {r['method']} | {int(r['points_per_pass'])} | {int(r['forward_backward_passes'])} | "
            f"{r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['peak_rss_gb']:.3f} | {r['est_peak_gb']:.2f} | "
            f"{r['attr_sum']:+.6f} | {diff} | {r['load1']} |"
        )
    lines += [
        "",
        "`captum_llm` interpolates only the prompt (the answer tokens stay real) and runs one IG per answer "
        "token, so its sum differs from the engine's whole-sequence run; it is checked against the engine "
        "with `interpolate` = prompt positions. `full_logits` is checked against `engine` (same rule).",
        "",
        f"Completeness: relative error |F(x) - F(x') - sum IG| / |F(x) - F(x')| of `token_attributions`, "
        f"L = {int(comp['L'].iloc[0])}, mean over {int(comp['n_sequences'].iloc[0])} random sequences "
        f"(mean |F(x) - F(x')| = {comp['mean_abs_f_gap'].iloc[0]:.3f}).",
        "",
        "| n_steps | " + " | ".join(COMPLETENESS_METHODS) + " |",
        "|---:|" + "---:|" * len(COMPLETENESS_METHODS),
    ]
    for n in sorted(comp["n_steps"].unique()):
        cells = []
        for method in COMPLETENESS_METHODS:
            sel = comp[(comp["method"] == method) & (comp["n_steps"] == n)]
            cells.append(f"{sel['rel_error_mean'].iloc[0]:.2e}" if not sel.empty else "-")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", f"Benchmark run time (cost + completeness + figure): {runtime_s / 60:.1f} min.", ""]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default results/benchmarks; with --quick a temporary folder)",
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="sequence lengths (default 256 1024 4096)")
    parser.add_argument("--n-steps", type=int, default=None, help="IG path points for the cost benchmark (default 16)")
    parser.add_argument("--batch", type=int, default=4, help="path points per forward/backward pass (default 4)")
    parser.add_argument(
        "--mem-cap-gb", type=float, default=12.0, help="largest estimated peak a configuration may use (default 12 GB)"
    )
    parser.add_argument("--answer-tokens", type=int, default=3)
    parser.add_argument("--sequences", type=int, default=None, help="sequences for completeness (default 3)")
    parser.add_argument("--completeness-length", type=int, default=None, help="default 256")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--init-range", type=float, default=0.02, help="initializer_range (Qwen2 default 0.02)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process (default 1)")
    parser.add_argument("--worker-timeout", type=int, default=1200, help="seconds per configuration")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke check")
    parser.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.lengths = args.lengths or ([64, 128] if quick else [256, 1024, 4096])
    args.n_steps = args.n_steps or (8 if quick else 16)
    args.sequences = args.sequences or (2 if quick else 3)
    args.completeness_length = args.completeness_length or (64 if quick else 256)
    args.completeness_steps = (8, 16, 32) if quick else COMPLETENESS_STEPS
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "segattr_bench_quick" if quick else Path("results/benchmarks")
    if args.n_steps < 2 or args.batch < 1 or any(length <= args.answer_tokens + 1 for length in args.lengths):
        parser.error("need n_steps >= 2, batch >= 1 and every length > answer_tokens + 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args._worker is not None:
        worker(json.loads(args._worker))
        return
    import pandas as pd

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_ig_") as tmp:
        cost_rows = run_cost_benchmark(args, Path(tmp))
    cost = pd.DataFrame(cost_rows)
    atomic_write_csv(cost, out / "ig.csv")
    comp = pd.DataFrame(run_completeness(args))
    atomic_write_csv(comp, out / "completeness.csv")
    make_figure(cost, comp, out, args.batch)
    runtime = time.perf_counter() - started
    atomic_write_text(out / "README_table.md", readme_tables(cost, comp, args, runtime))
    print(f"wrote {out}/ig.csv, completeness.csv, ig_benchmark.png/.pdf, README_table.md in {runtime / 60:.1f} min")


if __name__ == "__main__":
    main()
