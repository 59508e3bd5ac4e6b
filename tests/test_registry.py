"""The stage registry: every stage wired from one table, and code versions that follow the code that runs.

The code-version test edits a helper in a temporary copy of the package and computes every stage's
code version there (in a subprocess, so the copy is what gets imported): exactly the stages that run
the edited module change; Dagster then marks them and their downstream stale.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stride_assets.engine import registry
from stride_assets.engine.evaluation.pipeline_eval import EVALUATION_STAGES
from stride_assets.engine.stages import STAGES

REPO = Path(__file__).resolve().parents[1]
VERSIONS = """
import json
from stride_assets.engine.config import load_profile
from stride_assets.engine.evaluation.config import EvaluationRun
from stride_assets.engine.evaluation.pipeline_eval import EVALUATION_STAGES
from stride_assets.engine.registry import code_version
from stride_assets.engine.stages import STAGES
p = load_profile("micro")
out = {s.name: code_version(s, p.config) for s in STAGES}
out |= {s.name: code_version(s, EvaluationRun.from_profile(p)) for s in EVALUATION_STAGES}
print(json.dumps(out))
"""


def _versions(root: Path) -> dict[str, str]:
    done = subprocess.run([sys.executable, "-c", VERSIONS], cwd=root, capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)})
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("copy")
    shutil.copytree(REPO / "stride_assets", root / "stride_assets", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "resources", root / "resources")
    return root


def _edit(root: Path, module: str, function: str) -> None:
    """Add a statement to the body of ``function`` in ``module`` (a path under stride_assets/engine)."""
    path = root / "stride_assets" / "engine" / module
    source = path.read_text()
    head = source.index(f"def {function}(")
    body = source.index('"""', source.index('"""', head) + 3) + 3  # after the docstring
    path.write_text(source[:body] + "\n    _edited = True" + source[body:])


ALL = [*STAGES, *EVALUATION_STAGES]


@pytest.mark.parametrize(("module", "function", "expected"), [
    ("recovery.py", "recover", {"influence_scores", "attribution_report"}),  # recover; the report's token split
    ("stages/influence_scores.py", "top_k_table", {"influence_scores"}),  # a helper inside a stage module
    ("measure.py", "responses", {"steering_operators", "perturbation_matrix", "attribution_report"}),  # + per token
    ("curation.py", "curate", {"curated_dataset"}),
    ("html_page.py", "mark", {"attribution_report", "curation_report"}),  # the reports' page helpers
    ("evaluation/lds.py", "lds", {"lds_report"}),  # the harness's stages are versioned the same way
])
def test_editing_a_helper_stales_exactly_the_stages_that_run_it(copy: Path, module: str, function: str,
                                                                 expected: set[str]) -> None:
    before = _versions(copy)
    original = (copy / "stride_assets" / "engine" / module).read_text()
    try:
        _edit(copy, module, function)
        after = _versions(copy)
    finally:
        (copy / "stride_assets" / "engine" / module).write_text(original)
    assert {s for s in before if before[s] != after[s]} == expected


def test_dagster_downstream_is_the_registry_downstream() -> None:
    """What Dagster marks stale below a changed stage is what the registry says reads it."""
    import dagster as dg

    from stride_assets.defs import build_defs

    graph = build_defs("micro", storage_root="/tmp/unused").resolve_asset_graph()
    for spec in ALL:
        below, frontier = set(), {dg.AssetKey(spec.name)}
        while frontier:
            frontier = {c for k in frontier for c in graph.get(k).child_keys} - below
            below |= frontier
        assert {k.to_user_string() for k in below} == registry.downstream(ALL, spec.name), spec.name


def test_declared_modules_exist_and_jobs_share_keys() -> None:
    for spec in ALL:
        for module in registry.code_modules(spec):
            assert registry._module_file(module).is_file(), (spec.name, module)
    jobs = registry.jobs(STAGES)
    assert list(jobs) == ["model", "shard", "queries", "measure", "recovery", "curation"]
    assert [s.name for s in jobs["shard"]] == ["training_corpus", "subset_design", "steering_operators"]


def test_every_stage_module_has_its_run_and_upstreams_exist() -> None:
    names = {s.name for s in ALL}
    for spec in ALL:
        assert spec.description, spec.name
        assert set(spec.upstream) <= names, spec.name
    assert registry.downstream(STAGES, "steering_operators") == {
        "perturbation_matrix", "influence_scores", "curated_dataset", "selected_dataset", "contamination_report",
        "attribution_report", "curation_report"}


def test_execute_checks_the_keys() -> None:
    spec = registry.by_name(STAGES)["subset_design"]
    with pytest.raises(KeyError, match="takes the keys"):
        registry.execute(spec, None, None, batch="default")
