"""segattr_utils: segment-level attribution for selective learning of long reasoning traces.

The pipeline of the paper, one concept per module:

- :mod:`.segmentation`  split a trace at transition keywords (Sec. 2.1, App. C.2)
- :mod:`.token_spans`   segment/answer token spans from one tokenisation (offsets)
- :mod:`.attribution`   integrated gradients of the answer log-probability (Eq. 1-2)
- :mod:`.quadrature`    path points and weights of the IG integral
- :mod:`.importance`    strength, consistency, normalised strength, selection (Eq. 3-7)
- :mod:`.masking`       selective-SFT labels (Eq. 9)
- :mod:`.tokenizer`     a locally built byte-level BPE tokenizer (tiny world, tests)
"""

from .method.attribution import Attribution, DegenerateBaselineWarning, token_attributions
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

__all__ = [
    "AGGREGATIONS",
    "Attribution",
    "AttributionSequence",
    "DEFAULT_ANSWER_SUFFIX",
    "DEFAULT_KEYWORDS",
    "DegenerateBaselineWarning",
    "METHODS",
    "RETRO_SEARCH_KEYWORDS",
    "always_keep_indices",
    "build_attribution_sequence",
    "char_span_to_covering_tokens",
    "char_spans_to_token_spans",
    "quadrature_rule",
    "segment",
    "segment_char_spans",
    "segment_consistency",
    "segment_scores",
    "segment_strength",
    "select_important",
    "selective_labels",
    "token_attributions",
    "top_strength_segments",
]

__version__ = "0.1.0"
