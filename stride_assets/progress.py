"""What ``stride run`` prints while Dagster runs the stages, from Dagster's public event API only.

A ``@dg.logger`` is handed every record of a run; on each one it reads the run's new event-log
entries (``DagsterInstance.get_records_for_run``: ``EventLogEntry`` and its ``DagsterEvent``) and
prints the few a user wants:

    > stage ...                          a stage step started
      [stage] message                    the engine's own messages (INFO and above)
    < stage done in N s                  a stage step succeeded
    ! step FAILED: module.Error: msg     a step failed (the innermost error, not Dagster's wrapper)
    - stage skipped (...)                an upstream step or blocking check failed
      check NAME on ASSET: passed        an asset check's evaluation
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any

import dagster as dg

Say = Callable[[str], None]


def root_cause(error: Any) -> str:
    """The error the step's own code raised, under Dagster's wrappers: the engine's message, which
    names the file, row or setting (not only the library error it wraps, which is its own cause)."""
    while error.cause is not None and (error.cls_name or "").startswith("Dagster"):
        error = error.cause
    return error.message.strip()  # already "module.ClassName: message"


def _check(evaluation: dg.AssetCheckEvaluation) -> str:
    return f"check {evaluation.check_name} on {evaluation.asset_key.to_user_string()}"


def _failure(event: dg.DagsterEvent, fallback: str | None) -> str:
    error = event.step_failure_data.error
    return root_cause(error) if error else (fallback or "failed")


class RunFollower(logging.Handler):
    """Prints a run's progress lines: on every record, the event-log entries stored since the last one."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str, stages: Collection[str], say: Say) -> None:
        super().__init__(logging.DEBUG)  # Dagster events (step start/end, checks) are DEBUG records
        self._instance, self._run_id, self._say = instance, run_id, say
        self._stages = set(stages)  # check steps report through their evaluation instead
        self._cursor: str | None = None
        self._started: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        # Dagster stores each event before handing it to the run's loggers, so it is already there.
        connection = self._instance.get_records_for_run(self._run_id, cursor=self._cursor)
        self._cursor = connection.cursor
        for event_record in connection.records:
            if line := self.line(event_record.event_log_entry):
                self._say(line)

    def line(self, entry: dg.EventLogEntry) -> str | None:
        """The progress line of one event-log entry, or None for Dagster's own bookkeeping."""
        step = entry.step_key or ""
        event = entry.dagster_event
        if event is None:
            if entry.user_message.startswith("Dependencies for step"):
                return f"- {step} skipped (an upstream step or blocking check failed)" if step in self._stages else None
            return f"  [{step}] {entry.user_message}" if step and int(entry.level) >= logging.INFO else None
        kind = event.event_type
        if kind == dg.DagsterEventType.STEP_START and step in self._stages:
            self._started[step] = entry.timestamp
            return f"> {step} ..."
        if kind == dg.DagsterEventType.STEP_SUCCESS and step in self._stages:
            return f"< {step} done in {entry.timestamp - self._started.get(step, entry.timestamp):.1f} s"
        if kind == dg.DagsterEventType.STEP_FAILURE:
            return f"! {step} FAILED: {_failure(event, entry.message)}"
        if kind == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            data = event.event_specific_data
            return f"  {_check(data)}: " + ("passed" if data.passed else f"FAILED ({data.severity.value.lower()})")
        return None


def progress_logger(instance: dg.DagsterInstance, stages: Collection[str], say: Say) -> dg.LoggerDefinition:
    """A Dagster logger printing the progress of each run it is attached to (see the module doc)."""

    followers: dict[str, RunFollower] = {}  # Dagster may build a run's loggers more than once: one cursor per run

    @dg.logger(description="Concise stage progress for the stride CLI")
    def stride_progress(init_context: dg.InitLoggerContext) -> logging.Logger:
        run_id = init_context.run_id or ""
        if run_id not in followers:
            followers[run_id] = RunFollower(instance, run_id, stages, say)
        logger = logging.Logger("stride", level=logging.DEBUG)
        logger.addHandler(followers[run_id])
        return logger

    return stride_progress


def failure_messages(result: dg.ExecuteInProcessResult) -> list[str]:
    """One line per failed step or failed check of a finished run (the run's own failure if none)."""
    messages = []
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            messages.append(f"{event.step_key}: {_failure(event, event.message)}")
        elif event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION and not event.event_specific_data.passed:
            messages.append(f"{_check(event.event_specific_data)} failed")
        elif event.event_type == dg.DagsterEventType.RUN_FAILURE and not messages:
            messages.append(event.message or "run failed")
    return messages
