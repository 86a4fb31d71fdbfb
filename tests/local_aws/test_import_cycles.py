"""No import circle inside local_aws, counting what only the type checker reads (`if
TYPE_CHECKING:`) too: a circle hidden from the interpreter is still two modules that each need
the other. In the local SageMaker, the façade (`backend`) builds the runners over the state;
no runner, and not the state, names the façade."""

from __future__ import annotations

from graphlib import CycleError, TopologicalSorter

import pytest

from .imports import ROOT, imported_modules, module_name

SAGEMAKER = "local_aws.sagemaker"


def import_graph() -> dict[str, set[str]]:
    sources = {module_name(path): path for path in sorted((ROOT / "local_aws").rglob("*.py"))}
    return {name: {m for m in imported_modules(path) if m in sources and m != name}
            for name, path in sources.items()}


def assert_no_cycle(graph: dict[str, set[str]]) -> None:
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")


def test_local_aws_has_no_import_cycle():
    graph = import_graph()
    # The graph sees relative imports and those made for the type checker only.
    assert graph[f"{SAGEMAKER}.backend"] >= {f"{SAGEMAKER}.state", f"{SAGEMAKER}.training_jobs"}
    assert f"{SAGEMAKER}.state" in graph[f"{SAGEMAKER}.tuning"]
    assert_no_cycle(graph)


def test_only_the_wire_and_the_server_know_the_facade():
    graph = import_graph()
    users = {name for name, imported in graph.items() if f"{SAGEMAKER}.backend" in imported}
    assert users == {f"{SAGEMAKER}.responses", f"{SAGEMAKER}.server"}


def test_the_old_backend_runner_circle_would_be_seen():
    graph = import_graph()
    graph[f"{SAGEMAKER}.training_jobs"] = graph[f"{SAGEMAKER}.training_jobs"] | {f"{SAGEMAKER}.backend"}
    with pytest.raises(CycleError):
        TopologicalSorter(graph).prepare()
