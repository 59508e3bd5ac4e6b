"""The stages' checks (``engine/checks.py``, listed on each ``StageSpec``) as Dagster asset checks.

Each check is declared on its asset (``check_specs``) and its result is emitted with the
materialization it checks, so a partitioned stage is checked per partition and the check's
history names that partition. A failed blocking check stops what is downstream of the block.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from stride_assets.engine.registry import StageSpec
from stride_assets.engine.result import StageResult, rounded


def check_specs(spec: StageSpec) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(c.name, asset=spec.name, description=c.description, blocking=c.blocking)
            for c in spec.checks]


def check_results(spec: StageSpec, result: StageResult, cfg: Any,
                  partition: str | None = None) -> list[dg.AssetCheckResult]:
    """Every check of the stage, evaluated on the result just computed. Each result names its
    ``partition`` (the shard, batch or block) in its description and metadata, so the check's
    history says which partition passed or failed."""
    out = []
    for check in spec.checks:
        outcome = check.evaluate(result, cfg)
        verdict = "passed" if outcome.passed else "FAILED"
        detail = outcome.description or check.description
        where = {"partition": partition} if partition is not None else {}
        out.append(dg.AssetCheckResult(
            check_name=check.name, asset_key=spec.name, passed=bool(outcome.passed),
            metadata={**where, **{k: rounded(v) for k, v in outcome.metadata.items()}},
            description=f"{spec.name}[{partition}] {verdict}: {detail}" if partition is not None else detail,
            severity=dg.AssetCheckSeverity.WARN if check.warn else dg.AssetCheckSeverity.ERROR))
    return out
