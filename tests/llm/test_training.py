"""Selective SFT through TRL's SFTTrainer computes Eq. 9 exactly.

Eq. 9:  L = -(1 / sum_t I(o_t)) * sum_t I(o_t) log P(o_t | o_<t, q)

A pre-tokenised dataset with ``input_ids`` and ``labels`` built by ``segattr_utils.method.masking.selective_labels``
is handed to ``trl.SFTTrainer``. The batch is taken exactly as the trainer builds it
(``trainer.get_train_dataloader()``) and ``trainer.compute_loss`` is compared with a manual computation:
full-logit forward, shift by one, cross-entropy summed over the positions whose label is not -100,
divided by the number of such positions in the whole batch (a token-level mean, not a mean of
per-sequence means). Tiny Qwen2 and a locally built BPE tokenizer: nothing is downloaded.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from segattr_utils.method.masking import selective_labels
from segattr_utils.world.tokenizer import build_bpe_tokenizer

from ..fixtures.tiny_models import tiny_qwen2 as make_tiny_qwen2

IGNORE = -100

CORPUS = [
    "What is 12 + 30? Let me add the tens first. 10 + 30 = 40. Then 2 more gives 42.",
    "Wait, let me double check: 12 + 30 = 42. Alternatively, count up from 30 by 12.",
    "Hmm, so the answer is 42. The final answer is \\boxed{42}.",
    "Compute 7 * 6. Seven sixes: 6, 12, 18, 24, 30, 36, 42. But wait, 7 * 6 = 42 indeed.",
    "Let me verify. Maybe I should try another approach. So the result holds.",
] * 4

# (prompt, [trace segments], answer) -- segments as the keyword segmentation would cut them
EXAMPLES = [
    (
        "What is 12 + 30?",
        [
            "Let me add the tens first. 10 + 30 = 40. ",
            "Then 2 more gives 42.\n\n",
            "Wait, let me double check: 12 + 30 = 42.\n\n",
        ],
        " The final answer is \\boxed{42}.",
    ),
    (
        "Compute 7 * 6.",
        ["Seven sixes: 6, 12, 18, 24, 30, 36, 42.\n\n", "But wait, 7 * 6 = 42 indeed.\n\n"],
        " The final answer is \\boxed{42}.",
    ),
    (
        "What is 12 + 30?",
        [
            "Hmm, count up from 30 by 12. ",
            "Alternatively, 12 + 30 = 42.\n\n",
            "Let me verify. So the result holds.\n\n",
            "Maybe I should try another approach.\n\n",
        ],
        " So the answer is 42.",
    ),
    ("Compute 7 * 6.", ["Seven sixes make 42.\n\n"], " The final answer is \\boxed{42}."),
]
# indices into the segment list (trace segments, then the answer as the last "segment")
SELECTED = [[1, 3], [0, 2], [1, 2, 4], [1]]


@pytest.fixture(scope="module")
def tokenizer():
    return build_bpe_tokenizer(CORPUS, vocab_size=320)


def encode_example(tokenizer, prompt, segments, answer):
    """Token ids of ``prompt + segments + answer`` and the token span of every segment (answer last).

    Pieces are tokenised separately and concatenated, so the spans are exact by construction."""
    prompt_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    spans = []
    for piece in [*segments, answer]:
        piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
        spans.append((len(ids), len(ids) + len(piece_ids)))
        ids = ids + piece_ids
    eos = tokenizer.eos_token_id
    spans[-1] = (spans[-1][0], spans[-1][1] + 1)  # EOS is trained with the answer
    ids = ids + [eos]
    return ids, spans


def build_rows(tokenizer, selection):
    rows = []
    for (prompt, segments, answer), selected in zip(EXAMPLES, selection):
        ids, spans = encode_example(tokenizer, prompt, segments, answer)
        if selected == "all":
            selected = range(len(spans))
        labels = selective_labels(ids, spans, selected)
        rows.append({"input_ids": ids, "labels": labels.tolist()})
    return rows


def tiny_model(tokenizer, seed=0):
    return make_tiny_qwen2(
        tokenizer=tokenizer,
        seed=seed,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.1,
    ).float()


def make_trainer(tmp_path, tokenizer, rows, *, max_length=2048, batch_size=2, model=None):
    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        bf16=False,
        activation_checkpointing=False,  # TRL turns checkpointing on by default; the reference loss runs without it
        fp16=False,
        max_length=max_length,
        per_device_train_batch_size=batch_size,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
    )
    model = tiny_model(tokenizer) if model is None else model
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    return trainer


def manual_loss(model, batch) -> tuple[torch.Tensor, int]:
    """Eq. 9 by hand: full logits, shift, CE summed over labelled positions / their count (whole batch)."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits.float()
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
    shift_labels = batch["labels"][:, 1:].reshape(-1)
    keep = shift_labels != IGNORE
    nll = F.cross_entropy(shift_logits[keep], shift_labels[keep], reduction="sum")
    count = int(keep.sum())
    return nll / count, count


