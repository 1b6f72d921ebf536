"""The layout shows the architecture, and these tests keep it so (README, "For maintainers"):
course-wide modules at the bottom import no chapter; chapter NN_topic is the package
`mechlab/<topic>/` and imports only the course-wide modules, itself and earlier chapters;
no module imports, even lazily inside a function, a module that imports it back; and
every exercise's visible check and hidden test come from the one factory."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from autograder.chapters import REPO_ROOT, discover
from autograder.source import read_source
from mechlab import chapters
from mechlab.checks import check_and_grade

MECHLAB = REPO_ROOT / "mechlab"
CHAPTERS = discover()
ORDER = {c.topic: i for i, c in enumerate(CHAPTERS)}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(MECHLAB.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The mechlab module that `name` (a module, or a module's attribute) is, or is in."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(module: str) -> set[str]:
    """Every mechlab module that `module` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {m for m in map(_resolve, names) if m and m != module}
    return found - {"mechlab"}  # the package itself: only its lazy names (runtime, grading)


GRAPH = {m: imports(m) for m in MODULES}


def chapter_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and parts[1] in ORDER else None


def test_every_chapter_is_one_package_with_checks_and_its_generated_reference():
    for chapter in CHAPTERS:
        assert (chapter.package / "__init__.py").is_file(), f"{chapter.name}: no package {chapter.package}"
        assert (chapter.package / "checks.py").is_file(), f"{chapter.name}: no checks module"
        assert chapter.reference_module.is_file(), f"{chapter.name}: run `make build`"
        tests = REPO_ROOT / "tests" / f"test_{chapter.topic}_checks.py"
        assert tests.is_file(), f"{chapter.name}: its checks' tests belong in {tests.relative_to(REPO_ROOT)}"
    assert {c.topic for c in CHAPTERS} == set(chapters.topics())
    stray = sorted(p.name for p in MECHLAB.iterdir() if p.is_dir() and (p / "__init__.py").is_file()
                   and p.name not in ORDER)
    assert not stray, f"packages under mechlab/ that are no chapter (solutions/NN_<name>.py): {stray}"


def test_course_wide_modules_import_no_chapter():
    for module, imported in GRAPH.items():
        if chapter_of(module) is None:
            assert not {m for m in imported if chapter_of(m)}, f"{module} (course-wide) imports a chapter"


def test_a_chapter_imports_only_itself_earlier_chapters_and_the_course_wide_modules():
    for module, imported in GRAPH.items():
        own = chapter_of(module)
        if own is None:
            continue
        later = sorted(m for m in imported if chapter_of(m) and ORDER[chapter_of(m)] > ORDER[own])
        assert not later, f"{module} (chapter {own}) imports a later chapter: {later}"


def test_no_import_cycles():
    """Depth-first search over every import, lazy ones included."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for nxt in sorted(GRAPH[module]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_the_graph_sees_lazy_imports():
    """The tests above would pass on an empty graph: make sure they read what is there."""
    assert "mechlab.sparse_autoencoders.reference" in GRAPH["mechlab.sparse_autoencoders.zoo"]  # inside functions
    assert "mechlab.sparse_autoencoders.zoo" in GRAPH["mechlab.steering.checks"]  # a later chapter, lazily
    assert "mechlab.runtime" in GRAPH["mechlab.checks"]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.name)
def test_every_check_and_hidden_test_comes_from_the_one_factory(chapter):
    checks = chapters.checks(chapter.topic)
    factory = check_and_grade.__qualname__
    for exercise in read_source(chapter).exercises:
        for kind in ("check", "grade"):
            fn = getattr(checks, f"{kind}_{exercise.id}")
            assert fn.__qualname__ == f"{factory}.<locals>.{kind}", (
                f"{chapter.name}: {kind}_{exercise.id} is written by hand; make it with check_and_grade")
