"""Interoperability with Hugging Face ``transformers``.

- ``flm export-hf CKPT OUT`` (:func:`training.hf.export.export_checkpoint`): a checkpoint saved
  under any TP/PP/DP layout becomes a directory that ``AutoModelForCausalLM.from_pretrained`` and
  ``AutoTokenizer.from_pretrained`` load (safetensors shards, config, tokenizer): a standard
  architecture where one computes the variant (:mod:`training.hf.architectures`), else the
  project's own model code (:mod:`training.hf.flm_arch`, ``trust_remote_code``).
- ``flm import-hf HF_DIR OUT`` (:func:`training.hf.importer.import_hf`): a local Llama, Mistral or
  Qwen2 checkpoint becomes a project checkpoint (logical, loads under any layout with
  ``flm train --init-from``), keeping its tokenizer (:mod:`training.hf.tokenizer`).
- ``flm hf-compare CKPT HF_DIR`` (:func:`training.hf.compare.compare_dirs`), also ``--check`` of
  both commands: the same tokens through both models, prints max |Δlogit|.

Every user-fixable problem raises :class:`training.hf.errors.HFInteropError`, whose message names
the file or setting and the fix. See docs/hf.md.
"""

from training.hf.errors import HFInteropError

__all__ = ["HFInteropError"]