def trainer_batches(trainer):
    return list(trainer.get_train_dataloader())


def strip_padding(row_labels: torch.Tensor, row_mask: torch.Tensor) -> list[int]:
    return row_labels[row_mask.bool()].tolist()


# --------------------------------------------------------------------------- tests


def test_labels_select_exactly_the_chosen_segments(tokenizer):
    rows = build_rows(tokenizer, SELECTED)
    for (prompt, segments, answer), selected, row in zip(EXAMPLES, SELECTED, rows):
        ids, spans = encode_example(tokenizer, prompt, segments, answer)
        expected = [IGNORE] * len(ids)
        for k in selected:
            for t in range(*spans[k]):
                expected[t] = ids[t]
        assert row["labels"] == expected
        assert row["labels"][: spans[0][0]] == [IGNORE] * spans[0][0]  # the prompt is never trained


def test_trl_keeps_labels_unchanged(tmp_path, tokenizer):
    rows = build_rows(tokenizer, SELECTED)
    trainer = make_trainer(tmp_path, tokenizer, rows)
    prepared = trainer.train_dataset
    assert len(prepared) == len(rows)
    for original, kept in zip(rows, prepared):
        assert kept["input_ids"] == original["input_ids"]
        assert kept["labels"] == original["labels"]
    # and the collated batches carry them as is, padded with -100 (labels) / masked out (attention)
    by_ids = {tuple(r["input_ids"]): r["labels"] for r in rows}
    seen = 0
    for batch in trainer_batches(trainer):
        assert set(batch) >= {"input_ids", "labels", "attention_mask"}
        for ids_row, lab_row, mask_row in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            ids = tuple(strip_padding(ids_row, mask_row))
            assert strip_padding(lab_row, mask_row) == by_ids[ids]
            assert torch.all(lab_row[~mask_row.bool()] == IGNORE)
            seen += 1
    assert seen == len(rows)


@pytest.mark.parametrize("batch_size", [2, 4])
def test_selective_loss_equals_eq9(tmp_path, tokenizer, batch_size):
    rows = build_rows(tokenizer, SELECTED)
    trainer = make_trainer(tmp_path, tokenizer, rows, batch_size=batch_size)
    model = trainer.model
    model.train()  # as during training (dropout is 0 in Qwen2's config)
    batches = trainer_batches(trainer)
    assert len(batches) == len(rows) // batch_size
    for batch in batches:
        batch = trainer._prepare_inputs(batch)
        if batch_size > 1:  # sequences of different lengths: padding is present
            assert (batch["attention_mask"] == 0).any()
        expected, count = manual_loss(model, batch)

        loss = trainer.compute_loss(model, dict(batch))
        torch.testing.assert_close(loss.detach().float(), expected, rtol=0, atol=1e-5)

        # as the Trainer's training loop calls it: with num_items_in_batch from get_batch_samples
        _, num_items = trainer.get_batch_samples(iter([batch]), 1, trainer.args.device)
        assert num_items is not None and int(num_items) == count
        loss_n = trainer.compute_loss(model, dict(batch), num_items_in_batch=num_items)
        torch.testing.assert_close(loss_n.detach().float(), expected, rtol=0, atol=1e-5)

        # a token-level mean over the batch, not a mean of per-sequence means
        per_seq = []
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        for row_logits, row_labels in zip(logits, batch["labels"]):
            keep = row_labels[1:] != IGNORE
            per_seq.append(F.cross_entropy(row_logits[:-1][keep], row_labels[1:][keep]))
        mean_of_means = torch.stack(per_seq).mean()
        if batch_size > 1:
            assert abs(float(mean_of_means) - float(expected)) > 1e-4


