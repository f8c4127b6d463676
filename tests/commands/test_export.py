"""``segattr export``: a TRL-ready selective-SFT dataset from a ``segattr score`` folder.

The labels are checked against labels built by hand from the tokenizer's offsets (``hand_labels``), the
over-length policy against the untruncated examples, and the dataset is handed UNCHANGED to TRL's
``SFTTrainer`` (TRL 1.16: a ``labels`` column is used as it is, ``completion_mask`` only builds labels
where there are none, with ``completion_only_loss``): two training steps run, and the first step's
logged loss equals Eq. 9 computed by hand (mean token cross-entropy over the labelled tokens of the
batch, from a forward pass of the same initial model).
"""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch
from datasets import load_from_disk

from segattr_utils import cli
from segattr_utils.data.questions import r1_prompt
from segattr_utils.llm.models import load_causal_lm

from ..conftest import R1_TRACES, hand_labels

IGNORE = -100
EXPORTED = ["sum", "double", "long"]  # "wrong" has a wrong answer; "unfinished" was not scored
TRACES = {r["id"]: r for r in R1_TRACES}


@pytest.fixture(scope="module")
def scores(r1_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    traces = folder / "traces.jsonl"
    traces.write_text("".join(json.dumps(r) + "\n" for r in R1_TRACES), encoding="utf-8")
    out = folder / "scores"
    argv = ["score", "--model", str(r1_model_dir), "--traces", str(traces), "--out", str(out)]
    assert cli.main([*argv, "--n-steps", "4", "--dtype", "float32", "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def tokenizer(r1_model_dir):
    from segattr_utils.llm.models import load_tokenizer

    return load_tokenizer(str(r1_model_dir))


def _export(scores, out, *extra):
    return cli.main(["export", "--scores", str(scores), "--out", str(out), *extra])


def _expected(tokenizer, scores, trace_id, mask="selective"):
    """(input_ids, labels) by hand from the score tables: the trace's own output text, the selection."""
    segments = pd.read_parquet(scores / "segments.parquet")
    rows = segments[segments["trace_id"] == trace_id].sort_values("segment")
    record = TRACES[trace_id]
    answer_part = record["output"][record["output"].index("</think>") - 1 :]  # "\n</think>..." (one newline here)
    assert "".join(rows["text"]) + answer_part == record["output"].removeprefix("<think>\n")
    texts = list(rows["text"])
    selected = [int(i) for i in rows.loc[rows["selected"], "segment"]]
    prompt = r1_prompt(tokenizer, record["question"])
    if mask == "full":
        selected = list(range(len(texts)))
    elif mask == "pruned":
        texts, selected = [texts[i] for i in selected], list(range(len(selected)))
    return hand_labels(tokenizer, prompt, texts, answer_part, selected)


def test_hf_and_jsonl_exports_hold_hand_built_labels(scores, tokenizer, tmp_path, capsys):
    assert _export(scores, tmp_path / "hf") == 0
    out = capsys.readouterr().out
    assert "exported 3 examples" in out and "wrong (incorrect answer)" in out
    assert "1 traces were not scored" in out  # "unfinished"
    dataset = load_from_disk(str(tmp_path / "hf"))
    assert dataset.column_names == ["trace_id", "input_ids", "labels", "completion_mask"]
    assert dataset["trace_id"] == EXPORTED
    for row in dataset:
        ids, labels = _expected(tokenizer, scores, row["trace_id"])
        assert row["input_ids"] == ids and row["labels"] == labels
        assert row["completion_mask"] == [int(label != IGNORE) for label in labels]
        assert row["labels"][-1] == tokenizer.eos_token_id
        assert "So, the final answer is" not in tokenizer.decode(row["input_ids"])
    segments = pd.read_parquet(scores / "segments.parquet")
    assert not segments.loc[segments["trace_id"].isin(EXPORTED), "selected"].all()  # some segment is masked
    report = json.loads((tmp_path / "hf" / "export_report.json").read_text())
    assert report["examples"] == 3 and report["skipped"][0]["trace_id"] == "wrong" and report["truncated"] == []

    assert _export(scores, tmp_path / "jsonl", "--format", "jsonl") == 0
    lines = [json.loads(line) for line in (tmp_path / "jsonl" / "train.jsonl").read_text().splitlines()]
    assert lines == [dict(row) for row in dataset]


@pytest.mark.parametrize("mask", ["full", "pruned"])
def test_full_and_pruned_masks(scores, tokenizer, tmp_path, mask):
    assert _export(scores, tmp_path / mask, "--mask", mask, "--include-incorrect") == 0
    dataset = load_from_disk(str(tmp_path / mask))
    assert dataset["trace_id"] == ["sum", "double", "wrong", "long"]
    for row in dataset:
        ids, labels = _expected(tokenizer, scores, row["trace_id"], mask)
        assert row["input_ids"] == ids and row["labels"] == labels


def test_over_length_truncate_or_skip_is_listed(scores, tokenizer, tmp_path, capsys):
    lengths = {tid: len(_expected(tokenizer, scores, tid)[0]) for tid in EXPORTED}
    limit = lengths["long"] - 30
    assert max(lengths["sum"], lengths["double"]) <= limit
    assert _export(scores, tmp_path / "cut", "--max-length", str(limit)) == 0
    assert "truncated 1 to --max-length" in capsys.readouterr().out
    cut = load_from_disk(str(tmp_path / "cut"))
    row = cut[EXPORTED.index("long")]
    ids, labels = _expected(tokenizer, scores, "long")
    assert row["input_ids"] == ids[:limit] and row["labels"] == labels[:limit]  # keep_start, as TRL
    assert json.loads((tmp_path / "cut" / "export_report.json").read_text())["truncated"] == ["long"]

    assert _export(scores, tmp_path / "skip", "--max-length", str(limit), "--overlength", "skip") == 0
    assert load_from_disk(str(tmp_path / "skip"))["trace_id"] == ["sum", "double"]
    skipped = pd.read_csv(tmp_path / "skip" / "skipped.csv")
    assert dict(zip(skipped["trace_id"], skipped["reason"])) == {"wrong": "incorrect answer", "long": "over-length"}
    assert f"{lengths['long']} tokens > --max-length {limit}" in skipped.set_index("trace_id").loc["long", "detail"]


def test_export_replaces_only_its_own_output(scores, tmp_path, capsys):
    assert _export(scores, tmp_path / "ds") == 0
    assert _export(scores, tmp_path / "ds", "--format", "jsonl") == 0  # an earlier export is replaced
    assert not (tmp_path / "ds" / "state.json").exists() and (tmp_path / "ds" / "train.jsonl").is_file()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert _export(scores, tmp_path / "mine") == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert _export(tmp_path / "nothing-here", tmp_path / "x") == 2


def test_a_selection_that_does_not_follow_from_the_settings_is_refused(scores, tmp_path, capsys):
    import shutil

    edited = tmp_path / "scores"
    shutil.copytree(scores, edited)
    segments = pd.read_parquet(edited / "segments.parquet")
    first_masked = segments.index[~segments["selected"]][0]
    segments.loc[first_masked, "selected"] = True  # hand-edited: no longer what tau/beta give
    segments.to_parquet(edited / "segments.parquet", index=False)
    assert _export(edited, tmp_path / "ds") == 2
    assert "do not follow from settings.json" in capsys.readouterr().err


def _eq9_by_hand(model, rows) -> tuple[float, int]:
    """Eq. 9: summed cross-entropy of every labelled token (predicted from the tokens before it), over the
    batch, divided by their number; one unpadded forward pass per example."""
    total, count = 0.0, 0
    for row in rows:
        ids, labels = torch.tensor([row["input_ids"]]), torch.tensor(row["labels"])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
        targets = labels[1:]
        keep = targets != IGNORE
        total -= float(log_probs[:-1][keep].gather(-1, targets[keep].unsqueeze(-1)).sum())
        count += int(keep.sum())
    return total / count, count


def test_trl_trains_on_the_export_unchanged_and_the_first_loss_is_eq9(scores, r1_model_dir, tmp_path):
    from trl import SFTConfig, SFTTrainer

    assert _export(scores, tmp_path / "ds") == 0
    dataset = load_from_disk(str(tmp_path / "ds"))
    model, tokenizer = load_causal_lm(str(r1_model_dir), dtype="float32", device="cpu")
    initial = copy.deepcopy(model)
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"),
        max_steps=2,
        per_device_train_batch_size=len(dataset),  # both steps see the whole dataset in one batch
        learning_rate=1e-2,
        logging_steps=1,
        bf16=False,
        max_length=1024,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    prepared = {tuple(r["input_ids"]): r["labels"] for r in trainer.train_dataset}
    assert prepared == {tuple(r["input_ids"]): r["labels"] for r in dataset}  # TRL keeps the labels
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and trainer.state.global_step == 2

    expected, count = _eq9_by_hand(initial, dataset)
    assert count == sum(sum(m[1:]) for m in dataset["completion_mask"])
    assert losses[0] == pytest.approx(expected, rel=1e-5)
    # not the full-sequence loss: the masked segments and the prompt are left out
    everything, _ = _eq9_by_hand(initial, [{"input_ids": r["input_ids"], "labels": r["input_ids"]} for r in dataset])
    assert abs(everything - expected) > 1e-3
    assert losses[1] != losses[0]  # the first step changed the weights


def test_completion_mask_alone_trains_the_same_tokens(scores, r1_model_dir, tmp_path):
    """Without ``labels`` TRL builds them from ``completion_mask`` (``completion_only_loss=True``): the same."""
    from trl import SFTConfig, SFTTrainer

    assert _export(scores, tmp_path / "ds") == 0
    dataset = load_from_disk(str(tmp_path / "ds"))
    model, tokenizer = load_causal_lm(str(r1_model_dir), dtype="float32", device="cpu")
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"),
        completion_only_loss=True,
        bf16=False,
        max_length=1024,
        use_cpu=True,
        report_to="none",
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset.remove_columns("labels"), processing_class=tokenizer
    )
    built = {tuple(r["input_ids"]): r["labels"] for r in trainer.train_dataset}
    assert built == {tuple(r["input_ids"]): r["labels"] for r in dataset}
