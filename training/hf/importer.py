"""``flm import-hf HF_DIR OUT``: a local Llama, Mistral or Qwen2 checkpoint as a project checkpoint.

``import_hf(hf_dir, out, ...)`` reads ``config.json`` (through transformers' ``AutoConfig``), the
safetensors weights and the tokenizer (a sentencepiece ``tokenizer.model``, or the Hugging Face
``tokenizer.json`` kept unchanged), and writes a *logical* checkpoint
(:func:`training.checkpoint.logical.write_logical_chunks`) that loads under any layout with
``flm train RUN.yaml <model overrides> --init-from OUT`` and grows with ``flm grow``. It streams
(:class:`LlamaWeights`): each logical tensor (each layer of a per-layer one) is built from the
Hugging Face tensors it needs, read one at a time, and written before the next is built.

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

import dataclasses
import functools
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import transformers
import yaml

from growth import roles as R
from growth.shape import ModelShape
from training.checkpoint.dcp_io import ChunkedTensor, TensorReader
from training.checkpoint.logical import layer_rows, write_logical_chunks
from training.config import CONFIGS_DIR, ParallelConfig, RunConfig
from training.config_base import ConfigError, from_dict, parse_override, read_yaml, to_dict
from training.hf.architectures import fuse_qkv
from training.hf.compare import DTYPES, Comparison, compare, load_hf_model, random_tokens
from training.hf.errors import HFInteropError, RoundTripMismatch
from training.hf.safetensors_io import HFWeights
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


def _hf_names(cfg, has: dict[str, bool]) -> dict[str, tuple[int, ...]]:
    """Every Llama-named tensor a model of ``cfg`` needs, with its shape (``has``: which of the
    ``qkv``/``proj``/``mlp`` biases the file has; with ``cfg.bias`` the absent ones are zeros)."""
    H, F, V = cfg.hidden_size, cfg.ffn_hidden_size, cfg.vocab_size
    nq, ng, d = cfg.num_attention_heads, cfg.query_groups, cfg.head_dim
    names = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,)}
    if not cfg.tie_embeddings:
        names["lm_head.weight"] = (V, H)
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        layer = {
            "self_attn.q_proj.weight": (nq * d, H),
            "self_attn.k_proj.weight": (ng * d, H),
            "self_attn.v_proj.weight": (ng * d, H),
            "self_attn.o_proj.weight": (H, nq * d),
            "mlp.gate_proj.weight": (F, H),
            "mlp.up_proj.weight": (F, H),
            "mlp.down_proj.weight": (H, F),
            "input_layernorm.weight": (H,),
            "post_attention_layernorm.weight": (H,),
        }
        if cfg.bias and has["qkv"]:
            layer.update({"self_attn.q_proj.bias": (nq * d,), "self_attn.k_proj.bias": (ng * d,)})
            layer["self_attn.v_proj.bias"] = (ng * d,)
        if cfg.bias and has["proj"]:
            layer["self_attn.o_proj.bias"] = (H,)
        if cfg.bias and has["mlp"]:
            layer.update({"mlp.gate_proj.bias": (F,), "mlp.up_proj.bias": (F,), "mlp.down_proj.bias": (H,)})
        names.update({p + k: v for k, v in layer.items()})
    return names


class LlamaWeights:
    """The logical tensors of ``cfg`` from the Llama-named tensors of ``weights``, produced one
    tensor (one layer of a per-layer tensor) at a time, as ``flm import-hf`` writes them.

    Mapping (exact): q/k/v are fused per query group ``[q heads of the group, k, v]``, ``fc1 =
    [gate; up]``, the norms go to the ``layer_norm_weight`` keys; the embedding (and an untied
    ``lm_head``) get zero rows up to ``padded_vocab``; biases the file lacks are zeros (``cfg.bias``).
    Every tensor is stored in ``dtype``. The constructor checks names and shapes from the files'
    headers (nothing is read) and raises HFInteropError naming the first problem."""

    def __init__(
        self,
        cfg,
        weights: HFWeights,
        padded_vocab: int,
        dtype: torch.dtype,
        where: Path,
        biases: Optional[dict[str, bool]] = None,
    ) -> None:
        self.cfg, self.weights, self.dtype, self.where = cfg, weights, dtype, where
        self.has = biases if biases is not None else {k: cfg.bias for k in ("qkv", "proj", "mlp")}
        self.shapes = R.logical_shapes(cfg, dataclasses.replace(ModelShape.from_model_config(cfg), vocab=padded_vocab))
        expected = _hf_names(cfg, self.has)
        for name, shape in expected.items():
            if name not in weights:
                raise HFInteropError(
                    f"{where}: the weights have no {name!r}; the checkpoint is incomplete or not of its "
                    "config.json's model_type"
                )
            if weights.shape(name) != shape:
                raise HFInteropError(f"{where}: {name} has shape {weights.shape(name)}, config.json implies {shape}")
        tied_head = {"lm_head.weight"} if cfg.tie_embeddings else set()
        leftover = sorted(
            k
            for k in weights.keys()
            if k not in expected and k not in tied_head and not k.endswith("rotary_emb.inv_freq")
        )
        if leftover:
            raise HFInteropError(f"{where}: unexpected tensors {leftover[:5]} (not part of a model of this config)")

    def entries(self) -> list[ChunkedTensor]:
        """One entry per logical tensor, the per-layer ones cut into layers (``layer_rows``)."""
        return [
            ChunkedTensor(key, shape, self.dtype, functools.partial(self.produce, key), layer_rows(key))
            for key, shape in self.shapes.items()
        ]

    def produce(self, key: str, layer: int) -> torch.Tensor:
        """Logical tensor ``key`` (``layer`` 0), or layer ``layer`` of a per-layer one (shape ``[1, ...]``)."""
        if key == R.EMBEDDING:
            emb = self.weights.get("model.embed_tokens.weight")
            if self.cfg.tie_embeddings and "lm_head.weight" in self.weights:
                if not torch.equal(self.weights.get("lm_head.weight"), emb):
                    raise HFInteropError(
                        f"{self.where}: tie_word_embeddings is true but lm_head.weight differs from the embedding"
                    )
            return self._padded(emb)
        if key == R.OUTPUT:
            return self._padded(self.weights.get("lm_head.weight"))
        if key == R.FINAL_NORM_WEIGHT:
            return self.weights.get("model.norm.weight").to(self.dtype)
        return self._layer(key, layer).to(self.dtype).unsqueeze(0)

    def _padded(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` in ``dtype`` with zero rows up to the padded vocabulary (one allocation, no concatenation)."""
        out = torch.zeros(self.shapes[R.EMBEDDING], dtype=self.dtype)
        out[: t.shape[0]] = t
        return out

    def _layer(self, key: str, i: int) -> torch.Tensor:
        cfg, p = self.cfg, f"model.layers.{i}."

        def get(name: str) -> torch.Tensor:
            return self.weights.get(p + name)

        def bias(name: str, present: bool, size: int) -> torch.Tensor:
            return get(name) if present else torch.zeros(size, dtype=self.dtype)

        F, H = cfg.ffn_hidden_size, cfg.hidden_size
        nq, ng, d = cfg.num_attention_heads, cfg.query_groups, cfg.head_dim
        qkv, proj, mlp = self.has["qkv"], self.has["proj"], self.has["mlp"]
        parts: dict[str, Callable[[], torch.Tensor]] = {
            R.QKV_WEIGHT: lambda: fuse_qkv(
                get("self_attn.q_proj.weight"), get("self_attn.k_proj.weight"), get("self_attn.v_proj.weight"), cfg
            ),
            R.PROJ_WEIGHT: lambda: get("self_attn.o_proj.weight"),
            R.FC1_WEIGHT: lambda: torch.cat([get("mlp.gate_proj.weight"), get("mlp.up_proj.weight")]),
            R.FC2_WEIGHT: lambda: get("mlp.down_proj.weight"),
            R.NORM1_WEIGHT: lambda: get("input_layernorm.weight"),
            R.NORM2_WEIGHT: lambda: get("post_attention_layernorm.weight"),
            R.QKV_BIAS: lambda: fuse_qkv(
                bias("self_attn.q_proj.bias", qkv, nq * d),
                bias("self_attn.k_proj.bias", qkv, ng * d),
                bias("self_attn.v_proj.bias", qkv, ng * d),
                cfg,
            ),
            R.PROJ_BIAS: lambda: bias("self_attn.o_proj.bias", proj, H),
            R.FC1_BIAS: lambda: torch.cat([bias("mlp.gate_proj.bias", mlp, F), bias("mlp.up_proj.bias", mlp, F)]),
            R.FC2_BIAS: lambda: bias("mlp.down_proj.bias", mlp, H),
        }
        return parts[key]()


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
    source = LlamaWeights(
        cfg,
        HFWeights(hf_dir),
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
                "check": None,
            },
        }
        if tok is not None:
            meta["tokenizer"] = TOKENIZER_DIR
        comparison = None

        def with_files(partial: Path) -> dict:
            # inside the atomic write, so the tokenizer and model.yaml are in the checkpoint's manifest
            nonlocal comparison
            if check:  # the weights as written against transformers, before the checkpoint is committed
                tokens = random_tokens(cfg.vocab_size, min(cfg.seq_length, 64))
                reader = TensorReader(partial)
                state = {k: reader.read(k) for k in R.logical_keys(cfg)}
                comparison = compare(cfg, state, load_hf_model(hf_dir, torch.float32), tokens)
                if comparison.within is False:
                    raise RoundTripMismatch(
                        f"the imported weights do not compute what {hf_dir} does: {comparison.summary()}; "
                        "nothing was written. This is a bug; please report it with config.json"
                    )
                meta["hf_import"]["check"] = comparison.to_dict()
            if tok is not None:
                shutil.move(str(staging / TOKENIZER_DIR), str(partial / TOKENIZER_DIR))
            (partial / MODEL_YAML).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
            return meta

        # one writer thread: a chunk's work is reading, so a second thread would only hold a second
        # tensor in memory (the embedding and the output layer could be produced together)
        ckpt = write_logical_chunks(staging / out.name, source.entries(), with_files, has_moments=False, threads=1)
        os.replace(ckpt, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ImportReport(hf_dir, out, to_dict(cfg), tok, comparison)
