"""Quick means quick for user files too; the operator-epochs warning; the offline suites added beside
digits-mlp and pydoc-gpt (breast-cancer-mlp, wine-mlp, numpy-docs-gpt). Builds tasks, trains nothing
big: the benchmarks themselves are run by ``stride bench NAME``."""

from __future__ import annotations

import socket
import warnings

import numpy as np
import polars as pl
import pytest

from stride_assets.engine.config import StrideConfig
from stride_assets.engine.design import draw_design
from stride_assets.engine.evaluation import suites
from stride_assets.engine.evaluation.classifier import MLPRecipe
from stride_assets.engine.training import MIN_MEMBER_EPOCHS, UndertrainedOperatorsWarning, member_epochs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _epochs(cfg: StrideConfig, n: int) -> float:
    return member_epochs(cfg.training.steps, cfg.training.batch_size, n, cfg.design.d)


def _configs(settings) -> list[StrideConfig]:
    """A suite's STRIDE settings as configs: one, or a sweep's (label -> config)."""
    return [settings] if isinstance(settings, StrideConfig) else list(settings.values())


def _spec_configs(spec) -> list[StrideConfig]:
    return _configs(spec.settings.get("config") or spec.settings.get("configs", {}))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a benchmark build tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# --- the warning ---------------------------------------------------------------------------------


def _fit_operators(steps: int) -> list[str]:
    from stride_assets.engine.evaluation.methods.stride import StrideMethod
    from stride_assets.engine.evaluation.tabular import wine_task

    task = wine_task(recipe=MLPRecipe(hidden=16, steps=5))
    cfg = StrideConfig().with_(design={"K": 16, "d": 4}, operators={"form": "logit", "rank": 4},
                               training={"steps": steps, "batch_size": 32, "log_every": 1000})
    lines: list[str] = []
    StrideMethod(cfg, log=lines.append).cache(task, task.train())
    return lines


def test_few_operator_steps_warn_naming_the_settings_to_raise():
    assert member_epochs(2, 32, 100, 4) == pytest.approx(0.16)
    with pytest.warns(UndertrainedOperatorsWarning, match=r"0\.16 times.*training\.steps to at least 25.*training\.epochs"):
        lines = _fit_operators(steps=2)  # 2 * 32 / (100 * 4): 0.16 epochs of member pairs
    assert any(line.startswith("warning: operator training") for line in lines)


def test_enough_operator_steps_do_not_warn():
    assert member_epochs(30, 32, 100, 4) > MIN_MEMBER_EPOCHS
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndertrainedOperatorsWarning)
        lines = _fit_operators(steps=30)
    assert not any(line.startswith("warning") for line in lines)


def test_suite_settings_raise_steps_to_several_epochs_on_big_training_sets():
    for stride in (suites.lm_stride, suites.classifier_stride):
        for quick in (True, False):
            default = stride(quick)
            for n in (100, 5_000, 200_000):
                for name, settings in stride(quick, n).items():
                    for cfg, plain in zip(_configs(settings), _configs(default[name])):
                        assert _epochs(cfg, n) >= suites.MIN_OPERATOR_EPOCHS
                        assert cfg.training.steps >= plain.training.steps  # never fewer than the defaults
    assert suites.lm_stride(False, 5_000)["stride"].training.steps == 3_750  # 3 * 5000 * 8 / 32


# --- quick user files ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3_000, 6))
    path = tmp_path_factory.mktemp("table") / "big.csv"
    pl.DataFrame({**{f"f{j}": X[:, j] for j in range(6)}, "y": (X[:, 0] + X[:, 1] > 0).astype(int)}).write_csv(path)
    return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(200)]
    texts = [" ".join(rng.choice(words, size=40)) + f" doc {i}" for i in range(900)]
    path = tmp_path_factory.mktemp("corpus") / "big.parquet"
    pl.DataFrame({"body": texts}).write_parquet(path)
    return str(path)


def test_quick_table_is_smaller_with_a_smaller_mlp_and_enough_operator_epochs(table):
    full, quick = suites.build(table, label="y"), suites.build(table, label="y", quick=True)
    assert quick.task.n < full.task.n and full.task.n == 3_000 - 300 - 450
    assert len(quick.task.query_ids["test"]) < len(full.task.query_ids["test"])
    assert quick.task.recipe.hidden < full.task.recipe.hidden and quick.task.recipe.steps <= full.task.recipe.steps
    for suite in (quick, full):
        for spec in suite.specs:
            for cfg in _spec_configs(spec) if spec.method in ("stride", "stride_sweep") else []:
                assert _epochs(cfg, suite.task.n) >= suites.MIN_OPERATOR_EPOCHS


