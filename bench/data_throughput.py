"""Data pipeline throughput: `flm data prepare` vs a plain encode loop, loader vs a training step.

Usage:  .venv/bin/python bench/data_throughput.py [--workers 2] [--copies 4] [--vocab-size 8192] [--repeats 3]

1. Tokenization. The embedded default corpus is written ``--copies`` times into as many JSONL
   files. Baseline: a plain Python loop calling ``SentencePieceProcessor.encode`` on every text
   (already in memory). Pipeline: ``prepare_dataset`` (what ``flm data prepare`` runs) from the
   JSONL files to finished shards -- reading through ``datasets``, hashing inputs, ``--workers``
   tokenizer processes, writing shards, index and manifest. Reported: content tokens/s of each
   (eos separators not counted) and their ratio. Goal: >= 1.5x with 2 workers.
2. Loading. ``build_sources`` over the default corpus (tokenizer vocabulary 512, seq_length 64);
   one batch = 8 samples by global index, stacked into an int64 torch tensor. Compared with the
   step rate of a *stand-in* trainer measured here: a plain torch GPT-like model (2 layers,
   hidden 64, 4 heads, seq 64, batch 8, vocab 512, tied embeddings) doing forward + backward +
   AdamW step. Goal: loader >= 20x the step rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from training.data.build import build_sources, prepare_default_data  # noqa: E402
from training.data.default_corpus import build_default_corpus  # noqa: E402
from training.data.ingest import CorpusSpec  # noqa: E402
from training.data.prepare import prepare_dataset  # noqa: E402
from training.data.sentencepiece_tokenizer import TokenizerSpec, train_tokenizer  # noqa: E402


def bench_tokenization(root: Path, copies: int, workers: int, vocab_size: int, repeats: int) -> dict:
    corpus = build_default_corpus()
    texts = [d["text"] for d in corpus.documents]
    data = corpus.jsonl()
    files = []
    for i in range(copies):
        path = root / "corpus" / f"part-{i:02d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files.append(str(path))
    spec = CorpusSpec(inputs=tuple(files))
    tok = train_tokenizer(CorpusSpec(inputs=(files[0],)), root / "tok", TokenizerSpec(vocab_size=vocab_size)).tokenizer

    all_texts = texts * copies
    loop_s, prep_s = [], []
    for r in range(repeats):  # interleaved, best of `repeats`: the machine may be shared
        start = time.perf_counter()
        loop_tokens = 0
        for text in all_texts:
            loop_tokens += len(tok.processor.encode(text))
        loop_s.append(time.perf_counter() - start)

        start = time.perf_counter()
        result = prepare_dataset(spec, tok, root / f"prepared-{r}", workers=workers)
        prep_s.append(time.perf_counter() - start)
        m = result.manifest
        prep_tokens = m["tokens"] - m["documents"]
        assert result.prepared and prep_tokens == loop_tokens, (prep_tokens, loop_tokens)
    return {
        "chars": sum(map(len, all_texts)),
        "documents": len(all_texts),
        "tokens": loop_tokens,
        "loop_tok_s": loop_tokens / min(loop_s),
        "prepare_tok_s": prep_tokens / min(prep_s),
        "loop_s": min(loop_s),
        "prepare_s": min(prep_s),
    }


class TinyGPT(torch.nn.Module):
    def __init__(self, vocab: int = 512, hidden: int = 64, layers: int = 2, heads: int = 4, seq: int = 64):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.pos = torch.nn.Embedding(seq, hidden)
        layer = torch.nn.TransformerEncoderLayer(
            hidden, heads, 4 * hidden, dropout=0.0, batch_first=True, norm_first=True, activation="gelu"
        )
        self.blocks = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(hidden)
        self.register_buffer("mask", torch.nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1])
        h = self.embed(tokens) + self.pos(positions)
        h = self.blocks(h, mask=self.mask, is_causal=True)
        return self.norm(h) @ self.embed.weight.T


def bench_train_step(batches: list[torch.Tensor], steps: int, repeats: int) -> float:
    torch.manual_seed(0)
    model = TinyGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(batch: torch.Tensor) -> None:
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(5):
        step(batches[i % len(batches)])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(steps):
            step(batches[i % len(batches)])
        best = min(best, time.perf_counter() - start)
    return steps / best


def bench_loader(
    root: Path, batches: int, repeats: int, batch_size: int = 8, seq: int = 64
) -> tuple[float, list[torch.Tensor]]:
    info = prepare_default_data(root / "default", vocab_size=512)
    train, _ = build_sources(info.data_config(), seq_length=seq, vocab_size=512)
    train.sample(0)  # first chunk/epoch permutations are built lazily; time the steady state
    best = float("inf")
    for r in range(repeats):  # each repeat reads new global indices, like consecutive steps
        start = time.perf_counter()
        out = []
        for b in range(r * batches, (r + 1) * batches):
            rows = [train.sample(i) for i in range(b * batch_size, (b + 1) * batch_size)]
            out.append(torch.from_numpy(np.stack(rows)))
        best = min(best, time.perf_counter() - start)
    return batches / best, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--copies", type=int, default=4, help="copies of the default corpus to tokenize")
    parser.add_argument("--repeats", type=int, default=3, help="timings are the best of this many runs")
    parser.add_argument("--vocab-size", type=int, default=8192, help="tokenizer for the tokenization bench")
    parser.add_argument("--loader-batches", type=int, default=2000)
    parser.add_argument("--train-steps", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = parser.parse_args()

    import datasets

    datasets.utils.logging.set_verbosity_error()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"python {platform.python_version()}, torch {torch.__version__} (threads {torch.get_num_threads()}); "
        f"each timing is the best of {args.repeats} runs"
    )
    print(
        f"load average at start (other processes on these CPUs lower the parallel numbers): "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tok = bench_tokenization(root, args.copies, args.workers, args.vocab_size, args.repeats)
        print(
            f"[tokenize] {tok['documents']} documents, {tok['chars'] / 1e6:.1f} M chars, {tok['tokens'] / 1e6:.2f} M tokens, "
            f"vocab {args.vocab_size}"
        )
        print(
            f"[tokenize] plain sentencepiece encode loop : {tok['loop_tok_s'] / 1e6:6.2f} M tok/s ({tok['loop_s']:.2f} s)"
        )
        print(
            f"[tokenize] flm data prepare, {args.workers} workers    : {tok['prepare_tok_s'] / 1e6:6.2f} M tok/s "
            f"({tok['prepare_s']:.2f} s, incl. datasets reading, hashing, writing shards)"
        )
        print(
            f"[tokenize] ratio prepare / loop            : {tok['prepare_tok_s'] / tok['loop_tok_s']:.2f}x (goal >= 1.5x)"
        )

        loader_bps, batches = bench_loader(root, args.loader_batches, args.repeats)
        step_rate = bench_train_step(batches, args.train_steps, args.repeats)
        print(f"[loader]   batches/s (8 x 65 tokens, blend + shuffle + pack): {loader_bps:8.1f}")
        print(
            f"[loader]   stand-in trainer steps/s (plain torch GPT: 2 layers, hidden 64, seq 64, batch 8, "
            f"fwd+bwd+AdamW, CPU): {step_rate:6.1f}"
        )
        print(f"[loader]   ratio loader / trainer: {loader_bps / step_rate:.1f}x (goal >= 20x)")
        if args.json:
            print(json.dumps({"tokenize": tok, "loader_batches_s": loader_bps, "train_steps_s": step_rate}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
