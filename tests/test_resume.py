"""`stride run --incremental` decides from the store and the settings, not only from the Dagster
instance: a new store is built whole, a changed setting re-runs exactly its stage and what is
downstream, a truncated or overwritten artifact is a clear error on load and is rebuilt."""

from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from conftest import make_defs

from stride_assets.engine.config import profile_path
from stride_assets.engine.errors import StrideInputError
from stride_assets.engine.store import Store
from stride_assets.orchestration import code_versions, plan, run_pipeline
from stride_assets.resources import StrideResource

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DOWNSTREAM_OF_RECOVERY = [("stride_recovery_job", "default"), ("stride_curation_job", "None")]


def _plan(instance, defs, resources, store: Path) -> list[tuple[str, str]]:
    cfg = resources["stride"].config()
    return [(job, str(key)) for job, key in plan(instance, cfg, True, Store(store), code_versions(defs))]


def test_incremental_follows_the_store_and_the_settings(tmp_path: Path, micro_resources: dict[str, Any]) -> None:
    store = tmp_path / "store"
    (tmp_path / "home").mkdir()
    defs = make_defs(micro_resources)
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        cfg = micro_resources["stride"].config()
        assert all(r.success for r in run_pipeline(defs, instance, cfg, store=Store(store), log=lambda _: None))
        assert _plan(instance, defs, micro_resources, store) == []

        # the same instance, another store: nothing there yet, so every block is built
        other = dict(micro_resources, stride=StrideResource(profile="micro", storage_root=str(tmp_path / "other")))
        assert len(_plan(instance, make_defs(other), other, tmp_path / "other")) == 8

        # a changed setting in the profile: exactly its stage and what is downstream
        edited = yaml.safe_load(profile_path("micro").read_text())
        edited["recovery"]["lambda_ratio"] = 0.3
        (tmp_path / "edited.yaml").write_text(yaml.safe_dump(edited))
        lam = dict(micro_resources, stride=StrideResource(profile=str(tmp_path / "edited.yaml"), storage_root=str(store)))
        assert _plan(instance, make_defs(lam, profile=str(tmp_path / "edited.yaml")), lam, store) == \
            DOWNSTREAM_OF_RECOVERY

        # a truncated operator bank: a clear error on load, and its shard is rebuilt with what reads it
        bank = store / "steering_operators" / "part-0001" / "operators.safetensors"
        bank.write_bytes(bank.read_bytes()[:100])
        with pytest.raises(StrideInputError, match="changed since it was written.*re-materialize steering_operators"):
            Store(store).load_bank("part-0001")
        assert _plan(instance, defs, micro_resources, store) == [
            ("stride_shard_job", "part-0001"), ("stride_measure_job", "default|part-0001"), *DOWNSTREAM_OF_RECOVERY]
        results = run_pipeline(defs, instance, cfg, only_changed=True, store=Store(store), log=lambda _: None)
        assert len(results) == 4 and all(r.success for r in results)
        Store(store).load_bank("part-0001")  # rebuilt and sealed again
        assert _plan(instance, defs, micro_resources, store) == []

        # an overwritten (valid, but different) responses file is refused just the same
        responses = store / "perturbation_matrix" / "default" / "part-0000" / "responses.parquet"
        responses.write_bytes((store / "perturbation_matrix" / "default" / "part-0001" / "responses.parquet")
                              .read_bytes())
        with pytest.raises(StrideInputError, match="changed since it was written"):
            Store(store).read_responses("default", ["part-0000", "part-0001"])
        assert _plan(instance, defs, micro_resources, store) == [("stride_measure_job", "default|part-0000"),
                                                                 *DOWNSTREAM_OF_RECOVERY]
