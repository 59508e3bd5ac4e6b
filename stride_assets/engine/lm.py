"""The frozen base language model: a tiny GPT-2 trained here, or any transformers causal LM.

The default needs no network: ``train_tokenizer`` learns a byte-level BPE on the corpus,
``build_tiny_gpt2`` makes a small GPT-2 for it and ``train_lm`` fits it (AdamW, warmup +
cosine). ``load_model`` / ``save_model`` move models to and from disk (safetensors), and
``example_losses`` scores examples. Every function is deterministic given its seed on CPU.
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as _hf_logging

from stride_assets.engine.artifacts import atomic_dir
from stride_assets.engine.config import TinyModelConfig
from stride_assets.engine.errors import StrideConfigError, StrideInputError
from stride_assets.engine.formats import scored_texts
from stride_assets.engine.losses import check_finite, sequence_nll, token_nll

_hf_logging.disable_progress_bar()  # per-shard progress bars only clutter pipeline logs

EOS = "<|endoftext|>"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


MAX_WORD_CHARS = 256  # longer whitespace-free runs are cut for tokenizer training (BPE merges are quadratic in them)


def _bounded_words(text: str) -> str:
    """``text`` with every run of more than ``MAX_WORD_CHARS`` non-space characters broken by spaces."""
    return re.sub(rf"\S{{{MAX_WORD_CHARS + 1},}}",
                  lambda m: " ".join(m.group()[i:i + MAX_WORD_CHARS] for i in range(0, len(m.group()), MAX_WORD_CHARS)),
                  text)


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style) learned from ``texts``; deterministic.

    ``<|endoftext|>`` is the only special token and serves as bos, eos, pad and unk. The
    vocabulary always holds the 256 byte symbols, so any text encodes.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if not texts:
        raise StrideInputError("cannot train a tokenizer on zero texts")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((_bounded_words(t) for t in texts), trainer=trainer, length=len(texts))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS, unk_token=EOS, padding_side="right"
    )


def build_tiny_gpt2(tokenizer: Any, cfg: TinyModelConfig, max_length: int) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 sized by ``cfg`` (seeded by ``cfg.seed``), without dropout."""
    if cfg.n_embd % cfg.n_head:
        raise StrideConfigError(f"tiny model: n_embd={cfg.n_embd} must be divisible by n_head={cfg.n_head}")
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=max_length,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    return GPT2LMHeadModel(config).eval()


