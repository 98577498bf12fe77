"""``flm export-hf``, ``flm import-hf`` and ``flm hf-compare`` (registered by ``training.cli``).

Exit codes: 0 success, 1 a round-trip check found different logits (a bug), 2 a user error
(message on stderr naming the file and the fix).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from training.hf.errors import HFInteropError

EXPORT_EPILOG = """variants -> architectures (--architecture auto):
  RMSNorm + swiglu (+ GQA, bias, tied/untied)      -> LlamaForCausalLM (no custom code)
  LayerNorm + gelu (+ bias, GQA, tied/untied)      -> GPTNeoXForCausalLM (no custom code)
  LayerNorm + swiglu, no bias                      -> StableLmForCausalLM (no custom code)
  anything else (xpos, RMSNorm + gelu, ...)        -> FLMForCausalLM: the project's model code,
                                                      load with trust_remote_code=True
  --architecture flm exports every variant as FLMForCausalLM; --architecture standard refuses
  variants no standard architecture computes.
example:
  flm export-hf runs/tiny/checkpoints exported/ --check
  python -c "import transformers as t; t.AutoModelForCausalLM.from_pretrained('exported')"
  (FLM exports: from_pretrained('exported', trust_remote_code=True))
"""

IMPORT_EPILOG = """model_type: llama, mistral (sliding_window bounds seq_length), qwen2 (q/k/v biases).
The model's tokenizer is kept: a sentencepiece tokenizer.model, else its Hugging Face tokenizer.json.
example:
  flm import-hf path/to/llama imported/ --layout tp=2 --check
  flm data prepare corpus/ --tokenizer imported/tokenizer --out data/
  flm train configs/runs/tiny.yaml <printed model.* overrides> parallel.tp=2 --nproc 2 --init-from imported/
  flm grow imported/ grown/ --plan plan.yaml --verify
"""


def register(subparsers) -> None:
    e = subparsers.add_parser(
        "export-hf",
        help="export a checkpoint as a Hugging Face transformers model directory",
        description="Write OUT (safetensors, config, tokenizer) from CKPT, a checkpoint saved under any TP/PP "
        "layout. OUT must not exist; nothing is left there on failure.",
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("ckpt", help="checkpoint directory (step_N) or a checkpoint root with a 'latest' file")
    e.add_argument("out", help="new directory for the transformers model")
    e.add_argument(
        "--tokenizer",
        default=None,
        metavar="PATH",
        help="tokenizer directory, .model or tokenizer.json (default: the checkpoint's, from the run's "
        "data config or its import; required for checkpoints trained on mock data)",
    )
    e.add_argument("--no-tokenizer", action="store_true", help="write weights and config only")
    e.add_argument("--dtype", default="auto", help="auto (the checkpoint's), float32, float64, bfloat16, float16")
    e.add_argument("--max-shard-size", default="2GB", help="largest safetensors file (default 2GB)")
    e.add_argument(
        "--architecture",
        default="auto",
        choices=("auto", "standard", "flm"),
        help="auto (default): a standard transformers architecture when one computes the variant, else "
        "the project's own model code (FLMForCausalLM, trust_remote_code); standard; flm",
    )
    e.add_argument(
        "--check",
        action="store_true",
        help="load the result with transformers and compare its logits with the project model's on "
        "random tokens; prints max |dlogit| and fails if they differ",
    )
    e.add_argument(
        "--license",
        default=None,
        type=_license_id,
        metavar="ID",
        help="license of the model, a Hugging Face Hub identifier (apache-2.0, mit, other, ...), stated in "
        "the model card README.md (default: not stated)",
    )
    e.set_defaults(func=_run_export)

    i = subparsers.add_parser(
        "import-hf",
        help="import a local Hugging Face Llama/Mistral/Qwen2 checkpoint as a project checkpoint",
        description="Read HF_DIR (config.json, safetensors, the tokenizer) and write OUT, a checkpoint that "
        "`flm train --init-from` loads under any layout and `flm grow` grows.",
        epilog=IMPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    i.add_argument("hf_dir", help="local transformers model directory (llama, mistral, qwen2)")
    i.add_argument("out", help="new checkpoint directory")
    i.add_argument(
        "--layout",
        default="tp=1,pp=1",
        help="parallel section of the run config: key=value pairs (tp=2,pp=2) or a layout YAML; its tp "
        "sets the vocabulary padding (default tp=1,pp=1)",
    )
    i.add_argument("--dtype", default="float32", help="stored dtype: float32 (default), float64, bfloat16, float16")
    i.add_argument(
        "--seq-length",
        type=int,
        default=None,
        help="model.seq_length (default: max_position_embeddings, at most sliding_window)",
    )
    i.add_argument("--no-tokenizer", action="store_true", help="import the weights only")
    i.add_argument(
        "--check",
        action="store_true",
        help="compare the transformers model's logits with the imported weights' before writing",
    )
    i.set_defaults(func=_run_import)

    c = subparsers.add_parser(
        "hf-compare",
        help="run the same tokens through a checkpoint and a transformers directory",
        description="Prints max |dlogit| between the project model (CKPT, any layout) and HF_DIR on random "
        "tokens; exit 1 if beyond the tolerance (1e-5 float32, 1e-10 float64, relative to 1 + max|logit|).",
    )
    c.add_argument("ckpt")
    c.add_argument("hf_dir")
    c.add_argument("--dtype", default="float32", choices=("float32", "float64", "bfloat16", "float16"))
    c.add_argument("--batch", type=int, default=2)
    c.add_argument("--seq-length", type=int, default=None)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=_run_compare)


def _license_id(value: str) -> str:
    """A Hub license identifier: lowercase letters, digits, ``.``, ``+``, ``-`` (``apache-2.0``)."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a Hugging Face Hub license identifier (lowercase, e.g. apache-2.0, mit, "
            "cc-by-4.0, other; https://huggingface.co/docs/hub/repositories-licenses)"
        )
    return value


def _quiet() -> None:
    import transformers  # startup time: loaded when a command runs, not for `flm --help`

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _run_export(args) -> int:
    from training.hf.export import export_checkpoint  # startup time: transformers loads when the command runs

    _quiet()
    report = export_checkpoint(
        args.ckpt,
        args.out,
        tokenizer=args.tokenizer,
        no_tokenizer=args.no_tokenizer,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        check=args.check,
        architecture=args.architecture,
        license=args.license,
    )
    print(report.summary())
    return 0


def _run_import(args) -> int:
    from training.hf.importer import import_hf  # startup time: transformers loads when the command runs

    _quiet()
    report = import_hf(
        args.hf_dir,
        args.out,
        layout=args.layout,
        dtype=args.dtype,
        seq_length=args.seq_length,
        no_tokenizer=args.no_tokenizer,
        check=args.check,
    )
    print(report.summary())
    return 0


def _run_compare(args) -> int:
    from training.hf.compare import compare_dirs  # startup time: transformers loads when the command runs

    _quiet()
    if not (Path(args.hf_dir) / "config.json").is_file():
        raise HFInteropError(f"{args.hf_dir} has no config.json: not a transformers model directory")
    result = compare_dirs(
        args.ckpt, args.hf_dir, dtype=args.dtype, batch=args.batch, seq_length=args.seq_length, seed=args.seed
    )
    print(result.summary())
    return 1 if result.within is False else 0
