"""The profile schema: every setting's type, default, allowed range and meaning, declared once.

:func:`segattr_utils.config.load_profile` checks each profile file's keys against :class:`ProfileSchema`
(an unknown key is an error naming the file and the nearest valid name), then validates the profile
merged with its ``base`` chain (types, ranges, required settings) and fills in the defaults of the
settings it leaves out, so the code reads every setting without a default of its own. The values a file
sets are kept as written (``epochs: 5`` stays an int); validation only checks them.

Three kinds of field:

- required (no default): the profile (or its base) must set it;
- with a default: filled in when the profile leaves it out;
- *optional* (:func:`optional`): left out of the profile when unset, because its absence means
  something to its reader: a training section's unset keys take :class:`segattr_utils.llm.training.
  TrainSettings`' defaults (and a ``two_stage`` stage overrides only the keys it sets), and the world-only
  sections (``models.architecture``, ``judge.model``) are absent from hub profiles.

Open mappings (any key accepted, by design): ``models.architecture`` and ``judge.model.architecture``
(keyword arguments of ``transformers.Qwen2Config``), the extra keys of ``generation.vllm`` (keyword
arguments of ``vllm.LLM``: the engine has dozens), and the ``fields`` / ``choices`` column maps of a data
set or benchmark (their keys are the data set's own column roles).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Marks a field that is left out of the validated profile when the profile does not set it.
OMIT_UNSET = "omit_unset"

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Share = Annotated[float, Field(gt=0, le=1)]
Auto = Literal["auto"]
Dtype = Literal["float32", "float16", "bfloat16"]
Source = Literal["self", "reference"]


def optional(description: str, **constraints: Any) -> Any:
    """A field left out of the validated profile unless the profile sets it."""
    return Field(default=None, description=description, json_schema_extra={OMIT_UNSET: True}, **constraints)


class Section(BaseModel):
    """A profile section: unknown keys are errors; values are checked without coercion."""

    model_config = ConfigDict(extra="forbid", strict=True)


class OpenSection(Section):
    """A section whose extra keys are passed on to a library (named in its description)."""

    model_config = ConfigDict(extra="allow", strict=True)


# --------------------------------------------------------------------------------------------- world


class Arithmetic(Section):
    """``world.arithmetic``: number ranges (defaults: :class:`segattr_utils.world.Arithmetic`)."""

    max_value: PositiveInt | None = optional("largest intermediate value of a chain")
    max_operand: PositiveInt | None = optional("largest add/subtract operand")
    start_min: PositiveInt | None = optional("smallest start value")
    start_max: PositiveInt | None = optional("largest start value")
    multipliers: list[Annotated[int, Field(ge=2)]] | None = optional("the multipliers a chain may use")


class Misconception(Section):
    """``world.pretrain_misconception``: the pretraining teacher's systematic slip
    (defaults: :class:`segattr_utils.world.Misconception`)."""

    op: Literal["add", "subtract", "multiply"] | None = optional("the operation the teacher gets wrong")
    operand: int | None = optional("the operand it gets wrong (null: any)")
    rate: Annotated[float, Field(ge=0, le=1)] | None = optional("probability of the slip on such a step")
    offset: int | None = optional("what the slip adds to the true result (not 0)")


class Rates(Section):
    """``world.rates``: per-step probabilities of each segment kind in teacher traces."""

    repetition: Annotated[float, Field(ge=0, le=1)] = Field(description="a segment repeating an earlier one")
    truncated: Annotated[float, Field(ge=0, le=1)] = Field(description="a segment that breaks off")
    superficial: Annotated[float, Field(ge=0, le=1)] = Field(description="a segment that adds nothing")
    wrong_exploration: Annotated[float, Field(ge=0, le=1)] = Field(description="a wrong step, then corrected")
    segment_step: Annotated[float, Field(ge=0, le=1)] = Field(description="a step split over two segments")
    verification: Annotated[float, Field(ge=0, le=1)] = Field(description="a verification segment")


class World(Section):
    """``world``: the tiny synthetic arithmetic world (kind ``world`` only; ``null`` for hub profiles)."""

    seed: int | None = Field(None, description="the world's own seed (questions, teacher traces); null: the profile's")
    tokenizer_vocab_size: PositiveInt = Field(description="vocabulary size of the world's BPE tokenizer")
    n_pretrain: PositiveInt = Field(description="teacher traces that pretrain the base model")
    pretrain_ops: list[PositiveInt] = Field(description="chain lengths of the pretraining questions")
    n_train: PositiveInt = Field(description="training questions (LIMO's role)")
    train_ops: list[PositiveInt] = Field(description="chain lengths of the training questions")
    train_from_pretrain: bool = Field(False, description="draw the training questions from the pretraining ones")
    n_test_id: PositiveInt = Field(description="in-domain test questions")
    test_id_ops: list[PositiveInt] = Field(description="chain lengths of the in-domain tests")
    n_test_ood: PositiveInt = Field(description="out-of-domain test questions")
    test_ood_ops: list[PositiveInt] = Field(description="chain lengths of the out-of-domain tests")
    arithmetic: Arithmetic | None = optional("number ranges (unset: single-digit values)")
    pretrain_misconception: Misconception | None = Field(None, description="the weak teacher's slip; null: none")
    rates: Rates = Field(description="per-step probabilities of each segment kind")


# --------------------------------------------------------------------------------------------- data


class DataSet(Section):
    """A question set on the hub or on disk (``data.train``)."""

    hub_id: str = Field(description="Hugging Face dataset id")
    config: str | None = optional("dataset configuration name")
    split: str | None = optional("split to read (unset: train)")
    local_path: str | None = Field(None, description="a .jsonl/.json/.parquet file or saved dataset folder instead")
    fields: dict[str, str] | None = optional("column of each role (open mapping: question, solution, answer, ...)")


class Traces(Section):
    """``data.traces``: R1 outputs one already has, read by notebook 01 instead of generating
    (defaults: :class:`segattr_utils.data.traces.TraceSettings`)."""

    path: str | None = optional("a local file or saved dataset folder")
    hub_id: str | None = optional("a Hugging Face dataset id")
    split: str | None = optional("split to read (unset: train)")
    config: str | None = optional("dataset configuration name")
    fields: dict[str, str | None] | None = optional("column of each field (question, output, answer, id, ...)")
    outputs: Literal["single", "first", "all"] | None = optional("which outputs of a row are traces")
    output_index: NonNegativeInt | None = optional("the output of each row to read")
    require_think_close: bool | None = optional("skip outputs without </think> (unset: true)")
    on_invalid: Literal["error", "skip"] | None = optional("what an invalid row does (unset: error)")


class Data(Section):
    """``data``: the training questions (hub profiles) and imported traces."""

    train: DataSet | None = optional("the training questions (hub profiles; the world writes its own)")
    traces: Traces | None = Field(None, description="imported traces instead of stage 01's sampling; null: sample")


# --------------------------------------------------------------------------------------------- models


class ModelSpec(Section):
    """One model role (``models.generator``, ``.student``, ``.judge``)."""

    id: str = Field(description="hub id (or the world model's name)")
    local_path: str | None = Field(None, description="a downloaded copy instead of the hub's")
    dtype: Dtype | None = Field(None, description="weights dtype; null: float32 for world, bfloat16 for hub profiles")
    device_map: str | None = Field(None, description='"auto": one copy over every visible GPU; null: one device')


class TrainSection(Section):
    """A training schedule (``training.sft``, ``models.base_training``, ``judge.model.training``, a
    ``training.two_stage`` stage). Unset keys take :class:`segattr_utils.llm.training.TrainSettings`'
    defaults; a ``two_stage`` stage overrides only the keys it sets."""

    epochs: Annotated[float, Field(gt=0)] | None = optional("epochs of the schedule")
    learning_rate: Annotated[float, Field(gt=0)] | None = optional("peak learning rate")
    batch_size: PositiveInt | None = optional("sequences per device per step")
    gradient_accumulation_steps: PositiveInt | None = optional("steps accumulated per update")
    warmup_ratio: Annotated[float, Field(ge=0, le=1)] | None = optional("share of the steps spent warming up")
    lr_scheduler_type: str | None = optional("transformers scheduler name (cosine, linear, ...)")
    weight_decay: Annotated[float, Field(ge=0)] | None = optional("AdamW weight decay")
    max_grad_norm: Annotated[float, Field(gt=0)] | None = optional("gradient clipping norm")
    max_length: PositiveInt | None = optional("longest training sequence (tokens)")
    bf16: bool | None = optional("bf16 autocast of the forward and backward passes")
    gradient_checkpointing: bool | None = optional("recompute activations in the backward pass")
    optim: str | None = optional("transformers optimizer name (adamw_torch, adamw_bnb_8bit, ...)")
    save_strategy: Literal["epoch", "steps", "no"] | None = optional("when checkpoints are written")
    save_steps: PositiveInt | None = optional("steps between checkpoints (save_strategy steps)")
    logging_steps: PositiveInt | None = optional("steps between loss logs")
    stop_after_epoch: Annotated[float, Field(gt=0)] | None = optional("stop after this epoch (null: run all)")
    precision: Literal["fp32_master", "bf16_weights"] | None = optional("dtype of the weights the optimizer updates")
    save_dtype: Literal["float32", "bfloat16"] | None = optional("dtype the finished model is written in")


class Models(Section):
    """``models``: the generator (traces, IG), the student (SFT) and the judge (notebook 07)."""

    generator: ModelSpec = Field(description="writes and attributes the traces (R1-Distill-Qwen-7B)")
    student: ModelSpec | None = optional("the model every SFT variant fine-tunes (world: the generator)")
    judge: ModelSpec | None = optional("the truncated-segment judge of notebook 07 (world: trained by notebook 07)")
    architecture: dict[str, Any] | None = optional(
        "world only: the tiny generator's Qwen2Config (open mapping: Qwen2Config keyword arguments)"
    )
    base_training: TrainSection | None = optional("world only: pretraining of the tiny generator")


# --------------------------------------------------------------------------------------------- generation


class Vllm(OpenSection):
    """``generation.vllm``: ``vllm.LLM`` engine settings. Open mapping: keys not named here are passed to
    ``vllm.LLM`` as they are (the engine takes dozens); unset keys take vLLM's or
    :mod:`segattr_utils.llm.vllm_parallel`'s defaults."""

    tensor_parallel_size: PositiveInt | Auto | None = optional("GPUs per engine; auto: the smallest that fits")
    data_parallel_size: PositiveInt | Auto | None = optional("engines at once; auto: visible GPUs // TP")
    max_model_len: PositiveInt | None = optional("prompt + output tokens per request")
    gpu_memory_utilization: Share | None = optional("share of each GPU for weights + KV cache")
    enable_prefix_caching: bool | None = optional("share a prompt's KV cache between its requests")
    seed: int | None = optional("the engine's default seed")
    batch_invariant: bool | None = optional("VLLM_BATCH_INVARIANT=1: logits independent of the batch (unset: false)")


