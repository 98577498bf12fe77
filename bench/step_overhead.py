"""Engine overhead: time per training step of the engine (1 process) vs a plain torch
implementation of the same model and optimizer, measured in the same run.

    python bench/step_overhead.py [--layers 4 --hidden 256 --seq 128 --batch 8 --steps 20]

    python bench/step_overhead.py --compare-attention [--seq 1024 --hidden 256 ...]

Prints both medians and the ratio engine / plain (goal: <= 1.1). With ``--compare-attention`` it
times the engine twice instead, with ``train.attention=fused`` (torch's
scaled_dot_product_attention) and ``unfused`` (megatron's baddbmm + softmax + bmm), and prints the
ratio fused / unfused (goal at seq 1024, hidden 256: <= 0.8). Both sides: same shapes, fp32,
AdamW (same hyper-parameters), gradient clipping at 1.0, global batch = one micro-batch, the
same input batch each step. The plain side is a minimal pre-LN GPT (nn.Linear, F.layer_norm,
RoPE, torch SDPA-free causal attention written like megatron's: baddbmm + softmax + bmm).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)


class PlainBlock(torch.nn.Module):
    def __init__(self, h, heads, ffn):
        super().__init__()
        self.h, self.heads = h, heads
        self.ln1 = torch.nn.LayerNorm(h)
        self.qkv = torch.nn.Linear(h, 3 * h)
        self.proj = torch.nn.Linear(h, h)
        self.ln2 = torch.nn.LayerNorm(h)
        self.fc1 = torch.nn.Linear(h, ffn)
        self.fc2 = torch.nn.Linear(ffn, h)

    def forward(self, x, cos, sin, mask):
        s, b, h = x.shape
        d = h // self.heads
        q, k, v = self.qkv(self.ln1(x)).view(s, b, self.heads, 3 * d).split(d, dim=-1)

        def rope(t):
            t1, t2 = t.chunk(2, dim=-1)
            return t * cos + torch.cat([-t2, t1], dim=-1) * sin

        q, k = rope(q), rope(k)
        q = q.reshape(s, b * self.heads, d).transpose(0, 1)
        k = k.reshape(s, b * self.heads, d).transpose(0, 1)
        v = v.reshape(s, b * self.heads, d).transpose(0, 1)
        scores = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(d)
        probs = scores.masked_fill(mask, float("-inf")).softmax(-1)
        ctx = torch.bmm(probs, v).transpose(0, 1).reshape(s, b, h)
        x = x + self.proj(ctx)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class PlainGPT(torch.nn.Module):
    def __init__(self, vocab, h, heads, ffn, layers, seq):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, h)
        self.blocks = torch.nn.ModuleList(PlainBlock(h, heads, ffn) for _ in range(layers))
        self.ln = torch.nn.LayerNorm(h)
        d = h // heads
        inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
        freqs = torch.outer(torch.arange(seq).float(), inv)
        emb = torch.cat([freqs, freqs], dim=-1)[:, None, None, :]
        self.register_buffer("cos", emb.cos())
        self.register_buffer("sin", emb.sin())
        self.register_buffer("mask", torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1))

    def forward(self, tokens, labels):
        x = self.emb(tokens).transpose(0, 1)
        for blk in self.blocks:
            x = blk(x, self.cos, self.sin, self.mask)
        logits = self.ln(x) @ self.emb.weight.t()
        return F.cross_entropy(logits.transpose(0, 1).reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))


def time_steps(step, n):
    for _ in range(3):
        step()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument(
        "--compare-attention",
        action="store_true",
        help="time the engine with fused vs unfused core attention (no plain side)",
    )
    args = ap.parse_args()

    from training.config import load_run_config
    from training.data.source import MockSource
    from training.engine.trainer import Trainer

    overrides = [
        f"model.num_layers={args.layers}",
        f"model.hidden_size={args.hidden}",
        f"model.ffn_hidden_size={4 * args.hidden}",
        f"model.num_attention_heads={args.heads}",
        f"model.seq_length={args.seq}",
        f"model.vocab_size={args.vocab}",
        f"train.global_batch_size={args.batch}",
        f"train.micro_batch_size={args.batch}",
        "train.precision=fp32",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
        "output_dir=/tmp/flm-bench-step",
    ]
    source = MockSource(args.vocab, args.seq, seed=0)
    first = source.sample(0)

    def engine_step_time(attention: str) -> float:
        cfg = load_run_config(None, [*overrides, f"train.attention={attention}"])
        trainer = Trainer(cfg, train_source=source)
        trainer.train_source = type("Fixed", (), {"seq_length": args.seq, "sample": lambda self, i: first})()
        return time_steps(trainer.step, args.steps)

    shape = (
        f"shape: L={args.layers} h={args.hidden} heads={args.heads} seq={args.seq} batch={args.batch} "
        f"vocab={args.vocab}; threads={torch.get_num_threads()}"
    )
    if args.compare_attention:
        unfused = engine_step_time("unfused")
        fused = engine_step_time("fused")
        print(shape)
        print(
            f"engine step, unfused core attention (baddbmm + softmax + bmm): {unfused * 1e3:.1f} ms (median of {args.steps})"
        )
        print(f"engine step, fused core attention (scaled_dot_product_attention): {fused * 1e3:.1f} ms")
        print(f"ratio fused / unfused: {fused / unfused:.3f}  (goal <= 0.8)")
        return
    engine = engine_step_time("fused")

    torch.manual_seed(0)
    model = PlainGPT(args.vocab, args.hidden, args.heads, 4 * args.hidden, args.layers, args.seq)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    batch = torch.from_numpy(first).repeat(args.batch, 1)
    tokens, labels = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()

    def plain_step():
        opt.zero_grad(set_to_none=True)
        loss = model(tokens, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    plain = time_steps(plain_step, args.steps)
    print(shape)
    print(
        f"engine step (megatron-core GPTModel + DDP + optimizer + schedule): {engine * 1e3:.1f} ms (median of {args.steps})"
    )
    print(f"plain torch step (same model math, torch AdamW):                   {plain * 1e3:.1f} ms")
    print(f"ratio engine / plain: {engine / plain:.3f}  (goal <= 1.1)")


if __name__ == "__main__":
    main()
