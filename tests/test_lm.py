"""The base language model (stride_assets.engine.lm): tokenizer, tiny GPT-2, training, I/O."""

from __future__ import annotations


import pytest
import torch
from transformers import AutoTokenizer

from stride_assets.engine import lm
from stride_assets.engine.backbone import default_layer
from stride_assets.engine.config import CorpusConfig, TinyModelConfig
from stride_assets.engine.corpus import load_passages
from stride_assets.engine.errors import StrideInputError

MAX_LEN = 48
TINY = TinyModelConfig(vocab_size=300, n_layer=2, n_embd=32, n_head=2, seed=0)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return load_passages(CorpusConfig(max_examples=100))["text"].to_list()


@pytest.fixture(scope="module")
def tokenizer(texts):
    return lm.train_tokenizer(texts, TINY.vocab_size)


@pytest.fixture(scope="module")
def batch(tokenizer, texts):
    return lm.encode(tokenizer, texts, MAX_LEN)


def _train(tokenizer, batch, seed: int = 0):
    model = lm.build_tiny_gpt2(tokenizer, TINY, MAX_LEN)
    curve = lm.train_lm(model, *batch, steps=30, batch_size=16, lr=3e-3, weight_decay=0.01, seed=seed,
                        log_every=10, log=lambda _: None)
    return model, curve


@pytest.fixture(scope="module")
def trained(tokenizer, batch):
    return _train(tokenizer, batch)


def test_tokenizer_roundtrip(tokenizer, texts, tmp_path):
    assert len(tokenizer) == TINY.vocab_size
    assert tokenizer.eos_token == tokenizer.pad_token == tokenizer.bos_token == "<|endoftext|>"
    assert lm.train_tokenizer(texts, TINY.vocab_size).get_vocab() == tokenizer.get_vocab()
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    sample = texts[0] + " naïve ☃"
    assert again(sample)["input_ids"] == tokenizer(sample)["input_ids"]
    assert again.decode(again(sample)["input_ids"]) == sample
    assert again.pad_token_id == tokenizer.pad_token_id


def test_encode(tokenizer, batch):
    ids, mask = batch
    assert ids.dtype == mask.dtype == torch.long
    assert ids.shape == mask.shape and ids.shape[1] <= MAX_LEN
    short_ids, short_mask = lm.encode(tokenizer, ["a b c d e", "a longer text than the first one"], MAX_LEN)
    assert short_mask[0, -1] == 0 and short_mask[1].all()  # right padded to the longest
    assert (short_ids[0][short_mask[0] == 0] == tokenizer.pad_token_id).all()
    with pytest.raises(StrideInputError, match="fewer than 2 tokens"):
        lm.encode(tokenizer, ["fine text here", "a"], MAX_LEN)


def test_training_lowers_loss(trained):
    model, curve = trained
    assert [c["step"] for c in curve] == [0, 10, 20, 29]
    assert curve[-1]["loss"] < curve[0]["loss"]
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_training_is_deterministic(tokenizer, batch, trained):
    again, _ = _train(tokenizer, batch)
    for (name, a), (_, b) in zip(trained[0].state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_example_losses(trained, batch):
    losses = lm.example_losses(trained[0], *batch, batch_size=32)
    assert losses.shape == (batch[0].shape[0],) and torch.isfinite(losses).all()
    assert torch.allclose(losses[:5], lm.example_losses(trained[0], batch[0][:5], batch[1][:5]), atol=1e-5)


def test_save_load_roundtrip(trained, tokenizer, batch, tmp_path):
    model = trained[0]
    lm.save_model(model, tokenizer, tmp_path / "base")
    assert (tmp_path / "base" / "model.safetensors").is_file()
    loaded, tok = lm.load_model(str(tmp_path / "base"))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert len(tok) == len(tokenizer)
    ids, mask = batch[0][:4], batch[1][:4]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits,
                           loaded(input_ids=ids, attention_mask=mask).logits)
    assert default_layer(loaded) == 1


def test_load_missing_path(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    with pytest.raises(StrideInputError, match="nope' could not be loaded"):
        lm.load_model(str(tmp_path / "nope"))
    with pytest.raises(StrideInputError, match="could not be loaded"):
        lm.load_model("stride-test-org/no-such-model")


def test_tokenizer_model_mismatch(texts, tmp_path):
    small = lm.train_tokenizer(texts, 280)
    big = lm.train_tokenizer(texts, 320)
    model = lm.build_tiny_gpt2(small, TINY, MAX_LEN)
    lm.save_model(model, big, tmp_path / "mismatch")
    with pytest.raises(StrideInputError, match=r"320 tokens.*280 embedding rows"):
        lm.load_model(str(tmp_path / "mismatch"))


def test_default_layer(tokenizer):
    def layers(n: int) -> int:
        cfg = TinyModelConfig(vocab_size=300, n_layer=n, n_embd=16, n_head=1)
        return default_layer(lm.build_tiny_gpt2(tokenizer, cfg, 8))

    assert [layers(n) for n in (1, 2, 3, 4, 6)] == [0, 1, 2, 3, 4]