def test_full_cot_loss_is_full_sequence_mean_and_differs(tmp_path, tokenizer):
    selective_rows = build_rows(tokenizer, SELECTED)
    full_rows = build_rows(tokenizer, ["all"] * len(EXAMPLES))
    model = tiny_model(tokenizer)
    trainer_sel = make_trainer(tmp_path / "sel", tokenizer, selective_rows, batch_size=4, model=model)
    trainer_full = make_trainer(tmp_path / "full", tokenizer, full_rows, batch_size=4, model=model)
    (batch_sel,) = trainer_batches(trainer_sel)
    (batch_full,) = trainer_batches(trainer_full)
    assert torch.equal(batch_sel["input_ids"], batch_full["input_ids"])

    # full-CoT labels: every token after the prompt (trace + answer + EOS)
    for row, (prompt, segments, answer) in zip(full_rows, EXAMPLES):
        _, spans = encode_example(tokenizer, prompt, segments, answer)
        n_prompt = spans[0][0]
        assert row["labels"][:n_prompt] == [IGNORE] * n_prompt
        assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]

    model.eval()
    loss_full = trainer_full.compute_loss(model, dict(batch_full))
    loss_sel = trainer_sel.compute_loss(model, dict(batch_sel))

    # full-sequence mean by hand, from the raw ids and the prompt length alone (no labels tensor)
    with torch.no_grad():
        logits = model(input_ids=batch_full["input_ids"], attention_mask=batch_full["attention_mask"]).logits.float()
    prompt_len = {}
    for prompt, segments, answer in EXAMPLES:
        ids, spans = encode_example(tokenizer, prompt, segments, answer)
        prompt_len[tuple(ids)] = spans[0][0]
    total, count = 0.0, 0
    for b in range(batch_full["input_ids"].shape[0]):  # the dataloader shuffles: identify rows by their ids
        ids = strip_padding(batch_full["input_ids"][b], batch_full["attention_mask"][b])
        for t in range(prompt_len[tuple(ids)], len(ids)):
            total += -float(torch.log_softmax(logits[b, t - 1], -1)[ids[t]])
            count += 1
    assert count == sum(len(ids) - n for ids, n in prompt_len.items())
    torch.testing.assert_close(loss_full.detach().float(), torch.tensor(total / count), rtol=0, atol=1e-5)
    torch.testing.assert_close(loss_sel.detach().float(), manual_loss(model, batch_sel)[0], rtol=0, atol=1e-5)
    assert abs(loss_full.item() - loss_sel.item()) > 1e-3


def test_trl_drops_examples_without_any_label(tmp_path, tokenizer):
    """TRL behaviour worth knowing: when ``max_length`` is set (TRL's default is 1024), dataset preparation
    filters out examples whose labels are all -100 (nothing selected); with ``max_length=None`` no
    truncation/filter step runs and such examples are kept (they then contribute 0 to the loss sum and 0
    to the token count)."""
    selection = [SELECTED[0], [], SELECTED[2], SELECTED[3]]  # example 1: no segment selected
    rows = build_rows(tokenizer, selection)
    assert all(label == IGNORE for label in rows[1]["labels"])

    trainer = make_trainer(tmp_path / "filtered", tokenizer, rows)
    prepared_ids = [r["input_ids"] for r in trainer.train_dataset]
    assert len(prepared_ids) == len(rows) - 1
    assert rows[1]["input_ids"] not in prepared_ids
    assert [r["labels"] for r in trainer.train_dataset] == [rows[i]["labels"] for i in (0, 2, 3)]

    trainer_nolimit = make_trainer(tmp_path / "kept", tokenizer, rows, max_length=None, batch_size=4)
    assert len(trainer_nolimit.train_dataset) == len(rows)
    # an all-masked example inside a batch does not change the token-level mean of the others
    (batch,) = trainer_batches(trainer_nolimit)
    model = trainer_nolimit.model.eval()
    loss = trainer_nolimit.compute_loss(model, dict(batch))
    torch.testing.assert_close(loss.detach().float(), manual_loss(model, batch)[0], rtol=0, atol=1e-5)


def test_checkpoints_each_epoch_by_default_and_they_do_not_change_the_weights(tmp_path, tokenizer):
    """save_strategy "epoch" (the default) writes a checkpoint per epoch; checkpoints never change training."""
    from segattr_utils.llm.training import TrainingExample, TrainSettings, train_sft

    assert TrainSettings().save_strategy == "epoch"
    with pytest.raises(ValueError, match="save_steps"):
        TrainSettings(save_strategy="steps")
    ids = tokenizer("Okay, so 12 + 3 = 15.", add_special_tokens=False)["input_ids"]
    examples = [TrainingExample(ids, ids)] * 8
    weights = {}
    for strategy, steps in (("epoch", None), ("steps", 3)):
        model = tiny_model(tokenizer)
        settings = TrainSettings(
            epochs=2, batch_size=4, save_strategy=strategy, save_steps=steps, logging_steps=1, learning_rate=1e-3
        )
        train_sft(model, tokenizer, examples, settings, tmp_path / strategy, seed=0)
        weights[strategy] = [p.detach().clone() for p in model.parameters()]
    # save_total_limit=1 keeps the last checkpoint: step 4 = the end of epoch 2 (2 steps per epoch)
    assert sorted(p.name for p in (tmp_path / "epoch").glob("checkpoint-*")) == ["checkpoint-4"]
    assert all(torch.equal(a, b) for a, b in zip(weights["epoch"], weights["steps"]))