def test_quick_text_file_is_smaller_with_a_smaller_gpt_and_enough_operator_epochs(corpus):
    full, quick = suites.build(corpus, text="body"), suites.build(corpus, text="body", quick=True)
    assert (quick.task.n, full.task.n) == (300, 900 - 150)
    assert {s: len(v) for s, v in quick.task.query_ids.items()} == {"val": 20, "test": 40}
    assert quick.task.recipe.n_embd < full.task.recipe.n_embd
    assert quick.task.recipe.vocab_size < full.task.recipe.vocab_size
    for suite in (quick, full):
        for spec in suite.specs:
            for cfg in _spec_configs(spec) if spec.method in ("stride", "stride_sweep") else []:
                assert _epochs(cfg, suite.task.n) >= suites.MIN_OPERATOR_EPOCHS


# --- the new suites ------------------------------------------------------------------------------


def _check_ids(task) -> None:
    train, val, test = (set(task.example_ids), set(task.query_ids["val"]), set(task.query_ids["test"]))
    assert len(train) == task.n and len(val) == len(task.query_ids["val"]) and len(test) == len(task.query_ids["test"])
    assert not (train & val or train & test or val & test)


@pytest.mark.parametrize("name, sizes", [("breast-cancer-mlp", (369, 80, 120)), ("wine-mlp", (100, 28, 50))])
def test_bundled_tabular_suites_build_offline(offline, name, sizes):
    assert name in suites.BENCHES
    for quick in (False, True):
        suite = suites.build(name, quick=quick)
        task = suite.task
        assert (task.n, len(task.query_ids["val"]), len(task.query_ids["test"])) == sizes
        _check_ids(task)
        assert {"stride_logit", "stride_hidden", "stride_pre_activation", "grad_dot"} <= {s.name for s in suite.specs}
        assert suite.protocol.m == (16 if quick else 64)
        for spec in suite.specs:  # STRIDE's design can be drawn (wine's 100 examples: K lowered from 1024)
            for dc in (c.design for c in _spec_configs(spec)) if spec.method in ("stride", "stride_sweep") else []:
                assert task.n * dc.d / dc.K >= suites.MIN_SUBSET_MEMBERS
                assert draw_design(task.n, dc.K, dc.d, dc.seed).subset_sizes().min() > 0


def test_first_layer_stride_sweeps_the_damping_on_validation():
    """The classifier suites' stride_pre_activation: one first-layer config per damping weight, the weight
    chosen on validation together with the recovery (every pair of weight and recovery option in the grid)."""
    spec = next(s for s in suites.build("wine-mlp").specs if s.name == "stride_pre_activation")
    configs = spec.settings["configs"]
    assert spec.method == "stride_sweep" and len(configs) == len(suites.FIRST_LAYER_DAMPING)
    assert sorted(c.training.damping_weight for c in configs.values()) == sorted(suites.FIRST_LAYER_DAMPING)
    assert {c.operators.form for c in configs.values()} == {"pre_activation"}
    assert len(spec.grid) == len(configs) * len(suites.WIDE_GRID)
    assert {o["variant"] for o in spec.grid} == set(configs)
    seeded = suites.stride_spec("x", suites.classifier_stride(False, 100)["stride_pre_activation"], seed=2)
    assert {c.design.seed for c in seeded.settings["configs"].values()} == {2}


def test_small_training_sets_get_fewer_subsets():
    assert suites.classifier_stride(False, 100)["stride_logit"].design.K == 400  # 100 * 32 / 8
    assert suites.classifier_stride(False, 1_300)["stride_logit"].design.K == 1024  # digits: as chosen
    assert suites.lm_stride(True, 300)["stride"].design.K == 64  # pydoc quick: as it was


def test_numpy_docs_suite_builds_offline_and_deterministically(offline):
    import numpy

    from stride_assets.engine.evaluation.docs_corpus import package_passages

    passages = package_passages("numpy")
    assert passages["example_id"].is_unique().all() and passages.height > 2_000
    assert passages.equals(package_passages("numpy"))
    assert passages["source"][0] == f"numpy {numpy.__version__} docstrings"
    assert "numpy-docs-gpt" in suites.BENCHES
    quick = suites.build("numpy-docs-gpt", quick=True).task
    assert quick.name == f"numpy-{numpy.__version__}-docs"
    assert (quick.n, len(quick.query_ids["val"]), len(quick.query_ids["test"])) == (300, 20, 40)
    _check_ids(quick)
    full = suites.build("numpy-docs-gpt").task
    assert (full.n, len(full.query_ids["val"]), len(full.query_ids["test"])) == (1_000, 50, 100)
    _check_ids(full)
    assert not set(full.texts()) & set(full.texts("test"))


def test_leave_out_is_added_only_when_asked_for():
    """``stride bench --leave-out`` and ``stride_attempts.py --leave-out`` build the same protocol."""
    full = suites.Protocol()
    assert suites.with_leave_out(full, False, None, None) is full
    assert suites.with_leave_out(full, False, 0, None).leave_out == suites.LeaveOut()
    quick = suites.with_leave_out(suites.QUICK, True, 0, None).leave_out
    assert (quick.m, quick.noise_subsets) == (12, 4)
    assert suites.with_leave_out(full, False, 10, 0.1).leave_out.m == 10
    assert suites.with_leave_out(full, False, None, 0.1).leave_out.fraction == 0.1
