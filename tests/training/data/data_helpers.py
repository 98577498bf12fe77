"""Synthetic corpora for the data pipeline tests (deterministic; tests never download data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: characters outside ASCII, so byte fallback and multi-byte UTF-8 are exercised
_EXTRA = ["é", "ß", "中文", "ü", "→", "😀", "\t", "  "]


def make_documents(count: int, seed: int = 0, words: int = 300) -> list[str]:
    """Deterministic pseudo-text: words from a fixed random lexicon, lines, indentation, unicode."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lexicon = ["".join(rng.choice(letters, size=rng.integers(2, 9))) for _ in range(words)]
    probs = 1.0 / np.arange(1, words + 1)
    probs /= probs.sum()
    docs = []
    for _ in range(count):
        lines = []
        for _ in range(int(rng.integers(1, 8))):
            chosen = rng.choice(words, size=int(rng.integers(3, 25)), p=probs)
            line = " ".join(lexicon[i] for i in chosen)
            if rng.random() < 0.3:
                line = "    " + line + " " + _EXTRA[int(rng.integers(len(_EXTRA)))]
            lines.append(line + rng.choice([".", ",", ":", "", "!"]))
        docs.append("\n".join(lines))
    return docs


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i, doc in enumerate(docs):
            f.write(json.dumps({field: doc, "id": i}, ensure_ascii=False) + "\n")
    return path


#: a multilingual text with code, digits, whitespace runs and emoji (tokenizer round trips)
MULTILINGUAL = (
    "The quick brown fox, 1234567 and 89.\nDer Fuß ist groß; déjà vu à Paris.\n"
    "中文文本测试，日本語のテキスト，한국어 문장. Ελληνικά, русский текст, العربية, हिन्दी.\n"
    "def f(x):\n\treturn x  **  2   # spaces\n😀 → ∑ <|endoftext|> </s>"
)


def write_hf_bpe_tokenizer(
    out: Path, texts: list[str], vocab_size: int = 400, eos: str = "<|endoftext|>", pad: str | None = "<|pad|>"
) -> Path:
    """A byte-level BPE ``tokenizer.json`` (GPT-2 / Llama-3 style) trained offline with the
    ``tokenizers`` library on ``texts`` and saved as transformers does (``tokenizer.json`` +
    ``tokenizer_config.json``). ``eos=None`` names no end-of-text token."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = [t for t in ("<|endoftext|>", pad) if t]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    names = {"eos_token": eos} if eos else {}
    if pad:
        names["pad_token"] = pad
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **names)
    fast.save_pretrained(str(out))
    return out