class Generation(Section):
    """``generation``: sampling of the traces (stage 01, Sec. 4.1)."""

    backend: Literal["auto", "hf", "vllm"] = Field(description="auto: vLLM when installed, else Hugging Face")
    n_samples: PositiveInt = Field(description="samples per question")
    temperature: Annotated[float, Field(ge=0)] = Field(description="sampling temperature")
    top_p: Share = Field(description="nucleus sampling mass")
    max_new_tokens: PositiveInt = Field(description="longest trace (tokens)")
    batch_size: PositiveInt = Field(description="prompts per generate call (Hugging Face backend)")
    eval_limit: NonNegativeInt | None = optional("not read by any stage (evaluation.limit caps the test questions)")
    vllm_chunk_requests: PositiveInt = Field(2048, description="vLLM requests per engine per call (stored per chunk)")
    vllm: Vllm = Field(default_factory=Vllm, description="vllm.LLM engine settings (open mapping)")


class Segmentation(Section):
    keywords: Literal["default", "retro_search"] = Field(description="transition words (App. C.2; Table 7)")


# --------------------------------------------------------------------------------------------- attribution


class Sensitivity(Section):
    n_traces: NonNegativeInt = Field(0, description="traces recomputed with other J (0: off)")
    n_steps: list[PositiveInt] = Field(default_factory=list, description="the other J of the recomputation")


