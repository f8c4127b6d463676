"""Supervised fine-tuning with TRL's SFTTrainer on pre-tokenised ``input_ids`` + ``labels`` (Sec. 2.3).

Every variant (full-CoT SFT, segment-selective SFT, the baselines of Tables 2-4) differs only in its
labels: the sequence, the schedule and the cost per step are identical. Prompt tokens are never
trained; the answer part after ``</think>`` (and the EOS token) always is.

:func:`build_training_example` (segment selection) and :func:`build_char_masked_example` (token-level
selection) tokenise the trained text; every caller reaches them through
:func:`segattr_utils.scored_trace.training_example`, which picks one from a scored trace and a variant's
selection.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..method.masking import selective_labels
from ..method.token_spans import char_spans_to_token_spans, tokenize_with_offsets
from ..progress import quiet_libraries, silence_trainer, trainer_progress

DONE_MARKER = "TRAINING_COMPLETE"

# training.sft.precision: the dtype the optimizer updates (``bf16`` separately turns on bf16 autocast)
PRECISIONS = {"fp32_master": "float32", "bf16_weights": "bfloat16"}
SAVE_DTYPES = ("float32", "bfloat16")


@dataclass
class TrainingExample:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_trained(self) -> int:
        return sum(1 for label in self.labels if label != -100)

    def truncated(self, max_length: int) -> TrainingExample:
        """The example as SFT trains it: its first ``max_length`` tokens (TRL's ``keep_start``)."""
        return TrainingExample(self.input_ids[:max_length], self.labels[:max_length])


def build_training_example(
    tokenizer,
    prompt: str,
    segments: Sequence[str],
    answer_part: str,
    selected: Sequence[int] | None = None,
    append_eos: bool = True,
) -> TrainingExample:
    """One SFT example: ``prompt + "".join(segments) + answer_part (+ EOS)``, tokenised once.

    Labels follow Eq. 9: tokens of the ``selected`` segments and of the answer part are trained,
    everything else (the prompt, unselected segments) is ``-100``. ``selected=None`` trains every
    segment (full-CoT SFT, Eq. 8). Token spans use the first-character boundary rule of
    :mod:`segattr_utils.method.token_spans`.
    """
    if not segments:
        raise ValueError("a training example needs at least one segment")
    text = prompt + "".join(segments) + answer_part
    input_ids, offsets = tokenize_with_offsets(tokenizer, text)
    char_spans, cursor = [], len(prompt)
    for seg in list(segments) + [answer_part]:
        char_spans.append((cursor, cursor + len(seg)))
        cursor += len(seg)
    spans = char_spans_to_token_spans(offsets, char_spans)
    if append_eos:
        input_ids = input_ids + [tokenizer.eos_token_id]
        spans[-1] = (spans[-1][0], spans[-1][1] + 1)
    chosen = list(range(len(segments))) if selected is None else [int(i) for i in selected]
    if any(not 0 <= i < len(segments) for i in chosen):
        raise ValueError(f"selected segments {chosen} out of range for {len(segments)} segments")
    labels = selective_labels(input_ids, spans, chosen + [len(segments)])
    return TrainingExample(input_ids=input_ids, labels=labels.tolist())


def build_char_masked_example(
    tokenizer,
    prompt: str,
    trace: str,
    answer_part: str,
    learned_chars: Sequence[tuple[int, int]],
    append_eos: bool = True,
) -> TrainingExample:
    """One SFT example whose learned trace tokens are given as character spans of the trace.

    ``prompt + trace + answer_part (+ EOS)`` is tokenised once; a trace token is trained when its first
    character lies inside one of ``learned_chars`` (half-open spans relative to the start of the
    trace), the answer part and EOS are always trained, the prompt never is. Token-level selections
    (Table 2: the top-|IG| tokens) become character spans of the tokens they chose, so they carry over
    to this tokenisation even where it differs from the attributed sequence's at the end of the trace.
    """
    learned = np.zeros(len(trace), dtype=bool)
    for start, end in learned_chars:
        if not 0 <= start <= end <= len(trace):
            raise ValueError(f"learned span ({start}, {end}) falls outside the trace of {len(trace)} characters")
        learned[start:end] = True
    text = prompt + trace + answer_part
    input_ids, offsets = tokenize_with_offsets(tokenizer, text)
    trace_start, answer_start = len(prompt), len(prompt) + len(trace)
    labels = []
    for token, (start, _) in zip(input_ids, offsets):
        if start >= answer_start:
            labels.append(token)
        elif start >= trace_start and learned[start - trace_start]:
            labels.append(token)
        else:
            labels.append(-100)
    if append_eos:
        input_ids = input_ids + [tokenizer.eos_token_id]
        labels = labels + [tokenizer.eos_token_id]
    return TrainingExample(input_ids=input_ids, labels=labels)


@dataclass
class TrainSettings:
    """The schedule shared by every variant (App. C.3).

    Precision: ``precision`` is the dtype of the weights the optimizer updates, ``bf16`` whether the
    forward and backward passes run under bf16 autocast (TrainingArguments' mixed precision).

    - ``fp32_master`` (default): weights, gradients and optimizer states in float32; with ``bf16`` the
      matrix products run in bf16. An update smaller than half a bf16 step of its weight (at lr 3e-5
      and below, on the cosine tail, many are) is kept.
    - ``bf16_weights``: the authors' setting (the model in bf16, the optimizer writing into bf16
      weights): such updates round back to the old weight and are lost. Half the memory of the weights
      and gradients (the 7B's float32 weights + gradients + 8-bit AdamW states take ~70 GB).

    ``save_dtype`` (``float32``/``bfloat16``, None: the training dtype) is the dtype the finished model
    is written in; evaluation loads it in the student's dtype either way. Under DeepSpeed with bf16,
    ZeRO keeps float32 master weights in its optimizer itself.
    """

    epochs: float = 3.0
    learning_rate: float = 1e-3
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.05
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 1024
    bf16: bool = False
    gradient_checkpointing: bool = False
    optim: str = "adamw_torch"
    save_strategy: str = "epoch"  # a checkpoint per epoch (resumable); "steps" saves every save_steps
    save_steps: int | None = None
    logging_steps: int = 20
    stop_after_epoch: float | None = None  # the authors' callback stops 10-epoch runs after epoch 9
    precision: str = "fp32_master"  # or "bf16_weights" (the authors'): see the class docstring
    save_dtype: str | None = None  # the finished model's dtype on disk (None: the training dtype)

    def __post_init__(self):
        if self.save_strategy == "steps" and not self.save_steps:
            raise ValueError("save_strategy 'steps' needs save_steps")
        if self.precision not in PRECISIONS:
            raise ValueError(f"training.sft.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.save_dtype is not None and self.save_dtype not in SAVE_DTYPES:
            raise ValueError(
                f"training.sft.save_dtype must be one of {', '.join(SAVE_DTYPES)} or null, got {self.save_dtype!r}"
            )

    @property
    def weight_dtype(self) -> str:
        """The dtype of the trained weights (``float32`` or ``bfloat16``), as ``load_causal_lm`` names it."""
        return PRECISIONS[self.precision]

    @classmethod
    def from_dict(cls, values: dict) -> TrainSettings:
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown training settings: {sorted(unknown)}")
        return cls(**values)


def StopAfterEpoch(epoch: float):
    """A TrainerCallback that ends training once ``epoch`` epochs are done (the schedule still spans
    ``num_train_epochs``, as in the authors' runs)."""
    from transformers import TrainerCallback

    class _Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.epoch is not None and state.epoch >= epoch - 1e-9:
                control.should_training_stop = True
            return control

    return _Stop()


def _latest_checkpoint(output_dir: Path) -> str | None:
    checkpoints = sorted(glob.glob(str(output_dir / "checkpoint-*")), key=lambda p: int(p.rsplit("-", 1)[-1]))
    return checkpoints[-1] if checkpoints else None


def is_trained(output_dir: str | Path) -> bool:
    return (Path(output_dir) / DONE_MARKER).exists()


def sft_config(settings: TrainSettings, output_dir: str | Path, seed: int, deepspeed: str | None = None):
    """TRL's ``SFTConfig`` for ``settings``: every value SFTConfig would default differently is set
    (SFTConfig defaults to ``bf16=True`` and ``max_length=1024``). ``bf16`` is mixed precision (autocast
    of the forward and backward passes); the weights stay in the dtype :func:`cast_to_training_dtype` gives."""
    import torch
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        warmup_steps=settings.warmup_ratio,  # a float in [0, 1) is a ratio of total steps
        lr_scheduler_type=settings.lr_scheduler_type,
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        max_length=settings.max_length,
        bf16=settings.bf16,
        # Without CUDA, transformers refuses bf16 unless told the CPU is meant (it then autocasts there).
        use_cpu=not torch.cuda.is_available(),
        # TrainingArguments' new name (`gradient_checkpointing` is its deprecated alias; TRL defaults it to True)
        activation_checkpointing=settings.gradient_checkpointing,
        optim=settings.optim,
        seed=seed,
        data_seed=seed,
        save_strategy=settings.save_strategy,
        save_steps=settings.save_steps,
        save_total_limit=1,
        logging_steps=settings.logging_steps,
        report_to="none",
        dataloader_num_workers=0,
        # pinned host memory only helps copies to a CUDA device; without one torch warns that it is unused
        dataloader_pin_memory=torch.cuda.is_available(),
        deepspeed=deepspeed,
        **trainer_progress(),  # a bar in a terminal; nothing per step in an executed notebook
    )


def cast_to_training_dtype(model, settings: TrainSettings) -> None:
    """Put ``model``'s floating-point weights in ``settings.weight_dtype`` in place: float32 master
    weights (``fp32_master``; a bf16 checkpoint widens exactly) or bf16 (``bf16_weights``)."""
    import torch

    dtype = getattr(torch, settings.weight_dtype)
    if any(p.is_floating_point() and p.dtype != dtype for p in model.parameters()):
        model.to(dtype)


def train_sft(
    model,
    tokenizer,
    examples: Sequence[TrainingExample],
    settings: TrainSettings,
    output_dir: str | Path,
    seed: int,
    deepspeed: str | None = None,
) -> dict:
    """Train ``model`` in place on ``examples`` with TRL's SFTTrainer; resumable from checkpoints.

    The final model and tokenizer are saved to ``output_dir/final`` and a completion marker is
    written last, so an interrupted run resumes from its latest checkpoint and a finished one is
    never retrained. The weights are first put in the precision's dtype (:func:`cast_to_training_dtype`:
    float32 master weights by default). Returns the training log history summary.
    """
    from datasets import Dataset
    from trl import SFTTrainer

    quiet_libraries()  # under reproduce: no bars of datasets ("Truncating train dataset") or transformers
    output_dir = Path(output_dir)
    if is_trained(output_dir):
        raise FileExistsError(f"{output_dir} already holds a finished run; load {output_dir / 'final'} instead")
    if not examples:
        raise ValueError("no training examples")
    dataset = Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels} for e in examples])
    config = sft_config(settings, output_dir, seed, deepspeed)
    cast_to_training_dtype(model, settings)
    callbacks = [StopAfterEpoch(settings.stop_after_epoch)] if settings.stop_after_epoch else None
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks
    )
    silence_trainer(trainer)
    resumed_from = _latest_checkpoint(output_dir)
    started_step = int(resumed_from.rsplit("-", 1)[-1]) if resumed_from else 0
    result = trainer.train(resume_from_checkpoint=resumed_from)
    final = output_dir / "final"
    trainer.save_model(str(final))
    tokenizer.save_pretrained(str(final))
    history = [h for h in trainer.state.log_history if "loss" in h]
    summary = {
        "steps": trainer.state.global_step,
        "final_loss": history[-1]["loss"] if history else math.nan,
        "mean_train_loss": float(result.metrics.get("train_loss", math.nan)),
        "settings": asdict(settings),
        "seed": seed,
        "n_examples": len(examples),
        "n_trained_tokens": int(sum(e.n_trained for e in examples)),
        "n_tokens": int(sum(len(e.input_ids) for e in examples)),
        "train_runtime": float(result.metrics.get("train_runtime", math.nan)),
        "steps_this_session": trainer.state.global_step - started_step,
    }
    (output_dir / DONE_MARKER).write_text("done\n")
    return summary
