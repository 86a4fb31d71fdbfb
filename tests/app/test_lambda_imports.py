"""What the Lambda code imports: the standard library, its requirements, and the pure training modules it vendors."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALLOWED_THIRD_PARTY = {"boto3", "botocore", "aws_lambda_powertools", "pydantic", "chalice"}
VENDORED_TRAINING = ("drift", "image_contract", "metrics", "splits")
ALLOWED_FROM_REPO = {*(f"training.{name}" for name in VENDORED_TRAINING), "chalice_app"}


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def test_the_lambda_code_imports_nothing_heavy():
    sources = [ROOT / "app.py", *sorted((ROOT / "chalice_app").rglob("*.py"))]
    for source in sources:
        for module in imported_modules(source):
            top = module.split(".")[0]
            allowed = (top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY
                       or any(module == m or module.startswith(m + ".") for m in ALLOWED_FROM_REPO))
            assert allowed, f"{source.relative_to(ROOT)} imports {module}"


def test_the_training_modules_it_uses_are_pure_python():
    for name in VENDORED_TRAINING:
        for module in imported_modules(ROOT / "training" / f"{name}.py"):
            assert module.split(".")[0] in sys.stdlib_module_names | {"__future__"}, f"training/{name}.py imports {module}"
    vendored = sorted(p.name for p in (ROOT / "vendor" / "training").iterdir())
    assert vendored == ["__init__.py", *(f"{name}.py" for name in VENDORED_TRAINING)]
    assert (ROOT / "vendor" / "chalice_app").resolve() == (ROOT / "chalice_app").resolve()
