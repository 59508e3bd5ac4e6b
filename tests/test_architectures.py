"""Real architectures as users bring them: GPT-2 124M and Qwen2.5-0.5B shapes through ``model.path``.

Each model is built from its real config (``engine.architectures``) at depth 1, with its real widths,
head counts and vocabulary (50,257 and 151,936 embedding rows), random weights (nothing can be
downloaded), saved with ``save_pretrained`` and loaded by the pipeline from the folder exactly as a
user's model is. The pipeline (the engine's ``run_all``, every stage in process, no Dagster) runs in the
head form (operators r x d_model, whatever the vocabulary).

The cost is the output head (d_model x vocabulary: 38.6M and 136M multiply-adds per token), so the run
is cut to one shard of 24 passages of 32 tokens, 4 operators and 4 training steps; the models are not
reduced beyond depth (Qwen keeps its intermediate size 4,864).
"""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest

from stride_assets.engine import architectures, lm, pipeline
from stride_assets.engine.config import load_config
from stride_assets.engine.corpus import load_passages
from stride_assets.engine.store import Store

SMALL_RUN = {
    "corpus": {"max_examples": 24, "shard_size": 24, "holdout_fraction": 0.1},
    "queries": {"n_holdout": 2},
    "model": {"max_length": 32},
    "design": {"K": 4, "d": 2},
    "operators": {"form": "head", "rank": 4},
    "training": {"steps": 4, "batch_size": 2, "log_every": 2},
}

SHAPES = {  # name: (model vocabulary, hidden size, class, brief training steps before saving)
    "gpt2-124m": (50257, 768, "GPT2LMHeadModel", 2),
    "qwen2.5-0.5b": (151936, 896, "Qwen2ForCausalLM", 0),
}


def test_param_counts_match_the_published_models() -> None:
    assert architectures.param_count("gpt2-124m") == 124_439_808
    assert architectures.param_count("qwen2.5-0.5b") == 494_032_768  # Qwen2.5-0.5B: 0.49B
    assert architectures.param_count("gpt2-124m", layers=1) < architectures.param_count("gpt2-124m")


@pytest.mark.parametrize("name", [
    "gpt2-124m",
    pytest.param("qwen2.5-0.5b", marks=pytest.mark.slow),  # 33-86 s on 2 shared cores: its head is 136M
])
def test_real_architecture_through_model_path(name: str, tmp_path: Path) -> None:
    vocab, hidden, cls, train_steps = SHAPES[name]
    cfg = load_config("micro", SMALL_RUN)
    texts = load_passages(cfg.corpus)["text"].to_list()
    folder = architectures.build(name, tmp_path / "model", texts, layers=1, train_steps=train_steps, batch_size=2,
                                 max_length=32, log=lambda _: None)

    model, tokenizer = lm.load_model(str(folder))
    assert type(model).__name__ == cls
    assert model.config.vocab_size == model.get_input_embeddings().weight.shape[0] == vocab
    assert model.get_output_embeddings().weight.shape == (vocab, hidden)
    assert model.config.hidden_size == hidden and model.config.num_hidden_layers == 1
    assert 256 < len(tokenizer) <= vocab
    del model

    cfg = load_config("micro", {**SMALL_RUN, "model": {**SMALL_RUN["model"], "path": str(folder)}})
    store = Store(tmp_path / "store")
    results = pipeline.run_all(cfg, store, log=lambda _: None)
    assert results["base_model"][0].metadata["parameters"] == architectures.param_count(name, layers=1)

    scores = store.read_scores(pipeline.batch_names(cfg))
    assert scores.height > 0
    assert scores["score"].is_finite().all()
    assert scores.filter(pl.col("score") != 0).height > 0

    for shard in pipeline.shard_names(cfg.corpus):
        bank, _ = store.load_bank(shard)
        assert bank.spec["in_dim"] == bank.spec["out_dim"] == hidden  # r x d_model, not r x vocabulary
        assert tuple(bank.A.shape[1:]) == (4, hidden)
        assert all(math.isfinite(v) for v in bank.A.flatten().tolist())


def test_make_model_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stride_assets import cli

    out = tmp_path / "gpt2"
    assert cli.main(["make-model", "gpt2-124m", "--out", str(out), "--layers", "1", "--profile", "micro"]) == 0
    assert "46,473,216 parameters" in capsys.readouterr().out
    model, tokenizer = lm.load_model(str(out))
    assert model.config.n_layer == 1 and model.config.vocab_size == 50257 and len(tokenizer) <= 50257
    assert cli.main(["make-model", "no-such-model", "--out", str(tmp_path / "x")]) == 1
    assert "unknown architecture 'no-such-model'" in capsys.readouterr().err
    assert set(architectures.ARCHITECTURES) == {"gpt2-124m", "qwen2.5-0.5b"}  # as `stride make-model --help` names them
