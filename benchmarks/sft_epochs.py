"""Measurement: how many SFT epochs the tiny profile needs (the like-for-like reruns get cheaper by training
fewer epochs where the loss has flattened, measured, not by dropping seeds).

For full-CoT and segment selective SFT (Table 1's two rows) on one source and seed, a fresh student is
trained for each epoch count with every other setting of ``training.sft`` unchanged (so the cosine
schedule ends at each count, as a run with that many epochs would), then evaluated exactly as notebook 09
evaluates a run (greedy and sampled, every test question). The trainer's logged loss per epoch of the
longest run shows where the training loss flattens; the accuracies show what fewer epochs cost.

It reads the artifacts of stages 00-05 under ``results/<profile>/`` (run ``make reproduce`` up to notebook
05 first) and writes ``results/benchmarks/sft_epochs.csv`` / ``.md`` and ``sft_epochs_loss.csv``; the
trained models go to a temporary folder.

Usage: ``python benchmarks/sft_epochs.py --profile tiny --epochs 3 5 7 10``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from segattr_utils import services
from segattr_utils.artifacts import read_json, write_table
from segattr_utils.config import load_profile
from segattr_utils.llm.evaluation import evaluate_model
from segattr_utils.llm.generation import SamplingSettings
from segattr_utils.llm.training import TrainSettings, train_sft
from segattr_utils.llm.variants import get_variant
from segattr_utils.stages import stage08_selective_sft as sft
from segattr_utils.stages import stage09_evaluation as ev


def evaluate(profile, model_path: Path, outputs: Path, name: str) -> pd.DataFrame:
    """Overall greedy accuracy, pass@1 and lengths of the model at ``model_path``, as notebook 09 computes them."""
    cfg = profile["evaluation"]
    graded = evaluate_model(
        lambda: services.load_generator(profile, "student", "hf", path=model_path),
        ev.evaluation_benchmarks(profile),
        outputs,
        greedy=SamplingSettings(temperature=0.0, top_p=1.0, max_new_tokens=cfg["max_new_tokens"]),
        sampled=SamplingSettings(
            temperature=cfg["temperature"], top_p=cfg["top_p"], max_new_tokens=cfg["max_new_tokens"]
        ),
        batch_size=cfg["batch_size"],
        seed=int(profile["seed"]),
        make_prompt=services.prompt,
        model_name=name,
    )
    return ev.overall_metrics(ev.benchmark_metrics(graded, [1]), profile.get_path("evaluation.overall"))


def loss_by_epoch(run_dir: Path) -> list[dict]:
    """The trainer's logged losses of a finished run, with the epoch each was logged at."""
    states = sorted(run_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not states:
        return []
    history = read_json(states[-1])["log_history"]
    return [{"step": h["step"], "epoch": h["epoch"], "loss": h["loss"]} for h in history if "loss" in h]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--epochs", type=int, nargs="+", default=[3, 5, 7, 10])
    parser.add_argument("--variants", nargs="+", default=["full", "selective"])
    parser.add_argument("--source", default="self")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks"))
    args = parser.parse_args(argv)
    profile = load_profile(args.profile)
    records = sft.load_trace_records(profile, args.source)
    base_settings = dict(profile["training"]["sft"])
    rows, losses = [], []
    with tempfile.TemporaryDirectory(prefix="sft_epochs_") as scratch:
        for variant_name in args.variants:
            spec = sft.RunSpec(variant_name, args.source, args.seed, ("1",))
            variant = get_variant(variant_name)
            selections = variant.selections(records, sft.selection_settings(profile, spec))
            for epochs in args.epochs:
                name = f"{variant_name}__{args.source}__seed{args.seed}__epochs{epochs}"
                out = Path(scratch) / name
                model, tokenizer = services.load_model(profile, "student", device="cpu")
                examples = sft.build_examples(tokenizer, records, selections, variant.mode)
                # a checkpoint per epoch (the trainer keeps the last, which holds the whole log history)
                steps_per_epoch = -(-len(examples) // int(base_settings["batch_size"]))
                settings = TrainSettings.from_dict({**base_settings, "epochs": epochs, "save_steps": steps_per_epoch})
                started = time.time()
                summary = train_sft(model, tokenizer, examples, settings, out, seed=args.seed)
                train_seconds = time.time() - started
                started = time.time()
                metrics = evaluate(profile, out / "final", out / "outputs.jsonl", name).iloc[0]
                rows.append(
                    {
                        "variant": variant_name,
                        "epochs": epochs,
                        "steps": summary["steps"],
                        "final_loss": summary["final_loss"],
                        "mean_train_loss": summary["mean_train_loss"],
                        "greedy_acc": metrics["greedy_acc"],
                        "greedy_tokens": metrics["greedy_tokens"],
                        "pass@1": metrics["pass@1"],
                        "sample_tokens": metrics["sample_tokens"],
                        "train_seconds": round(train_seconds, 1),
                        "evaluate_seconds": round(time.time() - started, 1),
                    }
                )
                print(rows[-1], flush=True)
                if epochs == max(args.epochs):
                    log = loss_by_epoch(out)
                    losses += [{"variant": variant_name, "epochs_of_run": epochs, **entry} for entry in log]
    args.out.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    write_table(args.out / "sft_epochs.csv", table)
    write_table(args.out / "sft_epochs.md", table.round(3))
    write_table(args.out / "sft_epochs_loss.csv", pd.DataFrame(losses))
    print(table.round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
