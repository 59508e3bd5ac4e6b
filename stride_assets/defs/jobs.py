"""The one job (every stage and check) and its nightly schedule."""

import dagster as dg

stride_job = dg.define_asset_job(
    "stride_job",
    selection=dg.AssetSelection.all() - dg.AssetSelection.groups("evaluation"),
    description="Run the whole STRIDE pipeline: corpus to curated dataset, with its checks.",
)

stride_nightly = dg.ScheduleDefinition(
    name="stride_nightly",
    job=stride_job,
    cron_schedule="0 3 * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Rebuild everything at 03:00 (off until switched on in the UI).",
)
