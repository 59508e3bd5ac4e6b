"""Where the operators attach to a frozen model: a *site* turns cached features into logits.

A site has two halves:
- ``encode(batch)``: the frozen features at the attachment point, computed once per example
  and cached (the input of decoder layer ``l`` for the activation form; the final hidden
  state, i.e. the input of the output head, for the logit form);
- ``logits(feats, batch, shift)``: the model's output from those features, with an optional
  shift added at the attachment point (activation form: added to the residual stream at
  layer ``l`` and run through the frozen layers above; head form: added to the final hidden
  state and run through the frozen output head, so an operator is r x d_model whatever the
  vocabulary; logit form: added to the logits, r x V per operator).

Operator training and measurement only ever call ``logits`` on cached features, so the frozen
layers below the hook never run again. ``shift=None`` reproduces the base model exactly.
Works with any transformers causal LM whose decoder layers form one ``nn.ModuleList``
(GPT-2, GPT-J, GPT-NeoX, OPT, Llama, Qwen, Mistral, Gemma, ...).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset

from stride_assets.engine.config import default_layer_index
from stride_assets.engine.errors import StrideConfigError, StrideInputError
from stride_assets.engine.losses import sequence_nll, token_kl

Batch = dict[str, torch.Tensor]


class BatchRows(Dataset):
    """A batch of tensors as a map-style dataset of rows (each a dict; the default collate stacks them back)."""

    def __init__(self, batch: Batch):
        self.batch = batch

    def __len__(self) -> int:
        return int(next(iter(self.batch.values())).shape[0])

    def __getitem__(self, i: int) -> Batch:
        return {k: v[i] for k, v in self.batch.items()}

_LAYER_PATHS = ("transformer.h", "model.layers", "model.decoder.layers", "gpt_neox.layers", "transformer.layers")


class Site(Protocol):
    form: str
    in_dim: int
    out_dim: int

    def encode(self, batch: Batch) -> torch.Tensor: ...

    def logits(self, feats: torch.Tensor, batch: Batch, shift: torch.Tensor | None = None) -> torch.Tensor: ...

    def example_loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor: ...

    def kl(self, base_logits: torch.Tensor, steered_logits: torch.Tensor, batch: Batch) -> torch.Tensor: ...


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder layers of a transformers causal LM."""
    for path in _LAYER_PATHS:
        obj: object = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    raise StrideInputError(
        f"cannot find the decoder layers of {type(model).__name__}: looked for {', '.join(_LAYER_PATHS)}; "
        "use the logit form for this architecture"
    )


def default_layer(model: nn.Module) -> int:
    """``config.default_layer_index`` of the model's depth."""
    return default_layer_index(len(decoder_layers(model)))


class _Stop(Exception):
    """Raised by a capture hook to skip the rest of a forward pass."""


class _PassThrough(nn.Module):
    """Stands in for a frozen decoder layer below the hook: returns its hidden states unchanged."""

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return hidden_states


