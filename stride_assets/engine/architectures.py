"""Real model architectures, built locally: the shapes users bring, with weights made here.

``ARCHITECTURES`` holds the published configs of two real models:

- ``gpt2-124m``: ``transformers.GPT2Config()``'s defaults, i.e. GPT-2 small (12 layers, n_embd 768,
  12 heads, 50,257 tokens, 1,024 positions, tied head);
- ``qwen2.5-0.5b``: Qwen2.5-0.5B's shape as a ``Qwen2Config`` (hidden 896, 24 layers, 14 query and
  2 key/value heads, intermediate 4,864, 151,936 tokens, tied embeddings, rope_theta 1e6, 32,768
  positions, rms_norm_eps 1e-6): the Llama/Qwen family (RMSNorm, SwiGLU, rotary, grouped-query attention).

``build`` makes one of them, saves it with ``save_pretrained`` (safetensors) together with a
tokenizer, and returns the folder, which ``model.path`` then loads exactly as it loads a user's
model (``lm.load_model``: ``AutoTokenizer`` + ``AutoModelForCausalLM``).

What these are: models with the real classes, widths, vocabulary sizes, head counts, norms and
position schemes (``layers`` may reduce depth, nothing else), so that code paths, memory and time
scale as they would on the real model. What they are NOT: the released models. No weights can be
downloaded here, so the weights are a seeded random initialisation, optionally trained briefly
(``train_steps``) on the given texts, and the tokenizer is a byte-level BPE learned on those texts
(``lm.train_tokenizer``), not GPT-2's or Qwen's: it has at most as many tokens as the corpus allows,
never more than the model's embedding rows, while the model keeps its real vocabulary size (rows
the tokenizer never produces are simply unused). Attribution quality measured on them says nothing
about the released models; cost, memory and robustness do carry over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import AutoModelForCausalLM, GPT2Config, PretrainedConfig, Qwen2Config

from stride_assets.engine import lm
from stride_assets.engine.errors import StrideConfigError, StrideInputError


@dataclass(frozen=True)
class Architecture:
    """A real config: its class, the published values, and the name of its depth field."""

    config_class: type[PretrainedConfig]
    values: dict[str, Any] = field(default_factory=dict)
    depth_key: str = "num_hidden_layers"
    source: str = ""

    def config(self, layers: int | None = None, **overrides: Any) -> PretrainedConfig:
        """The config, with ``layers`` decoder layers instead of the published depth if given."""
        values = dict(self.values, **overrides)
        if layers is not None:
            if layers < 1:
                raise StrideConfigError(f"layers must be >= 1 (got {layers})")
            values[self.depth_key] = layers
        return self.config_class(**values)


ARCHITECTURES: dict[str, Architecture] = {
    "gpt2-124m": Architecture(
        GPT2Config,
        # the class defaults are GPT-2 small; spelled out so the table reads as the shape it is
        dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024, tie_word_embeddings=True),
        depth_key="n_layer",
        source="transformers.GPT2Config() defaults (openai-community/gpt2)",
    ),
    "qwen2.5-0.5b": Architecture(
        Qwen2Config,
        dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
             intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, rope_theta=1e6,
             max_position_embeddings=32768, rms_norm_eps=1e-6, hidden_act="silu", max_window_layers=24),
        depth_key="num_hidden_layers",
        source="Qwen/Qwen2.5-0.5B config.json (shape only)",
    ),
}


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise StrideConfigError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def config(name: str, layers: int | None = None, **overrides: Any) -> PretrainedConfig:
    """The transformers config of ``name`` (``layers`` overrides depth; ``overrides`` any other field)."""
    return architecture(name).config(layers, **overrides)


def param_count(name: str, layers: int | None = None, **overrides: Any) -> int:
    """Parameters of the model (tied weights counted once), from its config alone: built on the
    ``meta`` device, so no weights are allocated."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config(name, layers, **overrides))
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once


def build(
    name: str,
    out_dir: str | Path,
    texts: list[str],
    *,
    layers: int | None = None,
    seed: int = 0,
    train_steps: int = 0,
    batch_size: int = 8,
    lr: float = 1e-3,
    max_length: int = 64,
    tokenizer_vocab: int | None = None,
    overrides: dict[str, Any] | None = None,
    log: Callable[[str], Any] = print,
) -> Path:
    """Build architecture ``name`` with seeded random weights, optionally train it briefly, save it.

    The tokenizer is a byte-level BPE learned on ``texts`` with as many tokens as they allow, at most
    the model's vocabulary (or ``tokenizer_vocab``); the model keeps its real vocabulary size. With
    ``train_steps`` > 0 the model is fitted for that many AdamW steps (``lm.train_lm``, ``batch_size``
    examples of at most ``max_length`` tokens, peak ``lr``). Model and tokenizer are written into
    ``out_dir`` atomically with ``save_pretrained`` (``lm.save_model``); returns ``out_dir``.
    ``overrides`` changes config fields other than depth (e.g. a smaller ``intermediate_size``).
    """
    if not texts:
        raise StrideInputError("cannot build a model without texts (its tokenizer is learned on them)")
    if train_steps < 0:
        raise StrideConfigError(f"train_steps must be >= 0 (got {train_steps})")
    cfg = config(name, layers, **(overrides or {}))
    vocab = cfg.vocab_size if tokenizer_vocab is None else min(tokenizer_vocab, cfg.vocab_size)
    tokenizer = lm.train_tokenizer(list(texts), vocab)
    if len(tokenizer) > cfg.vocab_size:  # cannot happen (the trainer stops at vocab); never save a mismatch
        raise StrideInputError(f"tokenizer of {len(tokenizer)} tokens for a model of {cfg.vocab_size} rows")
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(cfg, key, getattr(tokenizer, key))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{name}: {type(model).__name__}, {cfg.num_hidden_layers} layers, {n_params:,} parameters, "
        f"model vocab {cfg.vocab_size:,}, tokenizer {len(tokenizer):,} tokens")
    if train_steps:
        batch = lm.encode_batch(tokenizer, list(texts), max_length)
        lm.train_lm(model, batch["input_ids"], batch["attention_mask"], steps=train_steps, batch_size=batch_size,
                    lr=lr, weight_decay=0.01, seed=seed, log_every=max(1, train_steps // 10), log=log)
    return lm.save_model(model.to("cpu"), tokenizer, Path(out_dir))