class Attribution(Section):
    """``attribution``: segment-level IG (Eq. 2-5, stage 03)."""

    method: Literal["gausslegendre", "official"] = Field(description="quadrature; official: J points, weight 1/J")
    n_steps: PositiveInt = Field(description="J, path points of the IG integral")
    sensitivity: Sensitivity | None = Field(None, description="recompute a sample with other J (null: off)")
    internal_batch_size: PositiveInt | Auto = Field(description="path points per pass; auto: the cost estimator's")
    activation_checkpointing: bool | Auto = Field(description="recompute decoder layers in the backward pass")
    memory_budget_gb: Annotated[float, Field(gt=0)] | None = Field(None, description="cap on what auto may use (GB)")
    retry_skipped: bool = Field(False, description="a resumed run retries traces skipped before")
    processes: PositiveInt | Auto = Field(1, description="IG processes (accelerate launch); auto: visible GPUs")
    threads_per_process: PositiveInt | None = Field(None, description="torch threads per process; null: cores / n")
    baseline: str | NonNegativeInt = Field(description="IG baseline token: pad, a token id or a token string")
    answer_suffix: str = Field(description="the answer appended to every trace ({answer}: the gold answer)")
    max_length: PositiveInt | None = Field(None, description="longest trace attributed (tokens); null: no cap")
    attribute_incorrect: bool = Field(True, description="attribute incorrect traces too (Fig. 1's CDF)")
    flag_relative_delta: Annotated[float, Field(ge=0)] = Field(description="completeness error that flags a trace")


