"""The model card (``README.md``) that every ``flm export-hf`` writes into the export directory.

``write_model_card(out_dir, src, meta, export)``: ``out_dir`` holds the exported files
(``config.json``, the safetensors files), ``src`` is the exported checkpoint, ``meta`` its
``flm_checkpoint.json`` and ``export`` the export record (``flm_export.json``: architecture,
dtype, folding, tokenizer, round-trip check). The card states:

- the architecture (transformers class, shape, position encoding, norms, context, vocabulary),
  the parameters stored in the safetensors files, how to load it;
- the tokenizer (kind, vocabulary, SHA-256, where it came from), or that none was exported;
- the growth history (:mod:`training.hf.run_history`): per stage its model, parameters, tokens and
  steps, the growth operators that entered it and the checks at the transition (the float64
  reference check of the grown checkpoint and the engine's check under the new layout);
- the data each stage read, with the datasets' fingerprints from their manifests;
- the validation loss at the exported step, and ``flm eval``'s IQ scores when the run has them.

Whatever the run did not record (a run directory not on this machine, a checkpoint never
evaluated, a dataset manifest gone) is stated as missing, never filled in. The YAML front matter
is ``huggingface_hub.ModelCardData`` (the Hub's model-card metadata): ``library_name:
transformers``, ``pipeline_tag: text-generation``, ``tags`` (``flm-grow``, the ``model_type``,
``custom_code`` for the project's own model code, ``model-growth`` for a grown model), ``license``
when given, ``datasets`` when a corpus came from the Hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from huggingface_hub import ModelCard, ModelCardData
from safetensors import safe_open

from training.hf.run_history import (
    EVAL_FILE,
    METRICS_FILE,
    DatasetRecord,
    RunHistory,
    StageHistory,
    Validation,
    datasets,
    read_history,
)

CARD_FILE = "README.md"
_NOT_RECORDED = "not recorded"
#: growth plan dimensions (``growth.plan``) and the shape field each changes
_DIMS = {"hidden": "hidden", "ffn": "ffn", "heads": "heads", "depth": "layers"}


def write_model_card(
    out_dir: Path,
    src: Path,
    meta: dict[str, Any],
    export: dict[str, Any],
    *,
    name: str,
    license: Optional[str] = None,
) -> Path:
    """Write ``out_dir/README.md`` (see the module docstring); returns its path. ``name``: the
    directory name the card's loading example uses (the export's final name when ``out_dir`` is a
    staging directory); ``license``: a Hub license identifier (``apache-2.0``, ...), left out of the
    front matter when None."""
    card = model_card(out_dir, src, meta, export, name=name, license=license)
    path = Path(out_dir) / CARD_FILE
    card.save(path)
    return path


def model_card(
    out_dir: Path,
    src: Path,
    meta: dict[str, Any],
    export: dict[str, Any],
    *,
    name: str,
    license: Optional[str] = None,
) -> ModelCard:
    """The card of :func:`write_model_card`, not written."""
    out_dir = Path(out_dir)
    hf_config = json.loads((out_dir / "config.json").read_text())
    history = read_history(Path(src), meta)
    vocab = int(export["model"]["vocab_size"])
    data_sections = _data_sections(history)
    records = {id(section): datasets(section, vocab) for _, section in data_sections}
    grown = any(s.growth is not None for s in history.stages)
    remote_code = "auto_map" in hf_config
    tags = ["flm-grow", str(hf_config.get("model_type")), *(["custom_code"] if remote_code else [])]
    tags += ["model-growth"] if grown else []
    hub = sorted({r.hub_dataset for rs in records.values() for r in rs if r.hub_dataset})
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=tags,
        license=license,
        datasets=hub or None,
    )
    body = [
        *_title(history, meta, export, src),
        *_usage(name, remote_code, export),
        *_architecture(export, hf_config, _stored_params(out_dir)),
        *_tokenizer(export.get("tokenizer")),
        *_growth(history),
        *_data(data_sections, records),
        *_evaluation(history),
        *_export(export, src, license),
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")


# ---------------------------------------------------------------- sections
def _title(h: RunHistory, meta: dict[str, Any], export: dict[str, Any], src: Path) -> list[str]:
    stage = f"stage {h.last.index} `{h.last.name}`, " if h.staged else ""
    lines = [
        f"# {h.name or Path(src).name}",
        "",
        "A decoder language model trained with flm-grow "
        f"({stage}step {h.step}, {h.tokens_seen:,} tokens seen), exported as `{export['architecture']}` "
        f"in {export['dtype']}.",
    ]
    if h.staged and len(h.stages) > 1:
        lines[-1] += (
            f" It was grown in {len(h.stages)} stages: each stage started from the previous stage's final "
            "model, grown in width or depth by the operators below."
        )
    imported = meta.get("hf_import")
    if imported:
        lines += [
            "",
            f"This checkpoint was written by `flm import-hf` from the Hugging Face model `{imported.get('source')}`: "
            "its weights were not trained by flm-grow.",
        ]
    if not h.found:
        lines += [
            "",
            f"The run directory recorded in the checkpoint, `{h.recorded_dir}`, was not on the exporting machine: "
            "the growth history, validation loss and evaluation results below are limited to what the checkpoint "
            "itself records.",
        ]
    return [*lines, ""]


def _usage(name: str, remote_code: bool, export: dict[str, Any]) -> list[str]:
    trust = ", trust_remote_code=True" if remote_code else ""
    lines = ["## Use", "", "```python", "from transformers import AutoModelForCausalLM"]
    if export.get("tokenizer"):
        lines += ["from transformers import AutoTokenizer", f'tokenizer = AutoTokenizer.from_pretrained("{name}")']
    lines += [f'model = AutoModelForCausalLM.from_pretrained("{name}"{trust})', "```", ""]
    if remote_code:
        lines += [
            "`FLMForCausalLM` is flm-grow's own model code (`modeling_flm.py`, `configuration_flm.py` in this "
            "directory): it computes the variants no standard transformers class computes (xPos, ...). It loads "
            "with `trust_remote_code=True`, generates with a KV cache and dispatches with accelerate's "
            "`device_map`.",
            "",
        ]
    return lines


def _architecture(export: dict[str, Any], hf_config: dict[str, Any], stored: int) -> list[str]:
    m = export["model"]
    heads = int(m["num_attention_heads"])
    groups = m.get("num_query_groups") or heads
    head_dim = m.get("kv_channels") or int(m["hidden_size"]) // heads
    position = (
        f"xPos (RoPE base {m['rotary_base']}, scale base {m['xpos_scale_base']})"
        if m["position_embedding"] == "xpos"
        else f"RoPE (base {m['rotary_base']})"
    )
    mup = m.get("mup")
    rows = [
        ("transformers class", f"`{export['architecture']}` (`model_type: {hf_config.get('model_type')}`)"),
        ("parameters", f"{stored:,} (stored in the safetensors files)"),
        ("layers", m["num_layers"]),
        ("hidden size", m["hidden_size"]),
        ("FFN size", f"{m['ffn_hidden_size']} ({m['activation']})"),
        ("attention heads", f"{heads} ({groups} key/value groups, head dim {head_dim})"),
        ("position encoding", position),
        ("normalization", f"{m['normalization']} (eps {m['norm_eps']})"),
        ("biases", "yes" if m["bias"] else "no"),
        ("context length", m["seq_length"]),
        ("vocabulary", m["vocab_size"]),
        ("input / output embeddings", "tied" if m["tie_embeddings"] else "untied"),
        ("μP", "no (standard parametrisation)" if not mup else f"yes, base width {mup.get('base_width')} (folded)"),
        ("dtype", export["dtype"]),
    ]
    return ["## Architecture", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]


def _tokenizer(tok: Optional[dict[str, Any]]) -> list[str]:
    if not tok:
        return [
            "## Tokenizer",
            "",
            "No tokenizer in this directory (exported with `--no-tokenizer`): the model reads token ids; "
            "use the tokenizer of its training data.",
            "",
        ]
    rows = [
        ("kind", tok.get("kind")),
        ("vocabulary", tok.get("vocab_size")),
        ("SHA-256", f"`{tok.get('sha256')}`"),
        ("source", f"`{tok.get('source')}`"),
    ]
    specials = tok.get("special_tokens")
    if specials:
        rows.append(("special tokens", ", ".join(f"{k}: `{v}`" for k, v in specials.items() if v is not None)))
    if tok.get("limitation"):
        rows.append(("note", tok["limitation"]))
    return ["## Tokenizer", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]


def _shape(model: dict[str, Any]) -> str:
    if not model:
        return _NOT_RECORDED
    return (
        f"{model['num_layers']} layers × {model['hidden_size']}, FFN {model['ffn_hidden_size']}, "
        f"{model['num_attention_heads']} heads"
    )


def _entered(s: StageHistory) -> str:
    """How the stage began: from scratch, or the growth operators per grown dimension."""
    if s.growth is None:
        return "trained from scratch" if s.index == 0 else f"{_NOT_RECORDED} (no `grown/` checkpoint)"
    plan = s.growth.get("plan") or {}
    old, new, ops = plan.get("old") or {}, plan.get("new") or {}, plan.get("operators") or {}
    grown = [
        f"{key} {old.get(key)} → {new.get(key)} ({ops[dim]})"
        for dim, key in _DIMS.items()
        if ops.get(dim, "none") != "none" and old.get(key) != new.get(key)
    ]
    text = "grown: " + ("; ".join(grown) if grown else "no dimension changed")
    ramp = (plan.get("ramp") or {}).get("steps")
    if (s.growth.get("masks") or {}) and ramp:
        text += f"; MSG masks ramped over {ramp} steps"
    if not s.growth.get("exact", plan.get("exact", True)):
        text += "; not function-preserving (inexact operator)"
    return text


def _checks(s: StageHistory) -> str:
    """The transition checks into a grown stage (float64 reference, then the engine's)."""
    if s.growth is None:
        return "–"
    parts = []
    verify = s.growth.get("verify")
    ref = s.reference_check
    if verify is not None:
        # without growth.json (a checkpoint of `flm grow`): an exact plan's grown checkpoint exists only
        # if the check passed (grow_checkpoint refuses to write it otherwise)
        preserved = ref.get("preserved") if ref is not None else bool(s.growth.get("exact"))
        kept = "preserved" if preserved else "NOT preserved"
        parts.append(
            f"float64 reference: {kept}, max abs Δlogit {verify['max_abs_dlogit']:.1e}, abs Δloss {verify['abs_dloss']:.1e}"
        )
    else:
        parts.append("float64 reference check not run")
    c = s.engine_check
    if c is not None:
        ok = "preserved" if c.get("preserved") else "NOT preserved"
        parts.append(
            f"engine ({c['old_layout']} {c['old_precision']} → {c['new_layout']} {c['new_precision']}): {ok}, "
            f"rel Δloss {c['rel_dloss']:.1e} (tolerance {c['tolerance']:g})"
        )
    else:
        parts.append(f"engine check {_NOT_RECORDED}")
    return "; ".join(parts)


def _val(v: Optional[Validation]) -> str:
    return "–" if v is None else f"{v.loss:.4f} (step {v.step})"


def _num(x: Optional[int]) -> str:
    return _NOT_RECORDED if x is None else f"{x:,}"


def _growth(h: RunHistory) -> list[str]:
    lines = ["## Growth history", ""]
    if not h.staged and h.last.growth is None:
        lines += ["Trained in a single stage (no growth).", ""]
    lines += [
        "| stage | name | model | parameters | tokens | steps | entered | transition checks | validation loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in h.stages:
        steps = _NOT_RECORDED if s.steps is None else f"{s.steps_done:,} of {s.steps:,}"
        lines.append(
            f"| {s.index} | {s.name} | {_shape(s.model)} | {_num(s.params)} | {_num(s.tokens)} | {steps} | "
            f"{_entered(s)} | {_checks(s)} | {_val(s.validation)} |"
        )
    total = sum(s.tokens for s in h.stages if s.tokens is not None)
    lines += [
        "",
        f"Tokens: trained in each stage (the last stage up to this checkpoint); {total:,} in all. Parameters: "
        "as trained (the embedding padded to a multiple of `make_vocab_size_divisible_by`). Transition checks: "
        "the grown model computes the previous stage's function (the float64 reference forward on a fixed batch, "
        "and the training engine's loss on the same batch under the new layout and precision).",
        "",
    ]
    return lines


def _data_sections(h: RunHistory) -> list[tuple[list[int], dict[str, Any]]]:
    """The distinct ``data:`` sections of the stages, each with the stages that read it."""
    out: list[tuple[list[int], dict[str, Any]]] = []
    for s in h.stages:
        if s.data is None:
            continue
        for stages, section in out:
            if section == s.data:
                stages.append(s.index)
                break
        else:
            out.append(([s.index], s.data))
    return out


def _dataset_row(r: DatasetRecord) -> str:
    m = r.manifest
    if m is None:
        return f"| `{r.path}` | {r.weight:g} | unknown: no `manifest.json` there on the exporting machine | | | |"
    source = ((m.get("source") or {}).get("description")) or ""
    return (
        f"| `{r.path}` | {r.weight:g} | `{r.fingerprint}` | {m.get('documents', 0):,} | {m.get('tokens', 0):,} | "
        f"{source} |"
    )


def _data(sections: list[tuple[list[int], dict[str, Any]]], records: dict[int, list[DatasetRecord]]) -> list[str]:
    lines = ["## Training data", ""]
    if not sections:
        return [*lines, f"The data the run read is {_NOT_RECORDED} in what the exporting machine holds.", ""]
    for stages, section in sections:
        who = (
            "All stages"
            if len(sections) == 1
            else "Stage" + ("s " if len(stages) > 1 else " ") + ", ".join(map(str, stages))
        )
        kind = section.get("kind", "mock")
        if kind == "mock":
            lines += [
                f"{who}: seeded random tokens (`data.kind: mock`, seed {section.get('seed')}): a test run, not "
                "trained on text.",
                "",
            ]
            continue
        what = (
            f"the embedded default corpus (`data.kind: default`, `{section.get('default_corpus', 'small')}` selection)"
            if kind == "default"
            else "prepared datasets (`data.kind: prepared`)"
        )
        lines += [
            f"{who}: {what}, sample order seed {section.get('seed')}, "
            f"{section.get('validation_fraction')} of each dataset's documents held out for validation.",
            "",
            "| dataset | weight | fingerprint | documents | tokens | source |",
            "|---|---|---|---|---|---|",
            *(_dataset_row(r) for r in records[id(section)]),
            "",
        ]
    if any(records[id(section)] for _, section in sections):
        lines += [
            "Fingerprints: each dataset's `manifest.json` (corpus contents + tokenizer), read when this card was "
            "written.",
            "",
        ]
    return lines


def _evaluation(h: RunHistory) -> list[str]:
    s = h.last
    lines = ["## Evaluation", ""]
    v = s.validation
    if v is None:
        lines.append(
            f"Validation loss: none recorded at or before step {h.step} of this "
            f"{'stage' if h.staged else 'run'} (`{s.dir / METRICS_FILE}`; validation runs every "
            "`train.eval_interval` steps and at a stage's last step)."
        )
    else:
        at = (
            "this checkpoint's step"
            if v.step == h.step
            else f"the last validation before this checkpoint's step {h.step}"
        )
        lines.append(f"Validation loss: **{v.loss:.4f}** at step {v.step} ({at}), on the run's held-out samples.")
    lines += ["", *_iq(s, h), ""]
    earlier = [(t, t.evaluation["iq"]) for t in h.stages[:-1] if t.evaluation and "iq" in t.evaluation]
    if earlier:
        lines += ["IQ at the end of earlier stages:", ""]
        lines += [f"- stage {t.index} `{t.name}`: FLM IQ {_pct(iq.get('flm_iq'))}" for t, iq in earlier]
        lines.append("")
    return lines


def _pct(x: Optional[float]) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _iq(s: StageHistory, h: RunHistory) -> list[str]:
    rec = s.evaluation
    if rec is None:
        return [
            f"IQ benchmark: no results for this checkpoint (`{s.dir / EVAL_FILE}` has no record of step {h.step}). "
            f"Score it with `flm eval {h.recorded_dir}`, or this directory with `flm iq --model hf --model-path DIR`."
        ]
    if "iq" not in rec:
        return [f"IQ benchmark: not scored — {rec.get('skipped')}."]
    iq = rec["iq"]
    head = (
        f"IQ benchmark (`flm eval`, this project's reconstruction of the FLM-101B IQ tests, not the paper's "
        f"instances): FLM IQ **{_pct(iq.get('flm_iq'))}**"
        + ("" if iq.get("complete") else " (partial: not every category was scored)")
        + "."
    )
    rows = [f"| {name} | {_pct(acc)} | {iq.get('n', {}).get(name)} |" for name, acc in iq.get("subtasks", {}).items()]
    cats = ", ".join(f"{c} {_pct(a)}" for c, a in iq.get("categories", {}).items())
    lines = [head, "", f"Categories: {cats or 'none'}.", "", "| subtask | accuracy | n |", "|---|---|---|", *rows]
    if iq.get("skipped"):
        lines += ["", f"Skipped subtasks (data not available): {', '.join(iq['skipped'])}."]
    return lines


def _export(export: dict[str, Any], src: Path, license: Optional[str]) -> list[str]:
    check = export.get("check")
    if check is None:
        round_trip = "not run (export with `--check`)"
    else:
        ok = "within" if check.get("within") else "NOT within"
        round_trip = (
            f"max abs Δlogit {check['max_abs_dlogit']:.2e} against the project model ({check['dtype']}), "
            f"{ok} the tolerance {check['tolerance']:g} · (1 + max |logit|)"
        )
    folded = ", ".join(f"{k} {v}" for k, v in (export.get("folded") or {}).items())
    return [
        "## Export",
        "",
        f"- source checkpoint: `{src}` (step {export.get('step')})",
        f"- folded into the weights: {folded or 'nothing'}",
        f"- round-trip check: {round_trip}",
        f"- license: {license or 'not stated (export with `--license ID`)'}",
        "- details: `flm_export.json`",
    ]


def _stored_params(out_dir: Path) -> int:
    """Elements of every tensor in the directory's safetensors files (headers only)."""
    total = 0
    for path in sorted(out_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                n = 1
                for d in f.get_slice(key).get_shape():
                    n *= d
                total += n
    return total
