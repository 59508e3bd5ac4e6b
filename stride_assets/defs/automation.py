"""Declarative automation: the condition each ``eager`` stage refreshes on, and the sensor that
evaluates them whenever the Dagster daemon runs (declared here, running by default, so nothing has
to be switched on in the UI).

A stage's block is requested when it is missing (newly added, or already missing when the
conditions are first evaluated: a block added while the daemon was down is built, not forgotten)
or when one of its trigger stages (``StageSpec.triggers``, default every upstream) updated since it
was last requested, and only once none of its inputs is missing or in progress. So the curated
outputs wait for the influence scores they are derived from (they do not fire on the corpus
update that comes first), and a change is curated once.
"""

import dagster as dg

from stride_assets.engine.registry import StageSpec

AUTOMATION_TICK_SECONDS = 10


def refresh_condition(spec: StageSpec) -> dg.AutomationCondition:
    c = dg.AutomationCondition
    condition = (
        (c.newly_missing() | (c.missing() & c.initial_evaluation()) | c.any_deps_updated()).since_last_handled()
        & ~c.any_deps_missing()
        & ~c.any_deps_in_progress()
        & ~c.in_progress()
    ).with_label("stride_refresh")
    ignored = set(spec.upstream) - set(spec.triggers) if spec.triggers else set()
    return condition.ignore(dg.AssetSelection.assets(*sorted(ignored))) if ignored else condition


def automation_sensor(specs: list[StageSpec]) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "stride_automation",
        target=dg.AssetSelection.assets(*(s.name for s in specs if s.eager)),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=AUTOMATION_TICK_SECONDS,
        description="Measures new blocks, re-solves the query batches and refreshes the curated outputs "
        "(the stages' automation conditions), whenever the Dagster daemon runs.",
    )
