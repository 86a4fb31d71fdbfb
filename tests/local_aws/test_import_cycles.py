"""No import circle inside local_aws at run time. (The runners still name the backend's type
for the type checker, under `if TYPE_CHECKING:`.)"""

from __future__ import annotations

from graphlib import CycleError, TopologicalSorter

import pytest

from .imports import ROOT, imported_modules, module_name


def import_graph() -> dict[str, set[str]]:
    sources = {module_name(path): path for path in sorted((ROOT / "local_aws").rglob("*.py"))}
    return {name: {m for m in imported_modules(path, at_runtime=True) if m in sources and m != name}
            for name, path in sources.items()}


def test_local_aws_has_no_import_cycle_at_run_time():
    graph = import_graph()
    assert graph["local_aws.sagemaker.backend"] >= {"local_aws.sagemaker.records", "local_aws.sagemaker.training_jobs"}
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")


def test_a_cycle_would_be_seen():
    graph = {**import_graph(), "local_aws.sagemaker.records": {"local_aws.sagemaker.backend"}}
    with pytest.raises(CycleError):
        TopologicalSorter(graph).prepare()
