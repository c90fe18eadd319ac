"""Every third-party module the runtime packages (router/, services/, shared/) import is declared.

The imports are read from the source (``ast``), not by importing it:

- a plain ``import x`` / ``from x import y`` anywhere (module level, class body or inside a
  function; ``if TYPE_CHECKING:`` blocks excepted) must come from a distribution in
  ``[project.dependencies]``: a bare install has those only;
- ``require("x", extra="e")`` (``shared/extras.py``, the way an optional feature imports) must come
  from a distribution of extra ``e`` (or of the dependencies).

Import names map to distributions through ``importlib.metadata.packages_distributions()`` of this
environment, with ``ALIASES`` for optional modules that may not be installed here. A failure lists
``module (file:line) -> distribution: not declared in ...``.
"""

from __future__ import annotations

import ast
import copy
import re
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from shared.extras import MissingExtra, require
from tests.repo import REPO_ROOT

pytestmark = pytest.mark.unit

RUNTIME_PACKAGES = ("router", "services", "shared")
PROJECT = "epd-serve"
# Import name -> distribution, for modules this environment may not have installed (optional
# features) or whose name packages_distributions() cannot tell.
ALIASES = {
    "PIL": "pillow",
    "zmq": "pyzmq",
    "mooncake": "mooncake-transfer-engine-non-cuda",
    "opentelemetry": "opentelemetry-api",
    "av": "av",
}


@dataclass(frozen=True)
class Import:
    module: str  # as written: "matplotlib.pyplot"
    file: str  # relative to the scanned root
    line: int
    extra: str | None = None  # require(..., extra=E): the extra it belongs to
    problem: str | None = None  # a require() call the check cannot read

    @property
    def top(self) -> str:
        return self.module.split(".")[0]

    def where(self) -> str:
        return f"{self.module} ({self.file}:{self.line})"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _require_call(node: ast.Call) -> bool:
    f = node.func
    return (isinstance(f, ast.Name) and f.id == "require") or (
        isinstance(f, ast.Attribute) and f.attr == "require"
    )


