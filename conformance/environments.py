"""A cached virtualenv per SageMaker framework image, holding exactly its packages.

    python -m conformance.environments {inference,training} [--override NAME==VERSION ...]

prints the interpreter's path on stdout (progress goes to stderr). The environment lives
under `${XDG_CACHE_HOME:-~/.cache}/image-pipeline/conformance/<scope>-<hash>`, the hash
covering the Python minor version and the sorted requirements, so any change in
infra/frameworks.py (or an override) builds a new one. It is built in a `.partial-*`
folder beside it and renamed when complete: an interrupted build is never taken for a
finished one, and two concurrent builds of the same environment both end well.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from infra.frameworks import IMAGES, FrameworkImage

PARTIAL = ".partial-"


def progress(check: str, event: str, **fields: object) -> None:
    """One JSON progress line on stderr (as conformance/training.py's; stdout is kept for results)."""
    print(json.dumps({"check": check, "event": event, **fields}, default=str), file=sys.stderr, flush=True)


def log(event: str, **fields: object) -> None:
    progress("environment", event, **fields)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "image-pipeline" / "conformance"


# --- finding a Python of the image's minor version ---------------------------------------


def _runs_as(python: Path | str, minor: str) -> bool:
    """Whether `python` starts and is `minor` (a pyenv shim on PATH may exist and still fail)."""
    try:
        out = subprocess.run([str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip() == minor


def _pyenv_roots() -> Iterable[Path]:
    try:
        out = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            yield Path(out.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    if os.environ.get("PYENV_ROOT"):
        yield Path(os.environ["PYENV_ROOT"])
    yield Path.home() / ".pyenv"


def _patch_level(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.name))


def find_python(minor: str) -> Path:
    """`python<minor>` on PATH if it really runs, else the newest pyenv `<minor>.*`."""
    on_path = shutil.which(f"python{minor}")
    if on_path and _runs_as(on_path, minor):
        return Path(on_path)
    for root in _pyenv_roots():
        pattern = re.compile(rf"^{re.escape(minor)}\.\d+$")  # 3.12.1, not 3.12-dev or 3.12.1t
        versions = sorted((p for p in (root / "versions").glob(f"{minor}.*") if pattern.match(p.name)),
                          key=_patch_level, reverse=True)
        for version in versions:
            candidate = version / "bin" / f"python{minor}"
            if _runs_as(candidate, minor):
                return candidate
    raise SystemExit(
        f"no Python {minor} found: the deployed image runs Python {minor}. Put python{minor} on PATH "
        f"(e.g. `apt-get install python{minor} python{minor}-venv`, or `pyenv install {minor}`, "
        f"whose versions are found without activating them) and run again.")


# --- building and caching ---------------------------------------------------------------


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503: Setuptools, setuptools, set_uptools


def requirements(image: FrameworkImage, overrides: Mapping[str, str] | None = None) -> list[str]:
    """The image's pins with `overrides` (name -> version) replacing or adding pins."""
    packages = {_normalize(name): (name, version) for name, version in image.packages.items()}
    for name, version in (overrides or {}).items():
        packages[_normalize(name)] = (packages.get(_normalize(name), (name, ""))[0], version)
    return [f"{name}=={version}" for name, version in packages.values()]


def environment_dir(image: FrameworkImage, reqs: list[str]) -> Path:
    digest = hashlib.sha256("\n".join([image.python, *sorted(reqs)]).encode()).hexdigest()[:12]
    return cache_root() / f"{image.scope}-{digest}"


def _interpreter(env: Path) -> Path:
    return env / "bin" / "python"


def _remove_abandoned_partials(root: Path) -> None:
    """Partial builds whose builder process is gone (interrupted) are only wasted disk."""
    for partial in root.glob(f".*{PARTIAL}*"):
        pid = partial.name.rsplit(PARTIAL, 1)[1].split("-", 1)[0]
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(partial, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


def _relocate(partial: Path, final: Path) -> None:
    """Point bin/ scripts at the final path: venv writes absolute shebangs (`torchserve`'s too)."""
    old, new = str(partial).encode(), str(final).encode()
    for script in (partial / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        data = script.read_bytes()
        if old in data:
            script.write_bytes(data.replace(old, new))


def ensure_environment(image: FrameworkImage, overrides: Mapping[str, str] | None = None) -> Path:
    """The interpreter of a virtualenv holding exactly `image`'s packages; built once, then cached."""
    reqs = requirements(image, overrides)
    final = environment_dir(image, reqs)
    if _interpreter(final).exists():
        log("cached", scope=image.scope, path=final)
        return _interpreter(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_partials(final.parent)
    python = find_python(image.python)
    partial = Path(tempfile.mkdtemp(prefix=f".{final.name}{PARTIAL}{os.getpid()}-", dir=final.parent))
    started = time.monotonic()
    log("build", scope=image.scope, python=python, path=final, overrides=dict(overrides or {}))
    try:
        partial.chmod(0o755)  # mkdtemp's 0700 would stay on the finished environment
        # pip and venv talk on stderr: stdout carries only results.
        subprocess.run([str(python), "-m", "venv", "--prompt", final.name, str(partial)], check=True, stdout=sys.stderr)
        # Kept in the environment: what it was built from, for whoever inspects the cache.
        (partial / "requirements.txt").write_text("\n".join(reqs) + "\n")
        subprocess.run([str(_interpreter(partial)), "-m", "pip", "install", "--no-input", "--progress-bar", "off",
                        "-r", str(partial / "requirements.txt")], check=True, stdout=sys.stderr)
        _relocate(partial, final)
        try:
            partial.rename(final)
        except OSError:  # a concurrent build finished first: use it
            if not _interpreter(final).exists():
                raise
            shutil.rmtree(partial, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        log("failed", scope=image.scope, seconds=round(time.monotonic() - started, 1))
        raise
    log("built", scope=image.scope, path=final, seconds=round(time.monotonic() - started, 1))
    return _interpreter(final)


def parse_override(value: str) -> tuple[str, str]:
    """`name==version`, as pip writes a pin (argparse's `type`: a bad one is a usage error)."""
    name, sep, version = value.partition("==")
    if not sep or not name.strip() or not version.strip():
        raise argparse.ArgumentTypeError(f"override {value!r} is not NAME==VERSION")
    return name.strip(), version.strip()


def add_override_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--override", action="append", default=[], type=parse_override, metavar="NAME==VERSION",
                        help="replace a pin of infra/frameworks.py for this run (repeatable)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scope", choices=sorted(IMAGES))
    add_override_argument(parser)
    args = parser.parse_args(argv)
    print(ensure_environment(IMAGES[args.scope], dict(args.override)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
