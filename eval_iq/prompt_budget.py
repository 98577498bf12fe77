"""How long a prompt may be, estimated without a tokenizer (symbolic mapping's demonstrations).

The project's models are trained with ``seq_length: 2048`` and both evaluation backends keep only
the last ``max_length`` tokens of a prompt, so a longer prompt silently loses its first
demonstrations (and with them part of the label -> symbol mapping). Instances are generated
without knowing the tokenizer, so the generator keeps every prompt within
:data:`PROMPT_TOKEN_BUDGET` *estimated* tokens (:func:`estimate_tokens`), leaving room for the
answer and special tokens in 2048. Whether a run's prompts really fit its tokenizer is measured
after the run (:mod:`eval_iq.truncation`) and reported.
"""

from __future__ import annotations

import math

#: estimated tokens a prompt may use: 2048 (the project's seq_length) minus room for the answer,
#: special tokens and estimation error
PROMPT_TOKEN_BUDGET = 1800
#: ASCII characters per token assumed: English BPE tokenizers of 32k-50k pieces average about 4
#: characters per token on prose; 3 leaves a margin for digits, punctuation and rare words
ASCII_CHARS_PER_TOKEN = 3
#: tokens assumed per non-ASCII character (CJK): English-centric byte-level BPEs of ~50k pieces
#: (GPT-2, SmolLM) spend 1-3 tokens on a Chinese character (its UTF-8 bytes), about 2 on average;
#: tokenizers trained on Chinese (GLM, Qwen) spend 1 or less
NON_ASCII_TOKENS_PER_CHAR = 2


def estimate_tokens(text: str) -> int:
    """A tokenizer-independent, deliberately high estimate of ``text``'s token count."""
    non_ascii = sum(1 for c in text if ord(c) > 127)
    return math.ceil((len(text) - non_ascii) / ASCII_CHARS_PER_TOKEN) + NON_ASCII_TOKENS_PER_CHAR * non_ascii