class _Collector(ast.NodeVisitor):
    def __init__(self, file: str) -> None:
        self.file = file
        self.found: list[Import] = []

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):  # annotations only: never imported at run time
            for stmt in node.orelse:
                self.visit(stmt)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [Import(a.name, self.file, node.lineno) for a in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:  # relative imports are the project's own
            self.found.append(Import(node.module, self.file, node.lineno))

    def visit_Call(self, node: ast.Call) -> None:
        if _require_call(node):
            args = {kw.arg: kw.value for kw in node.keywords}
            module = node.args[0] if node.args else args.get("module")
            extra = args.get("extra")
            if isinstance(module, ast.Constant) and isinstance(extra, ast.Constant):
                self.found.append(Import(module.value, self.file, node.lineno, extra=extra.value))
            else:
                self.found.append(
                    Import("?", self.file, node.lineno, problem="require() needs literal module and extra")
                )
        self.generic_visit(node)


def collect_imports(root: Path, packages: tuple[str, ...] = RUNTIME_PACKAGES) -> list[Import]:
    found: list[Import] = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            collector = _Collector(rel)
            collector.visit(ast.parse(path.read_text(), filename=rel))
            found += collector.found
    return found


def requirement_name(req: str) -> tuple[str, list[str]]:
    """``"epd-serve[loadgen]>=1"`` -> ("epd-serve", ["loadgen"])."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", req)
    assert m, f"unreadable requirement {req!r}"
    extras = [e.strip() for e in (m.group(2) or "").split(",") if e.strip()]
    return normalize(m.group(1)), extras


def declared(project: dict, extra: str | None = None) -> set[str]:
    """Normalized distribution names of the dependencies, or of one extra (self-references
    such as ``epd-serve[loadgen]`` expanded)."""
    optional = project.get("optional-dependencies", {})
    reqs = project.get("dependencies", []) if extra is None else optional.get(extra, [])
    names: set[str] = set()
    for req in reqs:
        name, extras = requirement_name(req)
        if name == PROJECT:
            names |= set().union(*(declared(project, e) for e in extras)) if extras else declared(project)
        else:
            names.add(name)
    return names


@cache
def _installed() -> dict[str, list[str]]:
    return packages_distributions()


def distributions(top: str) -> list[str]:
    if top in ALIASES:
        return [normalize(ALIASES[top])]
    return sorted({normalize(d) for d in _installed().get(top, [])})


def undeclared(pyproject: dict, imports: list[Import]) -> list[str]:
    """One line per import not covered by the declared distributions."""
    project = pyproject["project"]
    runtime = declared(project)
    extras = set(project.get("optional-dependencies", {}))
    stdlib = sys.stdlib_module_names
    problems = []
    for imp in imports:
        if imp.problem:
            problems.append(f"{imp.file}:{imp.line}: {imp.problem}")
            continue
        if imp.top in stdlib or imp.top in RUNTIME_PACKAGES:
            continue
        dists = distributions(imp.top)
        if not dists:
            problems.append(f"{imp.where()} -> unknown distribution (not installed here: add it to ALIASES)")
            continue
        if imp.extra is not None and imp.extra not in extras:
            problems.append(f"{imp.where()} -> require(extra={imp.extra!r}): no such extra in pyproject.toml")
            continue
        allowed = runtime | (declared(project, imp.extra) if imp.extra else set())
        if not allowed & set(dists):
            where = "[project.dependencies]" + (f" or extra {imp.extra!r}" if imp.extra else "")
            hint = "" if imp.extra else " (optional? import it with shared.extras.require naming its extra)"
            problems.append(f"{imp.where()} -> {' or '.join(dists)}: not declared in {where}{hint}")
    return problems


@cache
def repo_pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


@cache
def repo_imports() -> list[Import]:
    return collect_imports(REPO_ROOT)


def without(pyproject: dict, dist: str, extra: str | None = None) -> dict:
    """A copy of ``pyproject`` with ``dist`` removed from the dependencies (or from ``extra``)."""
    out = copy.deepcopy(pyproject)
    project = out["project"]
    reqs = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    reqs[:] = [r for r in reqs if requirement_name(r)[0] != normalize(dist)]
    return out


def test_runtime_imports_are_declared() -> None:
    imports = repo_imports()
    assert len({i.file for i in imports}) > 50, "the scan found too few files"
    problems = undeclared(repo_pyproject(), imports)
    assert not problems, "runtime imports not declared in pyproject.toml:\n" + "\n".join(problems)


def test_the_check_reports_a_dependency_removed_from_pyproject() -> None:
    problems = undeclared(without(repo_pyproject(), "httpx"), repo_imports())
    httpx = [p for p in problems if p.startswith("httpx (")]
    print("\n".join(["without httpx:", *httpx]))
    assert httpx and all("-> httpx: not declared in [project.dependencies]" in p for p in httpx)
    assert any("(router/" in p for p in httpx) and any("(shared/loadgen/" in p for p in httpx)


def test_the_check_reports_an_optional_module_outside_its_extra() -> None:
    problems = undeclared(without(repo_pyproject(), "matplotlib", extra="loadgen"), repo_imports())
    assert any(
        p.startswith("matplotlib (shared/loadgen/plots.py:")
        and "not declared in [project.dependencies] or extra 'loadgen'" in p
        for p in problems
    ), problems


def test_the_check_reads_every_kind_of_import(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(
        "from __future__ import annotations\n"
        "import json, httpx\n"
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "from shared.extras import require\n"
        "if TYPE_CHECKING:\n"
        "    import not_installed_anywhere\n"
        "class C:\n"
        "    import tqdm\n"
        "def f():\n"
        "    import matplotlib.pyplot\n"
        "    require('matplotlib', extra='loadgen')\n"
        "    require('tqdm', extra='nope')\n"
        "    require(name, extra='loadgen')\n"
        "    from fastapi import FastAPI\n"
    )
    imports = collect_imports(tmp_path, ("pkg",))
    problems = undeclared(repo_pyproject(), imports)
    assert sorted(p.split(" ->")[0].split(": ")[0] for p in problems) == [
        "matplotlib.pyplot (pkg/mod.py:11)",  # a plain lazy import of an extra's module
        "pkg/mod.py:14",  # require() with a name the check cannot read
        "tqdm (pkg/mod.py:13)",  # an extra that does not exist
        "tqdm (pkg/mod.py:9)",  # a class body runs at import time
    ], problems


def test_require_names_the_extra_to_install() -> None:
    with pytest.raises(MissingExtra) as e:
        require("no_such_module_here.sub", extra="loadgen", feature="epd loadgen --plots")
    assert isinstance(e.value, ImportError)
    assert str(e.value) == (
        "epd loadgen --plots needs no_such_module_here, which is not installed: "
        "pip install 'epd-serve[loadgen]'"
    )
    assert require("json", extra="loadgen").dumps([]) == "[]"


def test_require_passes_on_import_errors_from_inside_an_installed_module(tmp_path, monkeypatch) -> None:
    (tmp_path / "broken_mod_x.py").write_text("import no_such_dependency_of_it\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as e:
        require("broken_mod_x", extra="loadgen")
    assert not isinstance(e.value, MissingExtra) and e.value.name == "no_such_dependency_of_it"


def test_loadgen_runs_without_its_extra(monkeypatch, capsys) -> None:
    """No tqdm: a note and no progress bar; no matplotlib: --plots fails before any request."""
    from shared.loadgen import runner
    from shared.loadgen.config import LoadConfig

    monkeypatch.setitem(sys.modules, "tqdm", None)
    bar = runner.progress_bar(3, "run", enabled=True)
    bar.update(1)
    bar.close()
    assert "pip install 'epd-serve[loadgen]'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.delitem(sys.modules, "shared.loadgen.plots", raising=False)
    cfg = LoadConfig(base_url="http://127.0.0.1:9/v1", plots="unused", num_requests=1)
    with pytest.raises(MissingExtra, match=r"epd-serve\[loadgen\]"):
        runner.run(cfg)
