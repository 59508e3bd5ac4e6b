"""The Dagster webserver serves this code location: GraphQL lists the eight stage assets.

In-process (no port, no gRPC code server): the workspace is the root ``definitions`` module loaded
in this process, served through starlette's TestClient. This uses Dagster-internal modules, which
is why dagster is pinned to 1.13.*.
"""

from pathlib import Path

import dagster as dg
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster_webserver.webserver import DagsterWebserver
from starlette.testclient import TestClient

from stride_assets.engine.pipeline import STAGES

REPO_ROOT = Path(__file__).resolve().parents[1]

ASSETS_QUERY = "{ assetNodes { assetKey { path } groupName } }"
REPOS_QUERY = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"


def test_graphql_lists_the_stage_assets(tmp_path: Path) -> None:
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="definitions", attribute="defs", working_directory=str(REPO_ROOT)),
        location_name="stride",
    )
    with (
        dg.instance_for_test(temp_dir=str(tmp_path)) as instance,
        WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as context,
        TestClient(DagsterWebserver(context).create_asgi_app()) as client,
    ):
        info = client.get("/server_info")
        assert info.status_code == 200
        assert info.json()["dagster_version"] == dg.__version__

        repos = client.post("/graphql", json={"query": REPOS_QUERY}).json()
        assert {n["location"]["name"] for n in repos["data"]["repositoriesOrError"]["nodes"]} == {"stride"}

        data = client.post("/graphql", json={"query": ASSETS_QUERY}).json()
        assert "errors" not in data, data.get("errors")
        nodes = data["data"]["assetNodes"]
        assert {"/".join(n["assetKey"]["path"]) for n in nodes} == set(STAGES) | {
            "corpus_source", "eval_subsets", "retrained_losses", "lds_report"}
        assert {n["groupName"] for n in nodes} == {"data", "model", "attribution", "curation", "reports", "evaluation"}


TOP_EXAMPLES_QUERY = """{ assetOrError(assetKey: {path: ["influence_scores"]}) { ... on Asset {
  assetMaterializations(limit: 1) { partition metadataEntries { label ... on MarkdownMetadataEntry { mdStr } } } } } }"""


def test_graphql_serves_the_top_examples_with_query_text(monkeypatch, micro_run) -> None:
    """After a real micro run (the session's shared one, ``conftest.micro_run``), the UI's GraphQL gives
    influence_scores' top_examples with the queries' text."""
    from stride_assets.engine.result import escape_markdown

    monkeypatch.setenv("STRIDE_PROFILE", "micro")
    monkeypatch.setenv("STRIDE_HOME", str(micro_run.store))
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="definitions", attribute="defs", working_directory=str(REPO_ROOT)),
        location_name="stride",
    )
    assert micro_run.results and all(r.success for r in micro_run.results)
    with (
        micro_run.instance() as instance,
        WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as context,
        TestClient(DagsterWebserver(context).create_asgi_app()) as client,
    ):
        data = client.post("/graphql", json={"query": TOP_EXAMPLES_QUERY}).json()
    assert "errors" not in data, data.get("errors")
    (event,) = data["data"]["assetOrError"]["assetMaterializations"]
    assert event["partition"] == "default"
    top = next(e["mdStr"] for e in event["metadataEntries"] if e["label"] == "top_examples")
    assert escape_markdown(micro_run.cfg.queries.prompts[0][:40]) in top  # the user's own prompt, as text
