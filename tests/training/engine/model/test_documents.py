"""``data.reset_at_eos``: a packed window with per-document attention masks and position ids computes
what each of its documents computes run alone (logits and per-token losses to fp32 rounding), for
RoPE and xPos, fused and unfused attention, MHA and GQA, and through the megatron engine's own
batches and pipeline schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import training.engine  # noqa: F401  (installs the CPU bridge before megatron is imported)
from tests.growth.helpers import VARIANTS, make_cfg, random_state, variant_id
from training.config import ParallelConfig
from training.engine.model.documents import document_inputs
from training.engine.model.state import load_logical_state_dict

EOS = 2
#: two windows of 16 tokens: documents end at the eos (id 2); the second window starts inside a
#: document and holds a document that is only its eos
WINDOWS = torch.tensor(
    [
        [5, 9, 2, 7, 8, 11, 13, 2, 4, 6, 3, 2, 17, 19, 21, 23],
        [7, 8, 9, 10, 2, 2, 30, 31, 32, 33, 34, 35, 2, 40, 41, 42],
    ]
)
#: RoPE and xPos, MHA and GQA, each core-attention path twice
_V = {
    (v["position_embedding"], bool(v["num_query_groups"])): v
    for v in VARIANTS
    if v["normalization"] == "RMSNorm" and v["activation"] == "swiglu" and not v["tie_embeddings"]
}
CASES = [
    (_V["rope", False], "fused"),
    (_V["rope", True], "unfused"),
    (_V["xpos", False], "unfused"),
    (_V["xpos", True], "fused"),
]


@pytest.fixture(scope="module")
def build():
    from training.engine.model.build import build_model, transformer_config
    from training.engine.parallel import setup_layout

    setup_layout(ParallelConfig(), 1234)

    def make(cfg, attention, documents=True):
        config = transformer_config(cfg, ParallelConfig(), bf16=False, gloo=True)
        chunk = build_model(cfg, config, attention=attention, documents=documents)[0]
        load_logical_state_dict(chunk, random_state(cfg, dtype=torch.float32))
        return chunk.eval()

    return make


def documents(window: torch.Tensor) -> list[torch.Tensor]:
    """The window cut after each eos."""
    ends = [i + 1 for i, t in enumerate(window.tolist()) if t == EOS]
    bounds = [0, *ends] + ([len(window)] if not ends or ends[-1] != len(window) else [])
    return [window[a:b] for a, b in zip(bounds, bounds[1:])]


def alone(chunk, window: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and per-token losses of each document of ``window`` run alone, concatenated."""
    logits, losses, at = [], [], 0
    for doc in documents(window):
        n = len(doc)
        toks, pos = doc[None], torch.arange(n)[None]
        logits.append(chunk(toks, pos, None)[0])
        losses.append(chunk(toks, pos, None, labels=labels[None, at : at + n])[0])
        at += n
    return torch.cat(logits), torch.cat(losses)


def test_document_inputs_restart_positions_and_mask_other_documents():
    positions, mask = document_inputs(torch.tensor([[5, 2, 7, 8, 2, 9]]), EOS)
    assert positions.tolist() == [[0, 1, 0, 1, 2, 0]]
    attends = (~mask[0, 0]).int().tolist()  # megatron's mask: True = masked out
    assert attends == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]


@pytest.mark.parametrize("variant,attention", CASES, ids=[f"{variant_id(v)}-{a}" for v, a in CASES])
def test_packed_window_with_resets_equals_its_documents_alone(build, variant, attention):
    cfg = make_cfg(variant)
    chunk = build(cfg, attention)
    labels = WINDOWS.roll(-1, dims=1)
    positions, mask = document_inputs(WINDOWS, EOS)
    with torch.no_grad():
        packed = chunk(WINDOWS, positions, mask)
        packed_losses = chunk(WINDOWS, positions, mask, labels=labels)
        plain = chunk(WINDOWS, torch.arange(16)[None].expand(2, 16), None)
        for row in range(2):
            logits, losses = alone(chunk, WINDOWS[row], labels[row])
            torch.testing.assert_close(packed[row], logits, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(packed_losses[row], losses, rtol=1e-5, atol=1e-5)
            # without the resets the later documents see the earlier ones: the test can tell
            assert (plain[row] - logits).abs().max() > 1e-2


def test_rotary_embedding_reads_the_position_ids_of_the_forward(build):
    cfg = make_cfg(VARIANTS[5])
    chunk, plain_chunk = build(cfg, "fused"), build(cfg, "fused", documents=False)
    positions, _ = document_inputs(WINDOWS, EOS)
    with torch.no_grad():
        chunk(WINDOWS, positions, None)
        rotary = chunk.rotary_pos_emb
        assert rotary.position_ids is positions  # the forward's position ids, kept by the pre-hook
        table = rotary.inner(16)  # megatron's [s, 1, 1, d] table of window positions
        emb = rotary(16)
        assert emb.shape == (16, 2, 1, table.shape[-1])
        for row in range(2):
            assert torch.equal(emb[:, row, 0], table[positions[row], 0, 0])
        # plain windows (positions 0..s-1, no mask): the same as the model that ignores position ids
        toks, pos = WINDOWS.clamp(min=3), torch.arange(16)[None].expand(2, 16)
        torch.testing.assert_close(chunk(toks, pos, None), plain_chunk(toks, pos, None), rtol=0, atol=0)


class Windows:
    """A training source of the WINDOWS rows (with the token after each window), eos = EOS."""

    eos_id = EOS
    seq_length = 16

    def sample(self, index: int) -> np.ndarray:
        row = WINDOWS[index % 2]
        return np.concatenate([row.numpy(), [row[0].item()]]).astype(np.int64)


def test_the_engine_trains_packed_windows_as_separate_documents(tmp_path):
    """The megatron engine's micro-batches carry the document masks and positions through its
    pipeline schedule: its loss on a batch of packed windows is the mean per-token loss of the
    documents run alone; without a source that names its eos the option is refused."""
    from training.config import RunConfig, TrainConfig
    from training.config.data import DataConfig
    from training.engine.factory import make_trainer
    from training.engine.parallel import init_process_group, teardown
    from training.errors import DataError

    model = make_cfg(VARIANTS[13])
    cfg = RunConfig(
        model=model,
        train=TrainConfig(global_batch_size=2, micro_batch_size=1, steps=1),
        data=DataConfig(kind="default", reset_at_eos=True),
        output_dir=str(tmp_path),
    )
    cfg.validate("")
    init_process_group()
    try:
        trainer = make_trainer(cfg, train_source=Windows())
        chunk = trainer.model[0]
        load_logical_state_dict(chunk, random_state(model, dtype=torch.float32))
        batch = trainer._rank_batch(trainer.train_source, 0)
        loss = trainer._forward_only_loss(trainer._micro_batches(batch))
        chunk.eval()
        with torch.no_grad():
            per_token = torch.cat([alone(chunk, torch.from_numpy(s[:-1]), torch.from_numpy(s[1:]))[1] for s in batch])
        assert loss == pytest.approx(per_token.double().mean().item(), rel=1e-5)
        with pytest.raises(DataError, match="data.reset_at_eos: the training data"):
            make_trainer(cfg, train_source=type("NoEos", (), {"seq_length": 16, "sample": Windows.sample})())
        del trainer
    finally:
        teardown()
