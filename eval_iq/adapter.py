"""lm-eval adapter for causal LMs behind a minimal backend interface (project checkpoints).

:class:`CausalLMBackend` is all a model has to provide; :class:`BackendLM` turns it into a
batched lm-eval ``LM`` (``loglikelihood``, ``loglikelihood_rolling``, greedy ``generate_until``)
that reproduces the arithmetic of lm-eval's ``hf`` backend: same context/continuation split
(``TemplateLM._encode_pair``), same left truncation to ``max_length + 1`` tokens, same rolling
windows, same stop-sequence post-processing. :class:`HFBackend` wraps a ``transformers`` causal
LM and tokenizer (used by the tests to check the adapter against the ``hf`` backend);
:func:`load_project_backend` obtains a backend for a project checkpoint from
``training.apps.iq_backend.load_backend``.

Generation re-runs the full sequence every step (the interface has no KV cache): correct for any
causal model, quadratic in the generated length. Batches are right-padded; causality makes the
padding invisible to the positions that are read, so the interface needs no attention mask.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
import transformers
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import (
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
    resolve_max_length,
)
from tqdm import tqdm

from eval_iq.errors import BackendUnavailableError


@runtime_checkable
class CausalLMBackend(Protocol):
    """What :class:`BackendLM` needs from a model.

    * ``logits(tokens)``: ``LongTensor[b, s]`` -> ``FloatTensor[b, s, V]``, next-token logits of a
      causal model (position ``t`` sees tokens ``0..t`` only). No gradients needed.
    * ``eos_token_id``: end-of-text id (stops generation; lm-eval's EOT).
    * ``max_length``: longest sequence the model accepts.
    * ``encode(text)``: token ids exactly as the model was trained to see text (no implicit BOS
      unless the model always expects one). ``decode(ids)``: text, special tokens dropped.

    Optional: ``bos_token_id`` (prefix for empty contexts and rolling windows; default
    ``eos_token_id``) and ``device`` (where input tensors go; default CPU).
    """

    eos_token_id: int
    max_length: int

    def logits(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, tokens: list[int]) -> str: ...


REQUIRED = ("logits", "encode", "decode", "eos_token_id", "max_length")


def check_backend(backend: Any) -> None:
    """Raise BackendUnavailableError naming every missing part of the interface."""
    missing = [name for name in REQUIRED if not hasattr(backend, name)]
    if missing:
        raise BackendUnavailableError(
            f"{type(backend).__name__} is not a CausalLMBackend: missing {', '.join(missing)} "
            f"(see eval_iq.adapter.CausalLMBackend)"
        )


class BackendLM(TemplateLM):
    """Batched lm-eval model over a :class:`CausalLMBackend` (greedy decoding only)."""

    def __init__(self, backend: CausalLMBackend, batch_size: int = 8, max_gen_toks: int = 256) -> None:
        super().__init__()
        check_backend(backend)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # not `self.backend`: lm-eval's TemplateLM.backend = "causal" selects how context and
        # continuation are tokenised together; shadowing it switches to the seq2seq path
        self.model_backend = backend
        self.batch_size = int(batch_size)
        self._max_gen_toks = int(max_gen_toks)

    # ------------------------------------------------------------------ tokenizer plumbing
    @property
    def eot_token_id(self) -> int:
        return int(self.model_backend.eos_token_id)

    @property
    def prefix_token_id(self) -> int:
        bos = getattr(self.model_backend, "bos_token_id", None)
        return int(bos) if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return int(self.model_backend.max_length)

    @property
    def device(self) -> torch.device:
        return torch.device(getattr(self.model_backend, "device", "cpu"))

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return list(self.model_backend.encode(string))

    def tok_decode(self, tokens: Iterable[int]) -> str:
        return self.model_backend.decode(list(tokens))

    def _logprobs(self, rows: list[list[int]]) -> torch.Tensor:
        """Right-pad ``rows``, run the backend, return float32 log-probs ``[b, s, V]``."""
        width = max(len(r) for r in rows)
        batch = torch.full((len(rows), width), self.eot_token_id, dtype=torch.long)
        for i, r in enumerate(rows):
            batch[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        with torch.no_grad():
            logits = self.model_backend.logits(batch.to(self.device))
        if logits.dim() != 3 or tuple(logits.shape[:2]) != (len(rows), width):
            raise ValueError(
                f"backend.logits returned shape {tuple(logits.shape)} for input {tuple(batch.shape)}; "
                f"expected [batch, seq, vocab]"
            )
        return F.log_softmax(logits.float(), dim=-1).cpu()

    # ------------------------------------------------------------------ scoring
    def _loglikelihood_tokens(
        self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: -(len(requests[i][1]) + len(requests[i][2])))
        for start in tqdm(range(0, len(order), self.batch_size), disable=disable_tqdm, desc="loglikelihood"):
            idx = order[start : start + self.batch_size]
            rows, conts = [], []
            for i in idx:
                _, ctx, cont = requests[i]
                if not cont or not ctx:
                    raise ValueError("loglikelihood requests need a non-empty context and continuation")
                if len(cont) > self.max_length:
                    raise ValueError(f"continuation of {len(cont)} tokens exceeds max_length {self.max_length}")
                rows.append((ctx + cont)[-(self.max_length + 1) :][:-1])
                conts.append(cont)
            logp = self._logprobs(rows)
            for b, i in enumerate(idx):
                n, c = len(rows[b]), conts[b]
                sel = logp[b, n - len(c) : n]
                target = torch.tensor(c, dtype=torch.long)
                greedy = bool((sel.argmax(dim=-1) == target).all())
                score = float(sel.gather(1, target.unsqueeze(1)).sum())
                results[i] = (score, greedy)
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
        return [r for r in results if r is not None]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in tqdm(requests, disable=disable_tqdm, desc="loglikelihood_rolling"):
            (string,) = req.args
            windows = [
                (None, *lm_utils.make_disjoint_window(w))
                for w in lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            total = sum(s for s, _ in self._loglikelihood_tokens(windows, disable_tqdm=True)) if windows else 0.0
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            out.append(total)
        return out

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        pbar = tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until")
        for members in groups.values():
            kwargs = normalize_gen_kwargs(dict(requests[members[0]].args[1]), self._max_gen_toks)
            if kwargs.get("do_sample") or float(kwargs.get("temperature", 0.0) or 0.0) > 0.0:
                raise ValueError("BackendLM decodes greedily only; the task asked for sampling")
            until = handle_stop_sequences(kwargs.pop("until", None), eos=None)
            max_gen = int(kwargs.pop("max_gen_toks"))
            max_ctx = self.max_length - max_gen
            if max_ctx <= 0:
                raise ValueError(f"max_gen_toks {max_gen} leaves no room for context (max_length {self.max_length})")
            encoded = {i: self.tok_encode(requests[i].args[0])[-max_ctx:] for i in members}
            order = sorted(members, key=lambda i: -len(encoded[i]))
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                for i, text in zip(idx, self._greedy([encoded[i] for i in idx], until, max_gen)):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                pbar.update(len(idx))
        pbar.close()
        return [r if r is not None else "" for r in results]

    def _greedy(self, contexts: list[list[int]], until: list[str], max_gen: int) -> list[str]:
        seqs = [list(c) for c in contexts]
        generated: list[list[int]] = [[] for _ in contexts]
        active = list(range(len(contexts)))
        for _ in range(max_gen):
            if not active:
                break
            logp = self._logprobs([seqs[i] for i in active])
            still = []
            for b, i in enumerate(active):
                token = int(logp[b, len(seqs[i]) - 1].argmax())
                if token == self.eot_token_id:
                    continue
                seqs[i].append(token)
                generated[i].append(token)
                text = self.tok_decode(generated[i])
                if not any(s and s in text for s in until):
                    still.append(i)
            active = still
        return [postprocess_generated_text(self.tok_decode(g), until, None) for g in generated]


class HFBackend:
    """:class:`CausalLMBackend` over a ``transformers`` causal LM and its tokenizer.

    ``encode`` uses the tokenizer's defaults (as lm-eval's ``hf`` backend does); ``max_length``
    is resolved from the config like lm-eval does unless given.
    """

    def __init__(self, model: Any, tokenizer: Any, max_length: int | None = None) -> None:

        self.model = model.eval()
        self.tokenizer = tokenizer
        if tokenizer.eos_token_id is None:
            raise BackendUnavailableError("the tokenizer has no eos_token_id")
        self.eos_token_id = int(tokenizer.eos_token_id)
        self.bos_token_id = tokenizer.bos_token_id
        self.max_length = int(max_length or resolve_max_length(model.config, tokenizer))
        self.device = next(model.parameters()).device

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", dtype: str = "float32") -> HFBackend:

        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype))
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
        return cls(model.to(device), tokenizer)

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=tokens.to(self.device)).logits

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)


def load_project_backend(checkpoint_dir: str | Path) -> CausalLMBackend:
    """A backend for a project checkpoint, from ``training.apps.iq_backend.load_backend``.

    Raises BackendUnavailableError when the directory is missing or the loader returns something
    that is not a :class:`CausalLMBackend`.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.exists():
        raise BackendUnavailableError(f"checkpoint directory not found: {checkpoint_dir}")
    # optional heavy dependency: the project's checkpoint reader (torch DCP) only for --model flm
    from training.apps.iq_backend import load_backend

    backend = load_backend(checkpoint_dir)
    check_backend(backend)
    return backend
