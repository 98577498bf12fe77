"""``flm import-hf HF_DIR OUT``: a local Llama, Mistral or Qwen2 checkpoint as a project checkpoint.

``import_hf(hf_dir, out, ...)`` reads ``config.json`` (through transformers' ``AutoConfig``), the
safetensors weights and the tokenizer (a sentencepiece ``tokenizer.model``, or the Hugging Face
``tokenizer.json`` kept unchanged), and writes a *logical* checkpoint
(:func:`training.checkpoint.logical.write_logical`) that loads under any layout with
``flm train RUN.yaml <model overrides> --init-from OUT`` and grows with ``flm grow``:

- ``OUT/flm_checkpoint.json`` holds the run config (model section derived from ``config.json``,
  parallel section from ``layout``, defaults elsewhere), step 0, no optimizer state, and
  ``tokenizer: "tokenizer"`` (the imported tokenizer, which ``flm export-hf`` and ``flm iq --model
  flm`` use);
- ``OUT/tokenizer/``: the tokenizer as a project tokenizer directory (``flm data prepare
  --tokenizer OUT/tokenizer`` makes training data for the model);
- ``OUT/model.yaml``: the model section, for run configs (``model: OUT/model.yaml``).

Families (:data:`FAMILIES`), all RMSNorm + SwiGLU + RoPE decoders with Llama's tensor names:

- ``llama``: biases as ``attention_bias`` (q/k/v/o) and ``mlp_bias`` say;
- ``mistral``: no biases; ``sliding_window`` (when set) bounds ``seq_length``: attention over at
  most ``sliding_window`` tokens is full causal attention, so the default ``seq_length`` is
  ``min(max_position_embeddings, sliding_window)`` and a larger ``--seq-length`` is refused;
- ``qwen2``: q/k/v biases, no o_proj/MLP biases; sliding-window layers (``use_sliding_window``)
  bound ``seq_length`` the same way.

Mapping (exact): q/k/v projections are fused per query group ``[q heads of the group, k, v]``,
``gate``/``up`` become ``fc1 = [gate; up]``, the norms go to the ``layer_norm_weight`` keys, layers
are stacked; the embedding (and an untied ``lm_head``) get zero rows up to ``padded_vocab_size(tp)``.
The project has one ``bias`` switch: a model with some biases imports with ``bias: true`` and
zeros for the biases it lacks (the same function; training then learns them). Weights are stored in
``dtype`` (float32 by default, what CPU training uses).

Refused with HFInteropError naming the ``config.json`` field: another ``model_type``; an activation
other than SiLU; RoPE scaling (``rope_scaling`` / ``rope_parameters.rope_type`` other than
``default``, e.g. Llama 3's ``llama3``: the project's RoPE has no frequency scaling) or partial
rotary; a non-integer ``rope_theta``; a ``--seq-length`` beyond ``sliding_window``; quantized
weights; missing, unexpected or mis-shaped tensors; a tokenizer that does not belong to the weights.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import transformers
import yaml

from growth import roles as R
from training.checkpoint.logical import write_logical
from training.config import CONFIGS_DIR, ParallelConfig, RunConfig
from training.config_base import ConfigError, from_dict, parse_override, read_yaml, to_dict
from training.hf.architectures import fuse_qkv
from training.hf.compare import DTYPES, Comparison, compare, load_hf_model, random_tokens
from training.hf.errors import HFInteropError, RoundTripMismatch
from training.hf.safetensors_io import read_tensors
from training.hf.tokenizer import import_tokenizer


@dataclass(frozen=True)
class Family:
    """Which biases a ``model_type`` has (from its config) and its sliding window (None: none)."""

    biases: Any  # hc -> {"qkv": bool, "proj": bool, "mlp": bool}
    window: Any  # hc -> Optional[int]


def _qwen2_window(hc) -> Optional[int]:
    types = getattr(hc, "layer_types", None) or []
    sliding = "sliding_attention" in types if types else bool(getattr(hc, "use_sliding_window", False))
    return getattr(hc, "sliding_window", None) if sliding else None


FAMILIES = {
    "llama": Family(
        lambda hc: {
            "qkv": bool(getattr(hc, "attention_bias", False)),
            "proj": bool(getattr(hc, "attention_bias", False)),
            "mlp": bool(getattr(hc, "mlp_bias", False)),
        },
        lambda hc: None,
    ),
    "mistral": Family(
        lambda hc: {"qkv": False, "proj": False, "mlp": False}, lambda hc: getattr(hc, "sliding_window", None)
    ),
    "qwen2": Family(lambda hc: {"qkv": True, "proj": False, "mlp": False}, _qwen2_window),
}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)
TOKENIZER_DIR = "tokenizer"
MODEL_YAML = "model.yaml"


@dataclass
class ImportReport:
    src: Path
    out: Path
    model: dict[str, Any]
    tokenizer: Optional[dict[str, Any]]
    check: Optional[Comparison]

    def overrides(self) -> list[str]:
        return model_overrides(self.model)

    def summary(self) -> str:
        tok = (
            f"{self.tokenizer.get('kind', 'sentencepiece')} tokenizer {self.out / TOKENIZER_DIR}"
            if self.tokenizer
            else "no tokenizer (--no-tokenizer)"
        )
        lines = [
            f"imported {self.src} -> {self.out} ({tok})",
            f"model section: {self.out / MODEL_YAML}",
            "train it (any layout) with:",
            f"  flm train RUN.yaml {' '.join(self.overrides())} --init-from {self.out}",
        ]
        if self.check is not None:
            lines.append(self.check.summary())
        return "\n".join(lines)


def model_overrides(model: dict[str, Any]) -> list[str]:
    """``model.<key>=<value>`` overrides that reproduce the model section ``model`` on any run config."""

    def fmt(v: Any) -> str:
        return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)

    return [f"model.{k}={fmt(v)}" for k, v in model.items()]


def parse_layout(text: str):
    """``"tp=2,pp=2"`` or a layout YAML (a path, or a name under ``configs/layouts``) -> ParallelConfig."""

    try:
        if "=" in text:
            data = {}
            for item in filter(None, (s.strip() for s in text.split(","))):
                keys, value = parse_override(item)
                data[".".join(keys)] = value
        else:
            candidates = [Path(text), CONFIGS_DIR / "layouts" / text, CONFIGS_DIR / "layouts" / f"{text}.yaml"]
            found = next((p for p in candidates if p.is_file()), None)
            if found is None:
                raise HFInteropError(
                    f"--layout {text!r}: no such file (looked at {', '.join(map(str, candidates))}); "
                    "give a layout YAML or key=value pairs like tp=2,pp=2"
                )
            data = read_yaml(found)
        return from_dict(ParallelConfig, data)
    except ConfigError as err:
        raise HFInteropError(f"--layout {text!r}: {err}") from None


def _hf_config(hf_dir: Path):

    if not hf_dir.is_dir():
        raise HFInteropError(f"Hugging Face model directory {hf_dir} does not exist")
    if not (hf_dir / "config.json").is_file():
        raise HFInteropError(
            f"{hf_dir / 'config.json'} not found: not a Hugging Face model directory "
            "(save one with model.save_pretrained(DIR))"
        )
    model_type = json.loads((hf_dir / "config.json").read_text()).get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise HFInteropError(
            f"{hf_dir / 'config.json'}: model_type {model_type!r} is not supported; import-hf reads "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} checkpoints (RMSNorm + SwiGLU + RoPE, GQA, tied or untied)"
        )
    try:
        return transformers.AutoConfig.from_pretrained(str(hf_dir))
    except Exception as err:  # transformers raises several types for malformed configs
        raise HFInteropError(f"{hf_dir / 'config.json'} cannot be read by transformers: {err}") from None


def _rope_field(where: Path) -> str:
    """How the RoPE parameters are spelled in ``config.json`` (older files: ``rope_scaling``)."""
    try:
        raw = json.loads(where.read_text())
    except (OSError, ValueError):
        return "rope_parameters"
    return "rope_scaling" if raw.get("rope_scaling") else "rope_parameters"


def model_section(hc, seq_length: Optional[int], where: Path) -> dict[str, Any]:
    """The project's model section for the Llama/Mistral/Qwen2 config ``hc`` (``where``: its
    config.json); HFInteropError naming the field that cannot map."""

    def refuse(what: str) -> HFInteropError:
        return HFInteropError(f"{where}: {what}; the project model cannot compute this, so the import is refused")

    family = FAMILIES[hc.model_type]
    if getattr(hc, "quantization_config", None):
        raise refuse("the weights are quantized")
    if hc.hidden_act != "silu":
        raise refuse(f"hidden_act is {hc.hidden_act!r} (the project's SwiGLU uses silu)")
    rope = dict(getattr(hc, "rope_parameters", None) or {})
    theta = rope.get("rope_theta", getattr(hc, "rope_theta", None))
    if rope.get("rope_type", "default") != "default":
        field = _rope_field(where)
        extra = f", factor {rope['factor']}" if "factor" in rope else ""
        raise refuse(
            f"{field}.rope_type is {rope.get('rope_type')!r} (RoPE scaling{extra}); the project's RoPE has "
            "no frequency scaling, only plain RoPE (rope_type 'default') imports"
        )
    if float(rope.get("partial_rotary_factor", 1.0)) != 1.0:
        raise refuse("partial_rotary_factor is not 1 (partial rotary embeddings)")
    if theta is None or float(theta) != int(float(theta)):
        raise refuse(f"rope_theta {theta!r} is not an integer (model.rotary_base is an integer)")
    biases = family.biases(hc)
    window = family.window(hc)
    if window is not None and seq_length is not None and seq_length > window:
        raise refuse(
            f"sliding_window is {window} but --seq-length is {seq_length} (the project attends to the whole "
            f"sequence); pass --seq-length {window} or less"
        )
    seq = seq_length or (min(hc.max_position_embeddings, window) if window else hc.max_position_embeddings)
    heads, hidden = hc.num_attention_heads, hc.hidden_size
    head_dim = getattr(hc, "head_dim", None) or hidden // heads
    groups = getattr(hc, "num_key_value_heads", None) or heads
    return {
        "num_layers": hc.num_hidden_layers,
        "hidden_size": hidden,
        "ffn_hidden_size": hc.intermediate_size,
        "num_attention_heads": heads,
        "num_query_groups": None if groups == heads else groups,
        "kv_channels": None if head_dim * heads == hidden else head_dim,
        "vocab_size": hc.vocab_size,
        "seq_length": seq,
        "normalization": "RMSNorm",
        "activation": "swiglu",
        "position_embedding": "rope",
        "rotary_base": int(float(theta)),
        "tie_embeddings": bool(getattr(hc, "tie_word_embeddings", False)),
        "bias": any(biases.values()),
        "norm_eps": float(hc.rms_norm_eps),
        "init_std": float(getattr(hc, "initializer_range", 0.02)),
        "attention_dropout": float(getattr(hc, "attention_dropout", 0.0) or 0.0),
    }


def _take(tensors: dict[str, torch.Tensor], key: str, shape: tuple[int, ...], where: Path) -> torch.Tensor:
    if key not in tensors:
        raise HFInteropError(
            f"{where}: the weights have no {key!r}; the checkpoint is incomplete or not of its config.json's model_type"
        )
    t = tensors.pop(key)
    if tuple(t.shape) != shape:
        raise HFInteropError(f"{where}: {key} has shape {tuple(t.shape)}, config.json implies {shape}")
    return t


def logical_from_llama(
    cfg,
    tensors: dict[str, torch.Tensor],
    padded_vocab: int,
    dtype: torch.dtype,
    where: Path,
    biases: Optional[dict[str, bool]] = None,
) -> dict[str, torch.Tensor]:
    """The logical state dict of ``cfg`` from Llama-named ``tensors`` (consumed); vocabulary padded
    with zeros. ``biases``: which of ``qkv``/``proj``/``mlp`` biases the file has (default: all when
    ``cfg.bias``); with ``cfg.bias`` the absent ones are zeros."""
    tensors = dict(tensors)
    has = biases if biases is not None else {k: cfg.bias for k in ("qkv", "proj", "mlp")}
    H, F, L, V = cfg.hidden_size, cfg.ffn_hidden_size, cfg.num_layers, cfg.vocab_size
    nq, ng, d = cfg.num_attention_heads, cfg.query_groups, cfg.head_dim

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t.new_zeros(padded_vocab - V, H)]) if padded_vocab > V else t

    emb = _take(tensors, "model.embed_tokens.weight", (V, H), where)
    state = {R.EMBEDDING: pad(emb), R.FINAL_NORM_WEIGHT: _take(tensors, "model.norm.weight", (H,), where)}
    if cfg.tie_embeddings:
        head = tensors.pop("lm_head.weight", None)
        if head is not None and not torch.equal(head, emb):
            raise HFInteropError(f"{where}: tie_word_embeddings is true but lm_head.weight differs from the embedding")
    else:
        state[R.OUTPUT] = pad(_take(tensors, "lm_head.weight", (V, H), where))
    per_layer: dict[str, list[torch.Tensor]] = {}
    for i in range(L):
        p = f"model.layers.{i}."

        def take(name: str, shape: tuple[int, ...], p: str = p) -> torch.Tensor:
            return _take(tensors, p + name, shape, where)

        q, k, v = (
            take("self_attn.q_proj.weight", (nq * d, H)),
            take("self_attn.k_proj.weight", (ng * d, H)),
            take("self_attn.v_proj.weight", (ng * d, H)),
        )
        layer = {
            R.QKV_WEIGHT: fuse_qkv(q, k, v, cfg),
            R.PROJ_WEIGHT: take("self_attn.o_proj.weight", (H, nq * d)),
            R.FC1_WEIGHT: torch.cat([take("mlp.gate_proj.weight", (F, H)), take("mlp.up_proj.weight", (F, H))]),
            R.FC2_WEIGHT: take("mlp.down_proj.weight", (H, F)),
            R.NORM1_WEIGHT: take("input_layernorm.weight", (H,)),
            R.NORM2_WEIGHT: take("post_attention_layernorm.weight", (H,)),
        }
        if cfg.bias:

            def bias(name: str, size: int, present: bool, layer: dict = layer) -> torch.Tensor:
                return take(name, (size,)) if present else torch.zeros(size, dtype=layer[R.PROJ_WEIGHT].dtype)

            layer.update(
                {
                    R.QKV_BIAS: fuse_qkv(
                        bias("self_attn.q_proj.bias", nq * d, has["qkv"]),
                        bias("self_attn.k_proj.bias", ng * d, has["qkv"]),
                        bias("self_attn.v_proj.bias", ng * d, has["qkv"]),
                        cfg,
                    ),
                    R.PROJ_BIAS: bias("self_attn.o_proj.bias", H, has["proj"]),
                    R.FC1_BIAS: torch.cat(
                        [bias("mlp.gate_proj.bias", F, has["mlp"]), bias("mlp.up_proj.bias", F, has["mlp"])]
                    ),
                    R.FC2_BIAS: bias("mlp.down_proj.bias", H, has["mlp"]),
                }
            )
        for key, t in layer.items():
            per_layer.setdefault(key, []).append(t)
    state.update({k: torch.stack(v) for k, v in per_layer.items()})
    leftover = sorted(k for k in tensors if not k.endswith("rotary_emb.inv_freq"))
    if leftover:
        raise HFInteropError(f"{where}: unexpected tensors {leftover[:5]} (not part of a model of this config)")
    return {k: v.to(dtype).contiguous() for k, v in state.items()}


def import_hf(
    hf_dir: str | Path,
    out: str | Path,
    *,
    layout: str = "tp=1,pp=1",
    dtype: str = "float32",
    seq_length: Optional[int] = None,
    no_tokenizer: bool = False,
    check: bool = False,
) -> ImportReport:
    """Import the Llama/Mistral/Qwen2 directory ``hf_dir`` into the new checkpoint ``out`` (see the
    module docstring).

    ``layout`` sets the run config's parallel section and the vocabulary padding
    (``padded_vocab_size(tp)``); ``seq_length`` defaults to ``max_position_embeddings``. With
    ``check`` the transformers model and the imported weights must give the same logits (float32)
    before ``out`` appears. ``out`` must not exist; nothing is left there on failure.
    """

    hf_dir, out = Path(hf_dir), Path(out)
    if out.exists():
        raise HFInteropError(f"refusing to overwrite {out}; choose a new destination")
    if dtype not in DTYPES:
        raise HFInteropError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    hc = _hf_config(hf_dir)
    parallel = parse_layout(layout)
    model = model_section(hc, seq_length, hf_dir / "config.json")
    try:
        run = from_dict(
            RunConfig,
            {
                "name": f"import-{hf_dir.name}",
                "output_dir": f"runs/import-{hf_dir.name}",
                "model": model,
                "parallel": to_dict(parallel),
            },
        )
    except ConfigError as err:
        raise HFInteropError(f"{hf_dir / 'config.json'} does not fit layout {layout!r}: {err}") from None
    cfg = run.model
    state = logical_from_llama(
        cfg,
        read_tensors(hf_dir),
        cfg.padded_vocab_size(parallel.tp),
        DTYPES[dtype],
        hf_dir,
        FAMILIES[hc.model_type].biases(hc),
    )

    staging = out.parent / f".{out.name}.importing-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        tok = None
        if not no_tokenizer:
            tok = import_tokenizer(hf_dir, staging / TOKENIZER_DIR, cfg.vocab_size)
        comparison = None
        if check:
            tokens = random_tokens(cfg.vocab_size, min(cfg.seq_length, 64))
            comparison = compare(cfg, state, load_hf_model(hf_dir, torch.float32), tokens)
            if comparison.within is False:
                raise RoundTripMismatch(
                    f"the imported weights do not compute what {hf_dir} does: {comparison.summary()}; "
                    "nothing was written. This is a bug; please report it with config.json"
                )
        meta = {
            "config": to_dict(run),
            "step": 0,
            "consumed_samples": 0,
            "adam_step": 0,
            "hf_import": {
                "source": str(hf_dir.resolve()),
                "model_type": hc.model_type,
                "transformers": transformers.__version__,
                "dtype": dtype,
                "check": None if comparison is None else comparison.to_dict(),
            },
        }
        if tok is not None:
            meta["tokenizer"] = TOKENIZER_DIR

        def with_files(partial: Path) -> dict:
            # inside the atomic write, so the tokenizer and model.yaml are in the checkpoint's manifest
            if tok is not None:
                shutil.move(str(staging / TOKENIZER_DIR), str(partial / TOKENIZER_DIR))
            (partial / MODEL_YAML).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
            return meta

        ckpt = write_logical(staging / out.name, state, with_files)
        os.replace(ckpt, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ImportReport(hf_dir, out, to_dict(cfg), tok, comparison)