def encode(tokenizer: Any, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask)``, truncated to ``max_length`` tokens.

    Every text must give at least 2 tokens (one next-token target).
    """
    batch = _tokenize(tokenizer, texts, max_length, offsets=False)
    return batch["input_ids"], batch["attention_mask"]


def _tokenize(tokenizer: Any, texts: list[str], max_length: int, offsets: bool) -> dict[str, torch.Tensor]:
    if not texts:
        raise StrideInputError("cannot encode zero texts")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise StrideInputError(f"text {bad} is {type(texts[bad]).__name__}, not a string")
    if offsets and not getattr(tokenizer, "is_fast", False):
        raise StrideInputError(f"completion-only loss needs a fast tokenizer (offset mapping); "
                               f"{type(tokenizer).__name__} is not one")
    batch = tokenizer(
        list(texts), padding="longest", truncation=True, max_length=max_length,
        padding_side="right", return_tensors="pt", return_offsets_mapping=offsets,
    )
    out = {k: v.long() for k, v in batch.items() if k in ("input_ids", "attention_mask", "offset_mapping")}
    short = (out["attention_mask"].sum(1) < 2).nonzero().flatten()
    if len(short):
        i = int(short[0])
        raise StrideInputError(
            f"{len(short)} text(s) encode to fewer than 2 tokens (no next-token target), e.g. text {i}: {texts[i][:60]!r}"
        )
    return out


def encode_batch(tokenizer: Any, texts: list[str], max_length: int, device: str | None = None,
                 starts: list[int] | None = None, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """``encode`` as the batch dict the sites take (``input_ids``, ``attention_mask``), on ``device``.

    With ``starts`` (each text's completion start, a character offset; ``formats``) the batch also
    carries ``loss_mask`` (N, T): 1 on the tokens that overlap the completion, which every loss then
    scores alone. A row whose completion ``max_length`` truncates away is an error naming it
    (``names[i]``, else its index).
    """
    if starts is not None and len(starts) != len(texts):
        raise StrideInputError(f"{len(starts)} completion starts for {len(texts)} texts")
    batch = _tokenize(tokenizer, texts, max_length, offsets=starts is not None)
    if starts is not None:
        ends = batch.pop("offset_mapping")[..., 1]
        start = torch.as_tensor(starts, dtype=torch.long).unsqueeze(1)
        batch["loss_mask"] = batch["attention_mask"] * ((ends > start) | (start <= 0)).long()
        empty = (batch["loss_mask"][:, 1:].sum(1) == 0).nonzero().flatten()
        if len(empty):
            i = int(empty[0])
            name = names[i] if names is not None else f"text {i}"
            raise StrideInputError(
                f"{len(empty)} row(s) have no completion token left after truncation to model.max_length="
                f"{max_length} tokens, e.g. {name}: its prompt fills them all; raise model.max_length or shorten the "
                "prompt")
    return batch if device is None else {k: v.to(device) for k, v in batch.items()}


def frame_batch(tokenizer: Any, frame: Any, max_length: int, device: str | None = None) -> dict[str, torch.Tensor]:
    """``encode_batch`` of a corpus or query frame: its ``text`` and, for instruction and chat rows,
    ``completion_start`` (chat rows rendered by the tokenizer's template if it has one; ``formats``)."""
    texts, starts = scored_texts(frame, tokenizer)
    id_col = next((c for c in ("example_id", "query_id") if c in frame.columns), None)
    names = None if id_col is None else [f"row {v!r}" for v in frame[id_col].to_list()]
    return encode_batch(tokenizer, texts, max_length, device, starts=starts, names=names)


def _freeze(model: PreTrainedModel) -> PreTrainedModel:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def warmup_cosine(step: int, steps: int) -> float:
    """Linear warmup over the first 5% of steps, then cosine decay to 0."""
    warmup = max(1, round(0.05 * steps))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_lm(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    device: str = "cpu",
    log_every: int = 50,
    log: Callable[[str], Any] = print,
    on_step: Callable[[int, float], Any] | None = None,
    loss_mask: torch.Tensor | None = None,
) -> list[dict[str, float]]:
    """Fit ``model`` to next-token prediction on the examples; return the loss curve.

    Each step draws ``batch_size`` distinct examples with a seeded generator; the loss is the mean
    NLL over real target tokens of the batch. Weight decay applies to matrices only (not biases or
    norms); gradients are clipped to norm 1. The curve holds ``{"step", "loss"}`` at step 0, every
    ``log_every`` steps and the last step. The model ends frozen (eval mode, no grads) on ``device``.
    ``on_step(step, lr)``, if given, runs after every optimizer step with the learning rate that step
    used (e.g. to keep checkpoints for TracIn). ``loss_mask`` (N, T), if given, restricts the loss to
    the scored (completion) tokens (``encode_batch`` with completion starts).
    """
    if steps < 1 or batch_size < 1 or log_every < 1:
        raise StrideConfigError(f"steps, batch_size and log_every must be >= 1 (got {steps}, {batch_size}, {log_every})")
    model.to(device).train()
    for p in model.parameters():
        p.requires_grad_(True)
    params = [p for p in model.parameters()]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, steps))
    gen = torch.Generator().manual_seed(seed)
    n = input_ids.shape[0]
    curve: list[dict[str, float]] = []
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.randperm(n, generator=gen)[: min(batch_size, n)]
        mask = attention_mask[idx]
        width = int(mask.sum(1).max())  # crop the batch to its longest example
        ids, mask = input_ids[idx, :width].to(device), mask[:, :width].to(device)
        scored = None if loss_mask is None else loss_mask[idx, :width].to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        nll, weights = token_nll(logits, ids, mask, scored)
        loss = check_finite(nll.sum() / weights.sum().clamp_min(1.0), f"base-model training loss at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if on_step is not None:
            on_step(step, opt.param_groups[0]["lr"])
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            value = loss.item()
            curve.append({"step": step, "loss": value})
            log(f"lm step {step + 1}/{steps} loss {value:.4f} ({time.perf_counter() - start:.1f}s)")
    _freeze(model)
    return curve


@torch.no_grad()
def example_losses(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, batch_size: int = 64,
    device: str = "cpu", loss_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean next-token NLL of each example (over its ``loss_mask`` tokens if given), shape (N,), float32 on
    the CPU (moves ``model`` to ``device``)."""
    model.to(device)
    out = []
    for i in range(0, input_ids.shape[0], batch_size):
        mask = attention_mask[i : i + batch_size]
        width = int(mask.sum(1).max())
        ids, mask = input_ids[i : i + batch_size, :width].to(device), mask[:, :width].to(device)
        scored = None if loss_mask is None else loss_mask[i : i + batch_size, :width].to(device)
        out.append(sequence_nll(model(input_ids=ids, attention_mask=mask).logits, ids, mask, scored).float().cpu())
    return torch.cat(out)


def _looks_local(path: str) -> bool:
    """A filesystem path rather than a hub id ("name" or "org/name")."""
    return path.startswith(("/", ".", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path


def check_model_path(path: str | None, tokenizer_path: str | None = None) -> None:
    """Cheap early check (no loading): a local-looking model/tokenizer path must be an existing folder."""
    for p in (path, tokenizer_path):
        if p is not None and _looks_local(p) and not Path(p).expanduser().is_dir():
            raise StrideInputError(f"model path {p!r} could not be loaded: it is not an existing local folder")


def load_model(
    path: str, *, tokenizer_path: str | None = None, trust_remote_code: bool = False, dtype: str = "float32"
) -> tuple[PreTrainedModel, Any]:
    """A frozen causal LM and its tokenizer from a local folder or a hub id.

    A tokenizer without a pad token gets its eos token as pad. Raises ``StrideInputError`` when a
    path cannot be loaded or the tokenizer has more tokens than the model's embedding rows.
    """
    if dtype not in DTYPES:
        raise StrideConfigError(f"dtype {dtype!r} not one of {sorted(DTYPES)}")
    for p in (path, tokenizer_path or path):
        if _looks_local(p) and not Path(p).expanduser().is_dir():
            raise StrideInputError(f"model path {p!r} could not be loaded: it is not an existing local folder")
    current = tokenizer_path or path
    try:
        tokenizer = AutoTokenizer.from_pretrained(current, trust_remote_code=trust_remote_code)
        current = path
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code, dtype=DTYPES[dtype])
    except (OSError, ValueError) as exc:
        raise StrideInputError(
            f"model path or hub id {current!r} could not be loaded: not a local folder, and not available "
            f"from the Hugging Face hub (offline?) [{type(exc).__name__}: {exc}]"
        ) from exc
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise StrideInputError(
            f"tokenizer {tokenizer_path or path!r} has {len(tokenizer)} tokens but model {path!r} has only "
            f"{rows} embedding rows: they do not belong together"
        )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise StrideInputError(f"tokenizer {tokenizer_path or path!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return _freeze(model), tokenizer


def save_model(model: PreTrainedModel, tokenizer: Any, path: Path) -> Path:
    """Write model (safetensors) and tokenizer into ``path`` atomically; ``load_model`` reads it back."""
    with atomic_dir(Path(path)) as tmp:
        model.save_pretrained(tmp)  # transformers 5 always writes safetensors (no safe_serialization flag)
        tokenizer.save_pretrained(tmp)
    return Path(path)

