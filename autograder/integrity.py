"""integrity.csv: what a person should read, never what a machine grades.

For each exercise of a class run, two kinds of flag:

- *copy of the reference*: the learner's solution code is the course's reference
  (its solution cell in `solutions/`) once names, strings, comments and layout are
  normalised. The reference ships with the course, so this is easy to do and
  usually honest-looking; the grader itself only refuses code that *runs* the
  reference (`mechlab.checks.own_work`).
- *near-identical pair*: two students' solution code shares most of its
  fingerprints (winnowing, as MOSS does: Schleimer, Wilkerson and Aiken, SIGMOD
  2003): k-grams of normalised tokens, hashed, the minimum of each window kept.
  What the release already gives (the signature, the docstring) is left out first,
  and so are solutions too short to tell anything apart.

A flag changes no grade: short exercises have few ways to be right, and a person
decides.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import keyword
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

import nbformat

from autograder.source import BEGIN_SOLUTION, END_SOLUTION, SourceNotebook

K = 5  # tokens per k-gram
WINDOW = 4  # k-grams per winnowing window
MIN_FINGERPRINTS = 8  # fewer (after the release's are left out): too short to compare
PAIR_THRESHOLD = 0.8  # Jaccard similarity of two students' fingerprints


def tokens(code: str) -> list[str]:
    """Python tokens with every name (but keywords) as N, every string as S, and no
    comments or layout; code that does not tokenize falls back to its words."""
    out = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                            tokenize.ENDMARKER):
                continue
            if tok.type == tokenize.NAME:
                out.append(tok.string if keyword.iskeyword(tok.string) else "N")
            elif tok.type == tokenize.STRING:
                out.append("S")
            else:
                out.append(tok.string)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        out = ["N" if w.isidentifier() and not keyword.iskeyword(w) else w for w in re.findall(r"\w+|\S", code)]
    return out


def fingerprints(code: str) -> set[int]:
    """Winnowed hashes of the k-grams of `tokens(code)`."""
    toks = tokens(code)
    hashes = [int.from_bytes(hashlib.blake2b(" ".join(toks[i:i + K]).encode(), digest_size=8).digest(), "big")
              for i in range(max(0, len(toks) - K + 1))]
    if len(hashes) <= WINDOW:
        return set(hashes)
    return {min(hashes[i:i + WINDOW]) for i in range(len(hashes) - WINDOW + 1)}


def _strip_markers(code: str) -> str:
    return "\n".join(line for line in code.splitlines() if line.strip() not in (BEGIN_SOLUTION, END_SOLUTION))


def solution_code(nb: nbformat.NotebookNode, grade_ids: list[str], exercise: str) -> str:
    """A submission's code for one exercise: its solution cells by grade id, or (metadata
    lost) the cell that defines the exercise's function."""
    cells = [c for c in nb.cells if c.get("metadata", {}).get("nbgrader", {}).get("grade_id") in grade_ids]
    if not cells:
        cells = [c for c in nb.cells if c.get("cell_type") == "code"
                 and re.search(rf"^def {re.escape(exercise)}\(", c.get("source") or "", re.M)][:1]
    return "\n".join(c.get("source") or "" for c in cells)


@dataclass(frozen=True)
class Handin:
    student: str
    file: str  # as the instructor knows it
    notebook: nbformat.NotebookNode


def flags(chapter: str, source: SourceNotebook, release: nbformat.NotebookNode, handins: list[Handin]) -> list[dict]:
    """The integrity.csv rows of one chapter."""
    by_id = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in source.notebook.cells}
    rows = []
    for ex in source.exercises:
        reference = tokens(_strip_markers("\n".join(by_id[i].source for i in ex.solution_cells if i in by_id)))
        base = fingerprints(solution_code(release, ex.solution_cells, ex.id))
        prints: list[tuple[Handin, set[int]]] = []
        for h in handins:
            code = solution_code(h.notebook, ex.solution_cells, ex.id)
            if reference and tokens(code) == reference:
                rows.append({"chapter": chapter, "exercise": ex.id, "kind": "copy of the reference",
                             "students": h.student, "similarity": "1.00", "files": h.file})
            own = fingerprints(code) - base
            if len(own) >= MIN_FINGERPRINTS:
                prints.append((h, own))
        for (a, fa), (b, fb) in itertools.combinations(prints, 2):
            if a.student == b.student:
                continue
            similarity = len(fa & fb) / len(fa | fb)
            if similarity >= PAIR_THRESHOLD:
                rows.append({"chapter": chapter, "exercise": ex.id, "kind": "near-identical pair",
                             "students": f"{a.student}; {b.student}", "similarity": f"{similarity:.2f}",
                             "files": f"{a.file}; {b.file}"})
    return rows


COLUMNS = ["chapter", "exercise", "kind", "students", "similarity", "files"]


def write(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: (r["chapter"], r["exercise"], r["kind"], r["students"])))
