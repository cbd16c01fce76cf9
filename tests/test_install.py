"""The README's install command (scripts/install.sh: setup.cfg's install_requires plus the `all`
extra) installs every module that the package and the examples import at run time, not the
`test` extra alone."""

from __future__ import annotations

import ast
import configparser
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parent.parent
INSTALL_EXTRAS = ("all",)  # what ./scripts/install.sh installs by default
RUNTIME_SOURCES = ("p2pai", "examples")


def imported_modules() -> dict[str, set[str]]:
    """Top-level modules imported anywhere in the runtime sources (inside functions too), with the files."""
    found: dict[str, set[str]] = {}
    for folder in RUNTIME_SOURCES:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def declared_requirements() -> list[Requirement]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    for extra in INSTALL_EXTRAS:
        lines += config["options.extras_require"][extra].splitlines()
    return [Requirement(line) for line in lines if line.strip()]


def installed_closure(requirements: list[Requirement]) -> set[str]:
    """The distributions these requirements install, dependencies of dependencies included."""
    seen: set[str] = set()
    pending = [(requirement, frozenset(requirement.extras)) for requirement in requirements]
    while pending:
        requirement, extras = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(requirement.name) or []:
            dependency = Requirement(line)
            markers = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            if dependency.marker is None or any(dependency.marker.evaluate(m) for m in markers):
                pending.append((dependency, frozenset(dependency.extras)))
    return seen


def test_every_runtime_import_is_installed_by_the_install_command() -> None:
    providers = metadata.packages_distributions()
    installed = installed_closure(declared_requirements())
    missing = []
    for module, files in sorted(imported_modules().items()):
        if module in sys.stdlib_module_names or module == "p2pai":
            continue
        distributions = {canonicalize_name(name) for name in providers.get(module, [])}
        if not distributions & installed:
            missing.append(f"{module} (imported by {', '.join(sorted(files))}; from {distributions or 'nothing'})")
    assert not missing, "not installed by ./scripts/install.sh: " + "; ".join(missing)


def test_the_readme_installs_the_extras_checked_here() -> None:
    """The quick start runs ./scripts/install.sh without arguments, which installs INSTALL_EXTRAS."""
    quick_start = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "\n./scripts/install.sh && .venv/bin/p2pai start\n" in quick_start
    default = re.search(r'^extras="\$\{1:-([a-z,]+)\}"$', (ROOT / "scripts" / "install.sh").read_text(), re.M)
    assert default is not None and tuple(default.group(1).split(",")) == INSTALL_EXTRAS


def test_the_closure_leaves_out_the_test_extra() -> None:
    """The check above can fail: pytest, a test-only dependency, is outside the closure."""
    assert "pytest" not in installed_closure(declared_requirements())
    assert {"aiohttp", "llama-cpp-python", "gguf", "openai"} <= installed_closure(declared_requirements())
