"""Every import of the training and serving code is there in the image it runs in.

The training job runs in SageMaker's PyTorch training image, plus what the source's
requirements.txt brings; the endpoint in the PyTorch inference image, plus the artefact's
code/requirements.txt (infra/frameworks.py lists both images). An import of anything else
(the Lambda's Powertools, say) works here and dies on AWS. The conformance check proves it
by running in those environments; this test catches it in seconds, from the import
statements and the dependency metadata of what is installed here.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

from infra.frameworks import INFERENCE, TRAINING, FrameworkImage
from training.artifact import CODE_FILES

REPO_ROOT = Path(__file__).resolve().parents[2]
OWN_PACKAGES = {"training", "inference"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(canonical(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0]))
    return names


def with_dependencies(names: set[str]) -> set[str]:
    """The distributions and, transitively, what they require (their metadata as installed here)."""
    found, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for requirement in requires:
            if "extra ==" not in requirement:
                todo.append(canonical(re.split(r"[<>=!~;\[ (]", requirement, maxsplit=1)[0]))
    return found


def _optional(tree: ast.AST) -> set[int]:
    """ids of the import statements inside `try: ... except ImportError` (or a handler that catches it):
    code that runs without them."""
    catches = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}

    def handles(handler: ast.ExceptHandler) -> bool:
        types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        return handler.type is None or any(isinstance(t, ast.Name) and t.id in catches for t in types)

    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(handles(h) for h in node.handlers):
            guarded |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    return guarded


def imported_modules(source: str) -> set[str]:
    """Top-level modules a file needs, imported at module level or inside functions alike."""
    modules, tree = set(), ast.parse(source)
    optional = _optional(tree)
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules


def missing_imports(files: dict[str, str], available: set[str]) -> list[str]:
    """'file: module' for each import that no available distribution provides."""
    providers = metadata.packages_distributions()
    missing = []
    for name, source in files.items():
        for module in sorted(imported_modules(source) - OWN_PACKAGES - set(sys.stdlib_module_names)):
            if not {canonical(d) for d in providers.get(module, [module])} & available:
                missing.append(f"{name}: {module}")
    return missing


def image_packages(image: FrameworkImage, requirements: Path) -> set[str]:
    return with_dependencies({canonical(name) for name in image.packages} | requirement_names(requirements))


def test_the_training_code_imports_only_what_the_training_image_and_its_requirements_provide():
    files = {path.relative_to(REPO_ROOT).as_posix(): path.read_text()
             for package in ("training", "inference") for path in sorted((REPO_ROOT / package).glob("*.py"))}
    assert missing_imports(files, image_packages(TRAINING, REPO_ROOT / "training" / "requirements.txt")) == []


def test_the_artefacts_code_imports_only_what_the_serving_image_and_its_requirements_provide():
    files = {name: path.read_text() for name, path in CODE_FILES.items() if name.endswith(".py")}
    assert missing_imports(files, image_packages(INFERENCE, REPO_ROOT / "inference" / "requirements.txt")) == []


@pytest.mark.parametrize("statement", ["from aws_lambda_powertools import Logger", "import chalice",
                                       "def f():\n    import aws_lambda_powertools.tracing",
                                       "try:\n    import chalice\nexcept KeyError:\n    pass"])
def test_an_import_of_a_lambda_only_package_is_caught(statement):
    available = image_packages(TRAINING, REPO_ROOT / "training" / "requirements.txt")
    assert missing_imports({"training/x.py": statement}, available) != []


def test_an_import_guarded_by_except_import_error_is_optional():
    source = "try:\n    import chalice\nexcept ImportError:\n    chalice = None\n"
    assert missing_imports({"training/x.py": source}, set()) == []
