"""segattr_utils: segment-level attribution for selective learning of long reasoning traces.

The package, grouped by concept (the README draws the tree):

- :mod:`.method`    Sec. 2: segmentation, token spans, quadrature, IG attribution (and its cost), importance (Eq. 3-7), masking (Eq. 9)
- :mod:`.measures`  Sec. 3, App. A-B: confidence Δ, linguistics, position, the truncation judge, redundancy
- :mod:`.llm`       loading models, generation, grading, SFT training, the variant registry, evaluation
- :mod:`.data`      question sets (LIMO, the benchmarks)
- :mod:`.world`     the tiny reasoning world, its tokenizer and model
- :mod:`.stages`    one module per notebook: ``stageNN_name.run(profile) -> StageResult``
- :mod:`.report`    figures, the segment viewer, the paper-vs-run table
- :mod:`.dag`, :mod:`.services`, :mod:`.config`, :mod:`.artifacts`: data flow, shared services, profiles, files

The names below are the library's public API (Sec. 2 of the paper, usable without the pipeline):
:func:`score_trace` goes from (model, tokenizer, question, output, gold answer) to a :class:`ScoredTrace`,
and :func:`training_example` from a scored trace to TRL-ready ``input_ids``, ``labels`` and
``completion_mask`` (:mod:`.scored_trace`); the step-by-step functions are below it.
"""

from .method.attribution import Attribution, CompletenessWarning, DegenerateBaselineWarning, token_attributions
from .method.ig_cost import IGCost, estimate_ig_cost
from .method.importance import (
    AGGREGATIONS,
    always_keep_indices,
    segment_consistency,
    segment_scores,
    segment_strength,
    select_important,
    top_strength_segments,
)
from .method.masking import selective_labels
from .method.quadrature import METHODS, quadrature_rule
from .method.segmentation import DEFAULT_KEYWORDS, RETRO_SEARCH_KEYWORDS, segment, segment_char_spans
from .method.token_spans import (
    DEFAULT_ANSWER_SUFFIX,
    AttributionSequence,
    build_attribution_sequence,
    char_span_to_covering_tokens,
    char_spans_to_token_spans,
)
from .scored_trace import (
    AttributionOutOfMemoryError,
    OverLengthError,
    ScoredTrace,
    TraceFormatError,
    score_trace,
    training_example,
)

__all__ = [
    "AGGREGATIONS",
    "Attribution",
    "AttributionOutOfMemoryError",
    "AttributionSequence",
    "CompletenessWarning",
    "DEFAULT_ANSWER_SUFFIX",
    "DEFAULT_KEYWORDS",
    "DegenerateBaselineWarning",
    "IGCost",
    "METHODS",
    "OverLengthError",
    "RETRO_SEARCH_KEYWORDS",
    "ScoredTrace",
    "TraceFormatError",
    "always_keep_indices",
    "build_attribution_sequence",
    "char_span_to_covering_tokens",
    "char_spans_to_token_spans",
    "estimate_ig_cost",
    "quadrature_rule",
    "score_trace",
    "segment",
    "segment_char_spans",
    "segment_consistency",
    "segment_scores",
    "segment_strength",
    "select_important",
    "selective_labels",
    "token_attributions",
    "top_strength_segments",
    "training_example",
]

__version__ = "0.1.0"
