"""The emulated services know nothing of the product: only `local_aws/project/` (and the
`python -m local_aws` entry point that runs it) imports the product's packages."""

from __future__ import annotations

from pathlib import Path

from .imports import ROOT, imported_modules, module_name

PRODUCT = {"app", "chalice_app", "training", "inference", "infra"}
ADAPTER = "local_aws.project"


def service_sources() -> list[Path]:
    adapter = ROOT / "local_aws" / "project"
    return [path for path in sorted((ROOT / "local_aws").rglob("*.py"))
            if adapter not in path.parents and path != ROOT / "local_aws" / "__main__.py"]


def test_the_emulated_services_import_nothing_of_the_product():
    sources = service_sources()
    assert {module_name(p).split(".")[1] for p in sources if p.parent != ROOT / "local_aws"} >= {
        "sagemaker", "endpoint_host", "dispatcher"}
    for source in sources:
        for module in imported_modules(source):
            assert module.split(".")[0] not in PRODUCT, f"{source.relative_to(ROOT)} imports {module}"
            assert not (module == ADAPTER or module.startswith(ADAPTER + ".")), \
                f"{source.relative_to(ROOT)} imports the project adapter ({module})"


def test_relative_imports_are_resolved_so_the_check_sees_them():
    assert {"local_aws.dispatcher.queues", "local_aws.dispatcher.stage"} <= imported_modules(
        ROOT / "local_aws" / "dispatcher" / "dispatcher.py")
    assert "local_aws.project.infra" in imported_modules(ROOT / "local_aws" / "project" / "stack.py")  # from . import