class Selection(Section):
    """``selection``: which segments selective SFT trains on (Eq. 6-7)."""

    tau: Share = Field(description="selection.tau: which segments selective SFT trains on (Eq. 6-7): strength mass")
    beta: Share = Field(description="selection.beta: which segments selective SFT trains on (Eq. 6-7): consistency")
    aggregation: Literal["sqrt_len", "sum", "top20_mean"] = Field(description="token scores -> segment strength")
    always_keep: Literal["first_last", "official", "none"] = Field(description="segments kept whatever their score")


# --------------------------------------------------------------------------------------------- analysis


class Confidence(Section):
    """``analysis.confidence``: answers forced after each prefix (Sec. 3.1 finding 1)."""

    n_samples: PositiveInt = Field(description="sampled answers per prefix")
    temperature: Annotated[float, Field(ge=0)] = Field(description="sampling temperature")
    top_p: Share = Field(description="nucleus sampling mass")
    max_new_tokens: PositiveInt = Field(description="tokens of a forced answer")
    batch_size: PositiveInt = Field(description="prefixes per batch")
    answer_lead_in: str = Field(description="text that forces the answer after a prefix")
    sampler: Literal["shared_prefix", "generator"] = Field(description="shared_prefix: one cache per prefix (HF)")


class Linguistics(Section):
    """``analysis.linguistics``: Sec. 3.1 findings 2-3 and the removal perplexity (Table 3)."""

    batch_size: PositiveInt = Field(description="sequences per forward pass of the removal perplexity")
    processes: PositiveInt | Auto = Field(1, description="processes (accelerate launch); auto: visible GPUs")
    threads_per_process: PositiveInt | None = Field(None, description="torch threads per process; null: cores / n")
    include_incorrect: bool = Field(description="also measure incorrect traces")
    bleu_reference: Literal["segments", "concatenation"] = Field(description="BLEU references of a segment")


class Faithfulness(Section):
    """``analysis.faithfulness``: deletion/insertion of whole segments (notebook 06, beyond the paper)."""

    enabled: bool = Field(description="measure faithfulness at all")
    n_traces: PositiveInt | None = Field(description="a seeded sample of N correct traces; null: every one")
    budgets: Annotated[list[Share], Field(min_length=1)] = Field(description="shares of the trace tokens")
    aopc_steps: PositiveInt | None = Field(description="AOPC over the first min(aopc_steps, n) steps; null: all")
    normalised_min_gap: Annotated[float, Field(ge=0)] = Field(description="nats |F_0 - F_n| the areas need")
    random_seed: NonNegativeInt = Field(description="seed of the random orderings and the sample")
    batch_size: PositiveInt = Field(description="masked sequences per forward pass")
    curve_grid_points: Annotated[int, Field(ge=2)] = Field(description="token-fraction grid of the mean curves")


class Analysis(Section):
    """``analysis``: notebooks 04-07 (Sec. 3, App. A-B)."""

    confidence: Confidence
    groups_tau: Share = Field(
        description="analysis.groups_tau: the important/unimportant groups of the analyses (Figs. 2-3, notebook 07)"
    )
    groups_beta: Share = Field(
        description="analysis.groups_beta: the important/unimportant groups of the analyses (Figs. 2-3, notebook 07)"
    )
    tau_grid: Annotated[list[Share], Field(min_length=1)] = Field(description="Sec. 3.2 greedy tau search (Fig. 4)")
    beta_grid: Annotated[list[Share], Field(min_length=1)] = Field(description="beta ablation under tau*")
    bleu_threshold: Annotated[float, Field(ge=0, le=1)] = Field(description='BLEU of "highly repetitive" segments')
    cdf_mass: Share = Field(description="attribution mass of Fig. 1's segment share")
    cdf_grid_points: Annotated[int, Field(ge=2)] = Field(description="percentage grid of the averaged CDF")
    cdf_interpolation: Literal["linear", "step"] = Field(description="per-trace CDF between segment points")
    linguistics: Linguistics
    viewer_examples: NonNegativeInt = Field(description="traces rendered by the segment viewer (Fig. 1 left)")
    faithfulness: Faithfulness


