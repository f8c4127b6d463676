"""A locally built byte-level BPE tokenizer with Qwen2's pre-tokenisation (for the tiny world and tests).

The tokenizer is trained with the ``tokenizers`` library, so nothing is downloaded. It uses Qwen2's
split regex (".\\n\\n" stays one pre-token, as in the real models, so segment boundaries can fall
inside a token) and R1-style special tokens. Load a saved one with :func:`load_tokenizer`:
``AutoTokenizer`` on a folder holding a Qwen2 ``config.json`` swaps in Qwen's own tokenizer class.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

#: Qwen2's pre-tokeniser pattern (tokenizer.json of the Qwen2/R1-Distill-Qwen models).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
USER, ASSISTANT = "<｜User｜>", "<｜Assistant｜>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, USER, ASSISTANT)
ADDED_TOKENS: tuple[str, ...] = (THINK_OPEN, THINK_CLOSE)

#: A minimal R1-style chat template: BOS, the user turn, the assistant turn opening with "<think>\n".
R1_STYLE_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)


def build_bpe_tokenizer(
    corpus: Iterable[str],
    vocab_size: int = 512,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
    added_tokens: Sequence[str] = ADDED_TOKENS,
    chat_template: str = R1_STYLE_CHAT_TEMPLATE,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``corpus`` and wrap it as a fast HF tokenizer.

    Deterministic for a given corpus and vocabulary size. BOS/EOS are the first two special tokens;
    the pad token is EOS, as in the R1-Distill-Qwen tokenizers.
    """
    if vocab_size < 256 + len(special_tokens) + len(added_tokens):
        raise ValueError(f"vocab_size {vocab_size} is below the 256 byte symbols plus special tokens")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(corpus), trainer=trainer)
    core.add_tokens(list(added_tokens))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=special_tokens[0],
        eos_token=special_tokens[1],
        pad_token=special_tokens[1],
        additional_special_tokens=list(special_tokens[2:]),
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved by :func:`build_bpe_tokenizer` (explicitly, never via ``AutoTokenizer``)."""
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {path}")
    return PreTrainedTokenizerFast.from_pretrained(str(path))
