"""Run the same tokens through the project model and a transformers model; report max |Δlogit|.

The project side is ``growth.reference.reference_logits`` on the checkpoint's logical state
(tested equal to the megatron model), with the checkpoint's growth masks if it has any; columns
``vocab_size ..`` (padded rows) are left out. The transformers side is ``AutoModelForCausalLM``
on the exported directory.

Tolerance: ``|Δ| <= TOL · (1 + max|logit|)`` with ``TOL`` 1e-5 in float32 and 1e-10 in float64,
taking the less precise of the compute dtype and the dtype the HF weights are stored in (float32
weights compared in float64 carry float32 rounding of the folded multipliers); 16-bit weights are
reported without a pass/fail verdict.

float64: transformers computes RMSNorm statistics and the RoPE angles in float32 whatever the
model's dtype (and its eager attention's softmax; sdpa is used here). :func:`promote_to_float64`
replaces those two computations on the loaded instance by the same formulas in float64, so a
float64 comparison measures the conversion, not float32 rounding inside transformers.
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import transformers
from torch import Tensor

from growth import roles as R
from growth.masks import MaskState
from growth.reference import reference_logits
from training.checkpoint import read_meta, resolve
from training.checkpoint.logical import read_logical
from training.config import ModelConfig
from training.config_base import from_dict
from training.hf.flm_arch import trust_remote_code

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Comparison:
    max_abs_dlogit: float
    max_abs_logit: float
    dtype: str
    tokens: tuple[int, int]
    #: relative tolerance for this dtype (None: 16-bit, no verdict)
    tolerance: Optional[float]

    @property
    def within(self) -> Optional[bool]:
        if self.tolerance is None:
            return None
        return self.max_abs_dlogit <= self.tolerance * (1.0 + self.max_abs_logit)

    def summary(self) -> str:
        verdict = {True: "OK", False: "MISMATCH", None: "no threshold for 16-bit weights"}[self.within]
        bound = "" if self.tolerance is None else f", tolerance {self.tolerance:g}·(1 + max|logit|)"
        return (
            f"round trip ({self.dtype}, tokens {self.tokens[0]}x{self.tokens[1]}): max |Δlogit| = "
            f"{self.max_abs_dlogit:.3e} (max |logit| {self.max_abs_logit:.3e}{bound}) [{verdict}]"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs_dlogit": self.max_abs_dlogit,
            "max_abs_logit": self.max_abs_logit,
            "dtype": self.dtype,
            "tokens": list(self.tokens),
            "tolerance": self.tolerance,
            "within": self.within,
        }


def random_tokens(vocab_size: int, seq_length: int, *, batch: int = 2, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq_length), generator=gen)


def _rms64(self, x: Tensor) -> Tensor:
    if x.dtype != torch.float64:
        return self._flm_forward32(x)
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def _rope64(self, x: Tensor, position_ids: Tensor):
    freqs = position_ids[..., None].to(torch.float64) * self._flm_inv_freq64.to(x.device)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def promote_to_float64(model) -> int:
    """Make ``model``'s RMSNorms and rotary embeddings compute in float64 (for a float64 model).
    Returns how many modules were changed; the formulas are transformers' own."""
    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or {}
    base = float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    dim = int(head_dim * float(rope.get("partial_rotary_factor", 1.0)))
    inv64 = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    changed = 0
    for module in model.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
            module._flm_forward32 = module.forward
            module.forward = types.MethodType(_rms64, module)
            changed += 1
        elif "Rotary" in name and hasattr(module, "inv_freq"):
            if rope.get("rope_type", "default") != "default":
                raise ValueError(f"promote_to_float64 handles default RoPE only, not {rope.get('rope_type')}")
            module._flm_inv_freq64 = inv64
            module.forward = types.MethodType(_rope64, module)
            changed += 1
    return changed


