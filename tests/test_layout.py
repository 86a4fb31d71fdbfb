"""The tests' own layout: what several test modules share lives in a helper module named for what it
holds (or a conftest), never in one of them, so that a reader finds it by its name and a test module
can be split or moved without breaking the others."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_test_modules(source: str, package: str) -> set[str]:
    """The test modules (`tests.….test_*`) that `source`, a module of `package`, imports, however the
    import is spelt: `from .test_x import y`, `from . import test_x`, `import tests.app.test_x`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names = [module] if is_test_module(module) else [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if is_test_module(name))
    return found


def is_test_module(name: str) -> bool:
    """A module of the tests package named test_* (a product's `test_line` function is not one)."""
    parts = name.split(".")
    return parts[0] == "tests" and any(part.startswith("test_") for part in parts[1:])


def test_no_module_under_tests_imports_a_test_module():
    sources = sorted(TESTS.rglob("*.py"))
    assert TESTS / "app" / "test_retraining.py" in sources
    offenders = {}
    for path in sources:
        package = ".".join(path.relative_to(TESTS.parent).parent.parts)
        if imported := imported_test_modules(path.read_text(), package):
            offenders[path.relative_to(TESTS).as_posix()] = imported
    assert offenders == {}


def test_the_check_sees_every_spelling_of_such_an_import():
    source = ("from .test_retraining import tick\nfrom . import test_config\nimport tests.app.test_api\n"
              "from tests.training import test_train as t\nfrom ..local_aws.test_events import DONE\n"
              "from .conftest import ENV\nfrom training.metrics import test_line\nimport pytest\n")
    assert imported_test_modules(source, "tests.app") == {
        "tests.app.test_retraining", "tests.app.test_config", "tests.app.test_api", "tests.training.test_train",
        "tests.local_aws.test_events"}