# --------------------------------------------------------------------------------------------- judge


class JudgeSampling(Section):
    """A judge round's decoding (App. B)."""

    temperature: Annotated[float, Field(ge=0)] = Field(description="sampling temperature")
    top_p: Share = Field(description="nucleus sampling mass")
    max_new_tokens: PositiveInt = Field(description="token budget of the round")
    repetition_penalty: Annotated[float, Field(gt=0)] = Field(description="repetition penalty")


class JudgeModel(Section):
    """``judge.model``: the tiny judge trained by notebook 07 (world profiles)."""

    tokenizer_vocab_size: PositiveInt = Field(description="vocabulary of the judge's own BPE tokenizer")
    round2_share: Annotated[float, Field(ge=0, le=1)] = Field(description="share of round-2 training examples")
    architecture: dict[str, Any] = Field(description="the judge's Qwen2Config (open mapping: its keyword arguments)")
    training: TrainSection = Field(description="the judge's training schedule")


class Judge(Section):
    """``judge``: notebook 07's truncated-segment judge (App. B)."""

    round1: JudgeSampling
    round2: JudgeSampling
    enable_thinking: bool = Field(description="the chat template's thinking switch")
    batch_size: PositiveInt = Field(description="prompts per batch")
    few_shot: bool = Field(description="task description + few-shot examples")
    max_segment_chars: PositiveInt | None = Field(None, description="longer segments are clipped; null: whole")
    n_training_triples: PositiveInt | None = optional("world only: training examples of the tiny judge")
    model: JudgeModel | None = optional("world only: the tiny judge")


# --------------------------------------------------------------------------------------------- training


class TwoStage(Section):
    stage1: TrainSection = Field(description="full-CoT stage: overrides of training.sft")
    stage2: TrainSection = Field(description="the variant's stage: overrides of training.sft")


class Training(Section):
    """``training``: notebook 08, selective SFT and its comparisons (Sec. 4, App. C.3-C.4)."""

    sources: Annotated[list[Source], Field(min_length=1)] = Field(["self"], description="supervision sources")
    main_seeds: Annotated[list[int], Field(min_length=1)] = Field(description="seeds of Table 1's runs")
    ablation_seeds: list[int] | None = Field(None, description="seeds of the other variants; null: main_seeds")
    ablation_source: Source | None = Field(None, description="source of Tables 2-4, 7, Fig. 5; null: sources[0]")
    table7_source: Source | None = Field(None, description="source of Table 7; null: ablation_source")
    tables: list[str] = Field(default_factory=list, description='tables besides Table 1 ("2", "3", "4", "7", "fig5")')
    tau_sweep: list[Share] = Field(default_factory=list, description="Fig. 5 right: selection.tau values")
    beta_sweep: list[Share] = Field(default_factory=list, description="Fig. 5 left: selection.beta values")
    random_segment_share: Share = Field(0.33, description="Table 2: share of random segments")
    token_share: Share = Field(0.45, description="Table 2: top share of tokens by |IG| / signed IG")
    prune_token_share: Annotated[float, Field(gt=0, lt=1)] = Field(0.30, description="Table 4: tokens pruned")
    schedule: Literal["one_stage", "two_stage"] = Field("one_stage", description="two_stage: full CoT first")
    launcher: Literal["inprocess", "processes", "per_gpu", "accelerate"] = Field(
        "inprocess", description="how the runs are started"
    )
    processes: PositiveInt | Auto = Field(1, description="processes of the processes launcher")
    threads_per_process: PositiveInt | None = Field(None, description="torch threads per process; null: cores / n")
    gpus: PositiveInt | None = Field(None, description="GPUs of the per_gpu launcher; null: every visible GPU")
    accelerate_config: str | None = Field(None, description="accelerate config of the accelerate launcher")
    deepspeed_config: str | None = Field(None, description="DeepSpeed config of the accelerate launcher")
    sft: TrainSection = Field(description="the schedule every variant and seed shares (App. C.3)")
    two_stage: TwoStage | None = optional("the two stages of schedule two_stage (App. C.3)")


