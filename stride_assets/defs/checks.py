"""The stages' checks (``engine/checks.py``, listed on each ``StageSpec``) as Dagster asset checks.

Each check is declared on its asset (``check_specs``) and its result is emitted with the
materialization it checks, so a partitioned stage is checked per partition and the check's
history names that partition. A failed blocking check stops what is downstream of the block.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from stride_assets.engine.registry import StageSpec
from stride_assets.engine.result import StageResult


def check_specs(spec: StageSpec) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(c.name, asset=spec.name, description=c.description, blocking=c.blocking)
            for c in spec.checks]


def check_results(spec: StageSpec, result: StageResult, cfg: Any) -> list[dg.AssetCheckResult]:
    """Every check of the stage, evaluated on the result just computed."""
    out = []
    for check in spec.checks:
        outcome = check.evaluate(result, cfg)
        out.append(dg.AssetCheckResult(
            check_name=check.name, asset_key=spec.name, passed=bool(outcome.passed), metadata=outcome.metadata,
            description=outcome.description,
            severity=dg.AssetCheckSeverity.WARN if check.warn else dg.AssetCheckSeverity.ERROR))
    return out