def _replace_hidden(args: tuple, kwargs: dict, value: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (value, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": value}


def _first_hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


class _CausalLMSite:
    """Shared plumbing of the two LM sites: batching, losses, the capture hook."""

    form = ""

    def __init__(self, model: nn.Module):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def _forward(self, batch: Batch) -> torch.Tensor:
        return self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits

    def _capture(self, module: nn.Module, batch: Batch) -> torch.Tensor:
        """The input of ``module`` during a forward pass (the pass stops right there)."""
        captured: list[torch.Tensor] = []

        def hook(_mod: nn.Module, args: tuple, kwargs: dict) -> None:
            captured.append(_first_hidden(args, kwargs).detach())
            raise _Stop

        handle = module.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                self._forward(batch)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise StrideInputError(f"the hook on {type(module).__name__} never fired")
        return captured[0].float()

    def example_loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return sequence_nll(logits, batch["input_ids"], batch["attention_mask"], batch.get("loss_mask"))

    def kl(self, base_logits: torch.Tensor, steered_logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return token_kl(base_logits, steered_logits, batch["attention_mask"], batch.get("loss_mask"))


class ActivationSite(_CausalLMSite):
    """Steer the residual stream at the input of decoder layer ``layer``."""

    form = "activation"

    def __init__(self, model: nn.Module, layer: int | None = None):
        super().__init__(model)
        self.layers = decoder_layers(model)
        n = len(self.layers)
        self.layer = default_layer(model) if layer is None else layer
        if not 0 <= self.layer < n:
            raise StrideConfigError(f"operator layer {self.layer} out of range: the model has {n} decoder layers")
        self.in_dim = self.out_dim = int(model.get_input_embeddings().embedding_dim)

    def encode(self, batch: Batch) -> torch.Tensor:
        return self._capture(self.layers[self.layer], batch)

    @contextmanager
    def _from_cache(self, hidden: torch.Tensor) -> Iterator[None]:
        """Run only the layers from ``self.layer`` up, starting from ``hidden``."""
        originals = [self.layers[i] for i in range(self.layer)]
        for i in range(self.layer):
            self.layers[i] = _PassThrough()

        def inject(_mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            return _replace_hidden(args, kwargs, hidden.to(_first_hidden(args, kwargs).dtype))

        handle = self.layers[self.layer].register_forward_pre_hook(inject, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
            for i, layer in enumerate(originals):
                self.layers[i] = layer

    def logits(self, feats: torch.Tensor, batch: Batch, shift: torch.Tensor | None = None) -> torch.Tensor:
        hidden = feats if shift is None else feats + shift
        with self._from_cache(hidden):
            return self._forward(batch).float()


class LogitSite(_CausalLMSite):
    """Steer the output logits; the basis reads the final hidden state (the head's input)."""

    form = "logit"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.head = model.get_output_embeddings()
        if self.head is None:
            raise StrideInputError(f"{type(model).__name__} has no output embeddings (lm head)")
        self.in_dim = int(self.head.in_features)
        self.out_dim = int(self.head.out_features)

    def encode(self, batch: Batch) -> torch.Tensor:
        return self._capture(self.head, batch)

    def logits(self, feats: torch.Tensor, batch: Batch, shift: torch.Tensor | None = None) -> torch.Tensor:
        out = self.head(feats.to(self.head.weight.dtype)).float()
        return out if shift is None else out + shift


class HeadSite(LogitSite):
    """Steer the head's input (the final hidden state): the shift flows through the frozen output head.

    The same features as the logit form, but an operator is r x d_model: the logit form restricted
    to the head's row space, sized by the model and not by its vocabulary.
    """

    form = "head"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.out_dim = self.in_dim

    def logits(self, feats: torch.Tensor, batch: Batch, shift: torch.Tensor | None = None) -> torch.Tensor:
        return super().logits(feats if shift is None else feats + shift, batch)


FORMS = ("head", "logit", "activation")
CLASSIFIER_FORMS = ("pre_activation", "full")  # evaluation/classifier.py's sites only


def make_site(model: nn.Module, form: str, layer: int | None = None) -> Site:
    if form == "activation":
        return ActivationSite(model, layer)
    if form == "head":
        return HeadSite(model)
    if form == "logit":
        return LogitSite(model)
    if form in CLASSIFIER_FORMS:
        raise StrideConfigError(f"operator form {form!r} steers the benchmarks' MLP classifiers; a language model "
                                f"takes {', '.join(FORMS)}")
    raise StrideConfigError(f"unknown operator form {form!r} ({', '.join(FORMS)})")


def encode_all(site: Site, batch: Batch, batch_size: int = 64) -> torch.Tensor:
    """Cached features for every row of ``batch``, computed in minibatches."""
    n = next(iter(batch.values())).shape[0]
    parts = [site.encode(take(batch, torch.arange(s, min(s + batch_size, n)))) for s in range(0, n, batch_size)]
    return torch.cat(parts)


def take(batch: Batch, index: torch.Tensor) -> Batch:
    """Rows ``index`` of every tensor in a batch."""
    return {k: v[index] for k, v in batch.items()}