# --------------------------------------------------------------------------------------------- evaluation


class Benchmark(Section):
    """One benchmark of ``evaluation.benchmarks`` (hub profiles)."""

    name: str = Field(description="the benchmark's name in the tables")
    domain: Literal["in", "out"] = Field(description="in- or out-of-domain")
    hub_id: str = Field(description="Hugging Face dataset id")
    config: str | None = optional("dataset configuration name")
    split: str | None = optional("split to read (unset: train)")
    local_path: str | None = Field(None, description="a local copy instead of the hub's")
    fields: dict[str, str] | None = optional("column of each role (open mapping: question, answer, context, ...)")
    choices: dict[str, Any] | None = optional("multiple-choice columns (open mapping: question, correct, incorrect)")
    n_samples: PositiveInt | None = optional("sampled answers per question; unset: evaluation.n_samples")


class Evaluation(Section):
    """``evaluation``: notebook 09 (Sec. 4.1)."""

    backend: Literal["auto", "hf", "vllm"] = Field("hf", description="auto: vLLM when installed")
    n_samples: PositiveInt = Field(description="sampled answers per question")
    ks: Annotated[list[PositiveInt], Field(min_length=1)] = Field([1], description="k of pass@k")
    temperature: Annotated[float, Field(ge=0)] = Field(description="sampling temperature")
    top_p: Share = Field(description="nucleus sampling mass")
    max_new_tokens: PositiveInt = Field(description="longest answer (tokens)")
    batch_size: PositiveInt = Field(description="prompts per batch")
    processes: PositiveInt | Auto = Field(1, description="processes (Hugging Face backend); auto: visible GPUs")
    threads_per_process: PositiveInt | None = Field(None, description="torch threads per process; null: cores / n")
    limit: PositiveInt | None = Field(None, description="questions per suite; null: every one")
    overall: Annotated[list[str], Field(min_length=1)] = Field(description='suites averaged into "overall"')
    benchmarks: list[Benchmark] | None = optional("hub profiles: the benchmarks (world: test_id, test_ood)")


class Robustness(Section):
    """``robustness``: make robustness, the noise floor of the headline numbers."""

    seeds: list[int] = Field(description="seeds of the extra draws")
    results_root: str | None = Field(None, description="where the draws go; null: results/robustness")


# --------------------------------------------------------------------------------------------- profile


class ProfileSchema(Section):
    """A whole profile, after its ``base`` chain is merged."""

    name: str = Field(description="the profile's name: its results go to results/<name>/")
    seed: int = Field(description="the run's seed")
    kind: Literal["world", "hub"] = Field(description="world: tiny synthetic world; hub: real models")
    upstream: str | None = Field(None, description="the profile whose traces this one trains on (a student)")
    results_root: str | None = Field(None, description="folder of results/<name>/; null: the project's results/")
    world: World | None = Field(description="the synthetic world (kind world); null for hub profiles")
    data: Data = Field(
        default_factory=lambda: Data.model_validate({}), description="training questions and imported traces"
    )
    models: Models
    generation: Generation
    segmentation: Segmentation
    attribution: Attribution
    selection: Selection
    analysis: Analysis
    judge: Judge
    training: Training
    evaluation: Evaluation
    robustness: Robustness | None = optional("make robustness; unset: off for this profile")

    @model_validator(mode="after")
    def _kind(self) -> ProfileSchema:
        if self.kind == "world":
            if self.world is None:
                raise ValueError("world: a profile of kind world needs a world section")
            if self.models.architecture is None or self.models.base_training is None:
                raise ValueError("models: a profile of kind world needs models.architecture and models.base_training")
        if self.training.schedule == "two_stage" and self.training.two_stage is None:
            raise ValueError("training.two_stage: schedule two_stage needs training.two_stage.stage1 and stage2")
        if self.kind == "hub" and (self.models.student is None or self.models.judge is None):
            raise ValueError("models: a profile of kind hub needs models.student and models.judge")
        if self.kind == "hub" and self.evaluation.benchmarks is None:
            raise ValueError("evaluation.benchmarks: a profile of kind hub needs its benchmarks")
        return self
