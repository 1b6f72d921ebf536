"""The build: generated files are in sync, releases hold no solutions, and the
source's rules are enforced with messages that name the cell."""

from __future__ import annotations

import ast
import json
import re
import shutil
import tomllib

import nbformat
import pytest

from autograder.chapters import REPO_ROOT, Chapter, discover
from autograder.source import BEGIN_HIDDEN, BEGIN_SOLUTION, KINDS, SourceError, read_source
from conftest import FIXTURE_SOURCE, run_cli

CHAPTERS = discover()


def test_generated_files_are_in_sync():
    proc = run_cli("build", "--check")
    assert proc.returncode == 0, f"generated files are stale:\n{proc.stderr}"


def test_check_names_a_stale_file(fixture_course, tmp_path):
    root = tmp_path / "course"
    shutil.copytree(fixture_course.root, root)
    release = root / "chapters" / "00_fixture.ipynb"
    release.write_text(release.read_text().replace("Exercise 2", "Exercise Two"))
    (root / "mechlab" / "fixture" / "reference.py").unlink()
    proc = run_cli("build", "--check", root=root)
    assert proc.returncode == 1
    assert "stale: chapters/00_fixture.ipynb" in proc.stderr
    assert "stale: mechlab/fixture/reference.py" in proc.stderr
    assert "Exercise Two" in release.read_text()  # --check writes nothing


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.name)
def test_release_holds_no_solutions_or_hidden_tests(chapter: Chapter):
    release = nbformat.read(chapter.release_notebook, as_version=4)
    text = chapter.release_notebook.read_text()
    assert BEGIN_SOLUTION not in text and BEGIN_HIDDEN not in text
    source = read_source(chapter)
    reference = ast.parse(chapter.reference_module.read_text())
    bodies = {node.name: ast.get_source_segment(chapter.reference_module.read_text(), node)
              for node in reference.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    for ex in source.exercises:
        cells = [c for c in release.cells
                 if c.metadata.get("nbgrader", {}).get("grade_id") in ex.solution_cells]
        assert cells, f"{ex.id}: solution cell missing from the release"
        assert all("raise NotImplementedError()" in c.source for c in cells), ex.id
        assert ex.id in bodies, f"{ex.id}: not defined in {chapter.reference_module.name}"
        # no line of the solution's body survives into the release
        body_lines = {line.strip() for line in bodies[ex.id].splitlines()[1:]} - {""}
        solution_lines = body_lines - {line.strip() for c in cells for line in c.source.splitlines()}
        assert solution_lines, f"{ex.id}: the release shows the whole reference body"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.name)
def test_sources_are_clean_and_readable(chapter: Chapter):
    for path in (chapter.solution_notebook, chapter.release_notebook):
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, path
    # one set of dimension names (STYLE.md): never posn/position/seq as a dimension
    dims = re.findall(r'(?:Float|Int|Bool|Shaped)\[\s*\w+,\s*"([^"]*)"\]', chapter.source.read_text())
    assert dims, "jaxtyping annotations expected"
    for spec in dims:
        assert not re.search(r"\b(posn|position|seq)\b", spec), spec


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: c.name)
def test_exercise_metadata_and_budget(chapter: Chapter):
    source = read_source(chapter)
    assert 8 <= len(source.exercises) <= 15 or chapter.name.startswith("00_")
    release = nbformat.read(chapter.release_notebook, as_version=4)
    headers = [c for c in release.cells if "exercise" in c.metadata]
    assert [c.metadata["exercise"]["id"] for c in headers] == [e.id for e in source.exercises]
    for cell, ex in zip(headers, source.exercises):
        assert f"about {ex.minutes} minutes" in cell.source  # rendered from the metadata
        assert f"> **{ex.kind.capitalize()}** · **Difficulty**" in cell.source
        assert "<details>" in cell.source, f"{ex.id}: hints belong in collapsed <details> blocks"
        assert f"from mechlab.{chapter.topic}.reference import" in cell.source, f"{ex.id}: no stuck line"
    table = next(c for c in release.cells if c.source.startswith("## Exercises in this chapter"))
    assert f"**{sum(e.minutes for e in source.exercises)}**" in table.source
    assert [e.kind for e in source.exercises].count("investigation") == 1 == (source.exercises[-1].kind == "investigation")
    for kind in {e.kind for e in source.exercises}:  # the points of each kind, as the map states them
        assert f"**{kind}** ({KINDS[kind]}): {sum(e.points for e in source.exercises if e.kind == kind)} points" in table.source


def test_setup_cell_uses_the_one_repository_url():
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        url = tomllib.load(f)["project"]["urls"]["Repository"]
    for chapter in CHAPTERS:
        setup = nbformat.read(chapter.release_notebook, as_version=4).cells[1].source
        assert f'COURSE_REPO = "{url}"' in setup and "mechlab.setup(seed=" in setup


def test_reference_modules_import_without_side_effects(capsys):
    import importlib
    for chapter in CHAPTERS:
        module = importlib.import_module(f"mechlab.{chapter.topic}.reference")
        assert set(module.__all__) == {e.id for e in read_source(chapter).exercises}
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("breakage, message", [
    ('### END SOLUTION\n', "without '### END SOLUTION'"),
    ('### Exercise 2: scale', "must start with the heading '### Exercise 2"),
    ('"difficulty": 1, "importance": 1, "minutes": 1, "points": 2', "difficulty must be an integer from 1 to 5"),
    ('"kind": "experiment"', "kind must be one of ['build', 'experiment', 'investigation'], got 'exercise'"),
])
def test_source_rules_are_enforced_with_the_cell_named(tmp_path, breakage, message):
    text = FIXTURE_SOURCE.read_text()
    replacement = {'### END SOLUTION\n': "", '### Exercise 2: scale': "### Exercise 3: scale",
                   '"difficulty": 1, "importance": 1, "minutes": 1, "points": 2':
                   '"difficulty": 9, "importance": 1, "minutes": 1, "points": 2',
                   '"kind": "experiment"': '"kind": "exercise"'}[breakage]
    (tmp_path / "solutions").mkdir()
    (tmp_path / "solutions" / "00_fixture.py").write_text(text.replace(breakage, replacement, 1))
    with pytest.raises(SourceError, match=re.escape(message)) as err:
        read_source(Chapter("00_fixture", tmp_path))
    assert "solutions/00_fixture.py, cell" in str(err.value)
