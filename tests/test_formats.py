"""Instruction and chat data: prompt/completion and messages rows, scored on their completion only.

Masking is checked on planted cases: with the cached features fixed, a prompt token (as a target)
changes nothing in any loss or response of a completion-only example, a completion token does.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

from stride_assets.engine import formats, lm
from stride_assets.engine.backbone import encode_all, make_site
from stride_assets.engine.column_logits import ColumnLogits
from stride_assets.engine.config import CorpusConfig, QueryConfig, TinyModelConfig
from stride_assets.engine.corpus import build_query_set, load_passages, query_frame
from stride_assets.engine.ekfac import _mean_nll, lm_objective
from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.evaluation.lm_task import LMTask
from stride_assets.engine.losses import token_nll
from stride_assets.engine.measure import exact, first_order
from stride_assets.engine.operators import OperatorBank
from stride_assets.engine.training import SiteLosses

PAIRS = [(f"Question {i}: what does word{i} mean?", f" It means thing number {i}, a kind of {w}.")
         for i, w in enumerate(["tree", "stone", "river", "cloud", "house", "bird"])]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def tiny(one_torch_thread: Any) -> tuple[Any, Any]:
    texts = [p + c for p, c in PAIRS] * 4
    tokenizer = lm.train_tokenizer(texts, 300)
    model = lm.build_tiny_gpt2(tokenizer, TinyModelConfig(vocab_size=300, n_layer=2, n_embd=32, n_head=2), 48)
    return model, tokenizer


def _pc_batch(tokenizer: Any) -> dict[str, torch.Tensor]:
    rows = [formats.prompt_completion(p, c, "test") for p, c in PAIRS]
    return lm.encode_batch(tokenizer, [t for t, _ in rows], 48, starts=[s for _, s in rows])


def _positions(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """A target position inside the prompt and one inside the completion of row 0."""
    scored = batch["loss_mask"][0].bool()
    prompt = int((~scored[1:] & batch["attention_mask"][0, 1:].bool()).nonzero()[1]) + 1
    completion = int(scored[1:].nonzero()[1]) + 1
    return prompt, completion


def _with_token(batch: dict[str, torch.Tensor], position: int) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in batch.items()}
    out["input_ids"][0, position] = (out["input_ids"][0, position] + 7) % 300
    return out


def test_loss_mask_covers_the_completion_tokens_only(tiny: tuple[Any, Any]) -> None:
    _, tokenizer = tiny
    batch = _pc_batch(tokenizer)
    prompt, completion = PAIRS[0]
    scored = batch["input_ids"][0][batch["loss_mask"][0].bool()]
    assert tokenizer.decode(scored) == completion
    assert tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()]) == prompt + completion
    plain = lm.encode_batch(tokenizer, [prompt + completion], 48)
    assert "loss_mask" not in plain  # plain text: every token scored, as before


@pytest.mark.parametrize("form", ["logit", "head", "activation"])
def test_prompt_tokens_change_no_loss_or_response_completion_tokens_do(tiny: tuple[Any, Any], form: str) -> None:
    model, tokenizer = tiny
    site = make_site(model, form)
    batch = _pc_batch(tokenizer)
    feats = encode_all(site, batch)
    bank = OperatorBank(5, site.in_dim, site.out_dim, rank=3, init_scale=0.05, seed=1)
    losses = SiteLosses(site, bank)
    rows, ops = torch.arange(len(PAIRS)), torch.arange(len(PAIRS)) % 5

    def values(b: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        with torch.no_grad():
            out = [site.example_loss(site.logits(feats, b), b), losses.fidelity(feats, b, rows, ops)]
        return out + [first_order(site, bank, feats, b), exact(site, bank, feats, b, operator_chunk=5)]

    prompt, completion = _positions(batch)
    base = values(batch)
    for a, b in zip(base, values(_with_token(batch, prompt))):
        assert torch.equal(a, b)
    changed = values(_with_token(batch, completion))
    for a, b in zip(base, changed):
        assert (a - b).abs().max() > 1e-6
    # the same batch without its mask scores the prompt too: then the prompt token matters
    unmasked = {k: v for k, v in batch.items() if k != "loss_mask"}
    moved = _with_token(unmasked, prompt)
    assert (site.example_loss(site.logits(feats, unmasked), unmasked)
            - site.example_loss(site.logits(feats, moved), moved)).abs().max() > 1e-6


def test_stability_and_column_losses_ignore_prompt_positions(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    site = make_site(model, "logit")
    batch = _pc_batch(tokenizer)
    feats = encode_all(site, batch)
    dense = OperatorBank(5, site.in_dim, site.out_dim, rank=3, init_scale=0.05, seed=1)
    columns = OperatorBank(5, site.in_dim, site.out_dim, rank=3, init_scale=0.05, seed=1, columns=40)
    columns.set_columns(torch.stack([torch.randperm(site.out_dim, generator=torch.Generator().manual_seed(k))[:40]
                                     for k in range(5)]))
    rows, ops = torch.arange(len(PAIRS)), torch.arange(len(PAIRS)) % 5
    prompt, completion = _positions(batch)
    # the logit form's output at t depends on the features at t alone: move the features at one position;
    # position t predicts token t + 1, so t = prompt - 1 predicts a prompt token (unscored)
    for t, moves in ((prompt - 1, False), (completion - 1, True)):
        moved = feats.clone()
        moved[0, t] += 0.5 * torch.randn(feats.shape[-1], generator=torch.Generator().manual_seed(0))
        for name, losses in (("dense", SiteLosses(site, dense)), ("columns", ColumnLogits(site, columns, feats))):
            with torch.no_grad():
                a = [losses.stability(feats, batch, rows, ops), losses.fidelity(feats, batch, rows, ops)]
                b = [losses.stability(moved, batch, rows, ops), losses.fidelity(moved, batch, rows, ops)]
            for x, y in zip(a, b):
                assert (abs(float(x - y)) > 1e-7) == moves, (name, t)
    # the column path equals the dense one on the masked batch too
    dense_cols = SiteLosses(site, columns)
    with torch.no_grad():
        for part in ("fidelity", "stability"):
            assert torch.allclose(getattr(ColumnLogits(site, columns, feats), part)(feats, batch, rows, ops),
                                  getattr(dense_cols, part)(feats, batch, rows, ops), rtol=1e-4, atol=1e-6)


def test_base_model_training_ekfac_and_example_losses_use_the_mask(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    batch = _pc_batch(tokenizer)
    ids, mask, scored = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    nll, weights = token_nll(logits, ids, mask, scored)
    per_example = nll.sum(-1) / weights.sum(-1)
    assert torch.allclose(lm.example_losses(model, ids, mask, loss_mask=scored), per_example, atol=1e-5)
    assert not torch.allclose(lm.example_losses(model, ids, mask), per_example, atol=1e-3)
    with torch.no_grad():
        assert torch.allclose(_mean_nll(*lm_objective(model, batch)), per_example, atol=1e-5)
    # train_lm's first logged loss is the batch's masked mean NLL (all examples in the batch)
    import copy

    curve = lm.train_lm(copy.deepcopy(model), ids, mask, steps=1, batch_size=len(PAIRS), lr=1e-3, weight_decay=0.0,
                        seed=0, log=lambda _: None, loss_mask=scored)
    assert curve[0]["loss"] == pytest.approx(float(nll.sum() / weights.sum()), rel=1e-5)


def test_lm_task_scores_completions(tiny: tuple[Any, Any]) -> None:
    texts = [p + c for p, c in PAIRS]
    starts = [formats.prompt_completion(p, c, "t")[1] for p, c in PAIRS]
    recipe = TinyModelConfig(vocab_size=300, n_layer=1, n_embd=16, n_head=2, steps=2, batch_size=4)
    masked = LMTask(texts, {"val": texts[:2], "test": texts}, recipe, max_length=48,
                    completion_starts={"train": starts, "val": starts[:2], "test": starts})
    plain = LMTask(texts, {"val": texts[:2], "test": texts}, recipe, max_length=48)
    model = masked.new_model(0)
    batch = masked.query_batch("test")
    assert "loss_mask" in batch and "loss_mask" not in plain.query_batch("test")
    got = masked.query_losses(model, "test")
    assert np.allclose(got, masked.example_loss(model, batch).detach().numpy(), atol=1e-5)
    assert not np.allclose(got, plain.query_losses(model, "test"), atol=1e-3)
    assert masked.functional_loss(model)(dict(model.named_parameters()), batch).item() == pytest.approx(
        float(got.mean()), rel=1e-4)


# --- loading -----------------------------------------------------------------------------------


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_load_prompt_completion_and_messages_files(tmp_path: Path) -> None:
    pc = _jsonl(tmp_path / "pc.jsonl", [{"q": p, "a": c} for p, c in PAIRS])
    df = load_passages(CorpusConfig(source="files", paths=[str(pc)], format="prompt_completion",
                                    prompt_column="q", completion_column="a"))
    assert df.columns == ["example_id", "text", "source", "completion_start"]
    for (p, c), text, start in zip(PAIRS, df["text"], df["completion_start"]):
        assert text == p + c and text[start:] == c
    chats = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": p},
                           {"role": "assistant", "content": c.strip()}]} for p, c in PAIRS]
    dm = load_passages(CorpusConfig(source="files", paths=[str(_jsonl(tmp_path / "chat.jsonl", chats))],
                                    format="messages"))
    row = dm.row(0, named=True)
    assert row["text"] == f"system: Be brief.\nuser: {PAIRS[0][0]}\nassistant: {PAIRS[0][1].strip()}"
    assert row["text"][row["completion_start"]:] == PAIRS[0][1].strip()
    assert json.loads(row["messages"]) == chats[0]["messages"]
    # parquet with a list-of-structs column reads the same
    pl.DataFrame(chats).write_parquet(tmp_path / "chat.parquet")
    dp = load_passages(CorpusConfig(source="files", paths=[str(tmp_path / "chat.parquet")], format="messages"))
    assert dp["text"].to_list() == dm["text"].to_list()
    assert dp["completion_start"].to_list() == dm["completion_start"].to_list()


@pytest.mark.parametrize("rows,fmt,match", [
    ([{"prompt": "a long enough prompt here", "answer": " x"}], "prompt_completion",
     r"completion column 'completion' not found \(format prompt_completion: completion_column\)"),
    ([{"text": "plain"}], "messages", r"messages column 'messages' not found"),
    ([{"prompt": "a long enough prompt here", "completion": "   "}], "prompt_completion",
     r"row 0 \('completion'\): the completion is empty"),
    ([{"prompt": "a long enough prompt here", "completion": 3}], "prompt_completion",
     r"completion column 'completion' must hold strings, but row 0 is int"),
    ([{"messages": [{"role": "user", "content": "hello there, how are you"}, {"role": "assistant",
                                                                            "content": "fine"}]},
      {"messages": [{"role": "user", "text": "no content key"}]}], "messages",
     r"row 1 \('messages'\): message 0 must be \{role: str, content: str\}"),
    ([{"messages": "just a string"}], "messages", r"row 0 \('messages'\): messages must be a list"),
    ([{"messages": [{"role": "user", "content": "a question without an answer"}]}], "messages",
     r"row 0 \('messages'\): the last message must be the assistant's"),
])
def test_bad_rows_are_named(tmp_path: Path, rows: list[dict], fmt: str, match: str) -> None:
    path = _jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(StrideInputError, match=match):
        load_passages(CorpusConfig(source="files", paths=[str(path)], format=fmt))


def test_completion_truncated_away_is_named(tiny: tuple[Any, Any]) -> None:
    _, tokenizer = tiny
    frame = pl.DataFrame({"example_id": ["a", "b"], "text": ["short q? yes.", "word " * 40 + "answer"],
                          "completion_start": [9, 200]})
    with pytest.raises(StrideInputError, match=r"model.max_length=16 tokens, e.g. row 'b'"):
        lm.frame_batch(tokenizer, frame, 16)
    assert lm.frame_batch(tokenizer, frame.head(1), 16)["loss_mask"].sum() > 0


def test_chat_template_renders_deterministically_and_scores_the_assistant(tiny: tuple[Any, Any]) -> None:
    _, base_tokenizer = tiny
    tokenizer = base_tokenizer.__class__(tokenizer_object=base_tokenizer.backend_tokenizer, eos_token=lm.EOS,
                                         pad_token=lm.EOS, padding_side="right")
    tokenizer.chat_template = CHAT_TEMPLATE
    messages = [{"role": "user", "content": "What is a tree?"}, {"role": "assistant", "content": "A plant."}]
    text, start = formats.render_template(tokenizer, messages)
    assert text == "<|user|>What is a tree?<|end|><|assistant|>A plant.<|end|>"
    assert text[start:] == "A plant.<|end|>"
    frame = build_query_set(pl.DataFrame(), QueryConfig(n_holdout=0, prompts=["plain words", {"messages": messages}]))
    assert frame["text"][1] == "user: What is a tree?\nassistant: A plant."  # stored: the fallback
    batch = lm.frame_batch(tokenizer, frame, 96)
    assert tokenizer.decode(batch["input_ids"][1][batch["loss_mask"][1].bool()]) == "A plant.<|end|>"
    assert batch["loss_mask"][0].sum() == batch["attention_mask"][0].sum()  # the plain prompt: all scored
    again = lm.frame_batch(tokenizer, frame, 96)
    assert all(torch.equal(batch[k], again[k]) for k in batch)
    # without a template: the stored fallback text and its start
    plain = lm.frame_batch(base_tokenizer, frame, 96)
    assert base_tokenizer.decode(plain["input_ids"][1][plain["loss_mask"][1].bool()]) == "A plant."


def test_query_formats(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "q.jsonl", [{"prompt": p, "completion": c} for p, c in PAIRS[:2]])
    queries = build_query_set(pl.DataFrame(), QueryConfig(n_holdout=0, prompts=["a plain query string"],
                                                          path=str(path), format="prompt_completion"))
    assert queries["kind"].to_list() == ["prompt", "file", "file"]
    assert queries["completion_start"].to_list() == [0, len(PAIRS[0][0]), len(PAIRS[1][0])]
    inline = query_frame(["plain", {"prompt": "Q:", "completion": " A."}])
    assert inline["query_id"].to_list() == ["q0", "q1"] and inline["completion_start"].to_list() == [0, 2]
    with pytest.raises(StrideInputError, match="query prompt 0 must be a string, a"):
        build_query_set(pl.DataFrame(), QueryConfig(n_holdout=0, prompts=[{"question": "x"}]))
    with pytest.raises(StrideInputError, match="the completion is empty"):
        query_frame([{"prompt": "Q:", "completion": ""}])
    # `stride attribute` arguments: a JSON object of a known shape is a mapping, anything else plain text
    assert formats.parse_query_arg('{"prompt": "Q:", "completion": " A."}') == {"prompt": "Q:", "completion": " A."}
    assert formats.parse_query_arg('{"x": 1}') == '{"x": 1}' and formats.parse_query_arg("{not json") == "{not json"


# --- the pipeline on instruction data ----------------------------------------------------------

OBJECTS = ["apple", "sky", "grass", "snow", "coal", "sun", "rose", "sea", "lemon", "plum"]
COLOURS = ["red", "blue", "green", "white", "black", "yellow", "pink", "grey", "gold", "purple"]


def test_micro_pipeline_on_a_prompt_completion_corpus(tmp_path: Path, mlflow_uri: str) -> None:
    import dagster as dg
    from conftest import make_defs

    from stride_assets.engine.query import attribute
    from stride_assets.engine.store import Store
    from stride_assets.orchestration import run_pipeline
    from stride_assets.resources import MlflowTracking, StrideResource

    for part in range(2):
        _jsonl(tmp_path / f"part{part}.jsonl", [
            {"prompt": f"Q{part}.{i}: what colour is the {OBJECTS[i % 10]}?",
             "completion": f" The {OBJECTS[i % 10]} is {COLOURS[(i + part) % 10]} ({i})."} for i in range(80)])
    overrides = {"corpus": {"source": "files", "paths": [str(tmp_path / f"part{p}.jsonl") for p in range(2)],
                            "format": "prompt_completion", "min_chars": 8},
                 "queries": {"prompts": ["The apple is red.", {"prompt": "Q: what colour is the snow?",
                                                               "completion": " The snow is white."}]}}
    resources = {"stride": StrideResource(profile="micro", storage_root=str(tmp_path / "store"),
                                          overrides_json=json.dumps(overrides)),
                 "mlflow": MlflowTracking(tracking_uri=mlflow_uri, experiment_name="stride-test",
                                          artifact_root=(tmp_path / "mlartifacts").as_uri())}
    cfg = resources["stride"].config()
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        results = run_pipeline(make_defs(resources), instance, cfg, log=lambda _: None)
        assert results and all(r.success for r in results)
    store = Store(tmp_path / "store")
    train = store.read_train(["part0", "part1"])
    assert (train["completion_start"] > 0).all()
    queries = store.read_queries("default")
    assert queries.filter(pl.col("kind") == "holdout").height > 0
    snow = queries.filter(pl.col("query_id") == "prompt/01")
    assert snow["completion_start"].item() == len("Q: what colour is the snow?")
    scores = pl.read_parquet(tmp_path / "store" / "influence_scores" / "default" / "scores.parquet")
    assert scores.height > 0 and scores["score"].is_finite().all() and (scores["score"] != 0).any()
    top = attribute([{"prompt": "Q: what colour is the sky?", "completion": " The sky is blue."}], store, top_k=3)
    assert top.height == 3 and top["query"][0] == "Q: what colour is the sky? The sky is blue."