def load_hf_model(hf_dir: str | Path, dtype: torch.dtype):
    """``AutoModelForCausalLM`` from ``hf_dir`` in ``dtype`` (sdpa attention; float64 promoted).
    An FLM export is loaded with ``trust_remote_code`` only if its code files are this project's
    (:func:`training.hf.flm_arch.trust_remote_code`; its own attention, no ``attn_implementation``)."""

    if trust_remote_code(Path(hf_dir)):
        model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=dtype, trust_remote_code=True)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=dtype, attn_implementation="sdpa")
    model.eval()
    if dtype == torch.float64:
        promote_to_float64(model)
    return model


def project_logits(cfg, state: dict[str, Tensor], tokens: Tensor, masks=None) -> Tensor:
    """Reference logits ``[b, s, vocab_size]`` of the logical ``state`` (its dtype)."""

    with torch.no_grad():
        return reference_logits(cfg, state, tokens, masks)[..., : cfg.vocab_size]


_PRECISION = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def compare(
    cfg, state: dict[str, Tensor], hf_model, tokens: Tensor, masks=None, stored_dtype: Optional[torch.dtype] = None
) -> Comparison:
    """Compare the project model (``state`` cast to the HF model's dtype) with ``hf_model`` on ``tokens``.

    ``stored_dtype``: the dtype the HF weights were saved in, when less precise than the one they
    were loaded in (the tolerance is that of the less precise of the two)."""
    dtype = next(hf_model.parameters()).dtype
    limit = max(dtype, stored_dtype or dtype, key=_PRECISION.index)
    ours = project_logits(cfg, {k: v.to(dtype) for k, v in state.items()}, tokens, masks).double()
    with torch.no_grad():
        theirs = hf_model(input_ids=tokens).logits.double()
    if theirs.shape != ours.shape:
        raise ValueError(
            f"logits of shape {tuple(theirs.shape)} from transformers, {tuple(ours.shape)} from the "
            "project model: the vocabularies differ"
        )
    name = str(dtype).replace("torch.", "")
    if limit != dtype:
        name += f", weights stored in {str(limit).replace('torch.', '')}"
    return Comparison(
        float((ours - theirs).abs().max()), float(ours.abs().max()), name, tuple(tokens.shape), TOLERANCE.get(limit)
    )


def checkpoint_masks(meta: dict[str, Any]):
    """The growth mask state of a checkpoint (None when it has none): trainer checkpoints keep it
    under ``growth_masks``, checkpoints written by ``flm grow`` under ``growth.masks``."""

    data = meta["growth_masks"] if "growth_masks" in meta else (meta.get("growth") or {}).get("masks")
    return MaskState.from_dict(data) if data else None


def compare_dirs(
    ckpt: str | Path,
    hf_dir: str | Path,
    *,
    dtype: str = "float32",
    batch: int = 2,
    seq_length: Optional[int] = None,
    seed: int = 0,
) -> Comparison:
    """``flm hf-compare``: the checkpoint ``ckpt`` (any layout) against the transformers directory
    ``hf_dir`` on ``batch`` random sequences (default length: the model's ``seq_length``, at most 128)."""

    path = resolve(ckpt)
    meta = read_meta(path)
    cfg = from_dict(ModelConfig, meta["config"]["model"])
    params, _ = read_logical(path)
    state = {k: params[k] for k in R.logical_keys(cfg)}
    masks = checkpoint_masks(meta)
    tokens = random_tokens(cfg.vocab_size, seq_length or min(cfg.seq_length, 128), batch=batch, seed=seed)
    torch_dtype = DTYPES[dtype]
    values = None if masks is None else masks.values(dtype=torch_dtype)
    return compare(cfg, state, load_hf_model(hf_dir, torch_dtype), tokens, values, stored_dtype(hf_dir))


def stored_dtype(hf_dir: str | Path) -> Optional[torch.dtype]:
    """The dtype ``config.json`` records for the weights (None if it records none)."""

    data = json.loads((Path(hf_dir) / "config.json").read_text())
    return DTYPES.get(str(data.get("dtype") or data.get("torch_dtype")))
