"""The ``stride`` command line: help, argument parsing, environment hand-off, clear errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stride_assets import cli
from stride_assets.resources import build_resources

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_the_commands() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stride_assets.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("run", "attribute", "ui", "mlflow-ui"):
        assert command in proc.stdout


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("stride")
    if not script.exists():
        pytest.skip("stride console script not installed (pip install -e .)")
    proc = subprocess.run([str(script), "attribute", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--top-k" in proc.stdout, proc.stderr


def test_parse_run_and_attribute() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["run", "--profile", "micro", "--store", "/tmp/s"])
    assert (args.command, args.profile, args.store, args.func) == ("run", "micro", "/tmp/s", cli.cmd_run)
    args = parser.parse_args(["attribute", "a text", "another", "--top-k", "3"])
    assert args.texts == ["a text", "another"] and args.top_k == 3 and args.func == cli.cmd_attribute
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["attribute"])  # TEXT is required


def test_profile_and_store_reach_the_resources(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(["run", "--profile", "micro", "--store", str(tmp_path / "s")])
    cli._apply_common(args)
    stride = build_resources()["stride"]
    assert stride.profile == "micro"
    assert stride.store().root == (tmp_path / "s").resolve()
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"]


def test_attribute_without_store_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    assert cli.main(["attribute", "hello", "--store", str(missing)]) == 1
    err = capsys.readouterr().err
    assert "no stride store" in err and str(missing) in err and "stride run" in err


def test_attribute_on_empty_store_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert cli.main(["attribute", "hello", "--store", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("stride: error:") and "Traceback" not in err


def test_attribute_rejects_bad_top_k(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["attribute", "hello", "--top-k", "0"]) == 2
    assert "--top-k" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["ui", "mlflow-ui"])
def test_servers_bind_to_loopback(command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    monkeypatch.setattr(cli.os, "execvp", lambda file, argv: calls.append(list(argv)))
    monkeypatch.chdir(tmp_path)  # cmd_ui changes into the repo; monkeypatch restores the cwd
    cli.main([command])
    (argv,) = calls
    assert argv[argv.index("--host" if command == "mlflow-ui" else "-h") + 1] == "127.0.0.1"
    assert "0.0.0.0" not in argv
    if command == "ui":
        assert argv[1:4] == ["dev", "-w", "workspace.yaml"]
        assert os.environ["DAGSTER_HOME"] == str(tmp_path / "dh")
        assert (tmp_path / "dh" / "dagster.yaml").read_text() == (REPO_ROOT / "resources" / "dagster.yaml").read_text()
    else:
        uri = os.environ["MLFLOW_TRACKING_URI"]
        assert argv[argv.index("--backend-store-uri") + 1] == uri
        db = Path(uri.removeprefix("sqlite:///"))
        assert argv[argv.index("--default-artifact-root") + 1] == (db.parent / "mlartifacts").as_uri()


def test_instance_template_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dagster as dg

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    home = cli.prepare_dagster_home()
    assert home == (tmp_path / "home").resolve() and (home / "dagster.yaml").is_file()
    with dg.DagsterInstance.get() as instance:
        assert instance.root_directory == str(home)
        assert not instance.telemetry_enabled
        concurrency = instance.get_concurrency_config()
        assert concurrency.run_queue_config.max_concurrent_runs == 1
        assert concurrency.pool_config.default_pool_limit == 1


def test_run_with_unknown_profile_fails_before_any_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    assert cli.main(["run", "--profile", "no-such-profile", "--store", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert "stride: error: unknown profile 'no-such-profile'" in err and "micro" in err


def test_run_reports_the_failing_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stage that raises fails its run: exit 1, the stage and the engine's message, the rest skipped;
    a corpus path that does not exist fails before any run."""
    import dagster as dg
    import yaml

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    missing = tmp_path / "missing.yaml"
    missing.write_text(f"corpus:\n  source: files\n  paths: [{tmp_path / 'missing.parquet'}]\n")
    assert cli.main(["run", "--profile", str(missing), "--store", str(tmp_path / "s")]) == 1
    assert "missing.parquet" in capsys.readouterr().err

    from stride_assets.engine.config import profile_path

    broken = yaml.safe_load(profile_path("micro").read_text())
    broken["design"] = {"K": 5000, "d": 2}  # too many subsets for a shard: the preflight says so before any run
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh2"))  # an instance serves one profile and store
    assert cli.main(["run", "--profile", str(tmp_path / "broken.yaml"), "--store", str(tmp_path / "s2")]) == 1
    captured = capsys.readouterr()
    assert "stride: error:" in captured.err and "is too large" in captured.err
    assert "design.K=5000 per corpus.shard_size=80" in captured.err
    with dg.DagsterInstance.get() as instance:
        assert instance.get_runs() == []  # the base model never trained

    # a stage that raises fails its run, and the message keeps the engine's words (the file), not
    # only the library error underneath
    bad_queries = tmp_path / "queries.jsonl"
    bad_queries.write_text("this is not json\n")
    broken = yaml.safe_load(profile_path("micro").read_text())
    broken["queries"]["path"] = str(bad_queries)
    (tmp_path / "bad_queries.yaml").write_text(yaml.safe_dump(broken))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh3"))
    assert cli.main(["run", "--profile", str(tmp_path / "bad_queries.yaml"), "--store", str(tmp_path / "s3")]) == 1
    captured = capsys.readouterr()
    assert "! query_set FAILED" in captured.out
    assert "stride run FAILED" in captured.err
    assert "query_set: stride_assets.engine.errors.StrideInputError" in captured.err
    assert str(bad_queries) in captured.err
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()  # newest first: the query run failed after the model and shard runs
        assert [r.job_name for r in runs] == ["stride_queries_job", "stride_shard_job", "stride_shard_job",
                                              "stride_model_job"]
        assert [r.status for r in runs] == [dg.DagsterRunStatus.FAILURE] + [dg.DagsterRunStatus.SUCCESS] * 3


def test_bad_yaml_is_one_line_with_its_position(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("corpus:\n  source: files\n  paths: [a, b\nmodel: {}\n")
    assert cli.main(["run", "--profile", str(bad), "--store", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "line 4, column 6" in err and str(bad) in err


def test_an_instance_serves_one_profile_and_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The first use records the profile and store with the instance; a CLI run or a code location
    (what the daemon and the UI load) with other ones is refused, naming both."""
    import definitions
    from stride_assets.engine.errors import StrideConfigError
    from stride_assets.location import bind

    home = tmp_path / "dh"
    home.mkdir()
    bind(home, "micro", tmp_path / "s")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert cli.main(["run", "--profile", "default", "--store", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert "serves profile" in err and "micro.yaml" in err and "default.yaml" in err
    monkeypatch.setenv("STRIDE_PROFILE", "micro")
    monkeypatch.setenv("STRIDE_HOME", str(tmp_path / "elsewhere"))
    with pytest.raises(StrideConfigError, match="elsewhere"):
        definitions.defs()
    monkeypatch.setenv("STRIDE_HOME", str(tmp_path / "s"))
    assert definitions.defs().resolve_job_def("stride_shard_job")  # the instance's own profile and store load
    # without DAGSTER_HOME, a store of one's own gets an instance of its own
    monkeypatch.delenv("DAGSTER_HOME")
    from stride_assets import commands

    assert commands.default_dagster_home() == (tmp_path / "s").resolve() / ".dagster_home"
