"""Numbers quoted in a chapter's text, tied to the outputs that back them.

A chapter's prose quotes its own results ("final loss 0.241 at p = 0.57"). When a
model is retrained or an experiment changes, the outputs move and the prose must
follow, so each such number carries an invisible marker naming the printed line
that backs it:

    final loss 0.241<!-- out: final loss at p=0.57 --> against ...

The claim is the last number before the marker on its line; the backing is the
first number printed after the first occurrence of the label in the outputs of the
executed notebook. They agree when they differ by at most one unit of the claim's
last digit (0.241 backs 0.2406 to 0.2419; 94 backs 93.2 to 94.9), or by the
tolerance the marker states (`<!-- out: LABEL ±0.02 -->`, `±5%`). Rendered markdown
hides the markers; `tests/test_chapters.py` checks every claim on the graded
solution notebook, so a retrained model cannot silently falsify the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import nbformat

MARKER = re.compile(r"<!--\s*out:\s*(?P<label>.+?)\s*(?:±\s*(?P<tol>\d+(?:\.\d+)?)\s*(?P<pct>%)?)?\s*-->")
NUMBER = re.compile(r"(?<![\w.])[-−]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Claim:
    cell: int  # 1-based, as a person counts cells
    label: str
    text: str  # the number as quoted
    tolerance: float
    relative: bool

    @property
    def value(self) -> float:
        return float(self.text.replace("−", "-"))

    def agrees_with(self, printed: float) -> bool:
        allowed = self.tolerance * abs(self.value) / 100 if self.relative else self.tolerance
        return abs(printed - self.value) <= allowed * (1 + 1e-9)


def _unit(number: str) -> float:
    mantissa = number.lower().split("e")[0]
    return 10.0 ** -len(mantissa.split(".")[1]) if "." in mantissa else 1.0


def claims(nb: nbformat.NotebookNode) -> list[Claim]:
    """Every marked number in the notebook's markdown cells."""
    found = []
    for index, cell in enumerate(nb.cells, 1):
        if cell.cell_type != "markdown":
            continue
        for line in cell.source.splitlines():
            start = 0
            for marker in MARKER.finditer(line):
                numbers = NUMBER.findall(MARKER.sub(" ", line[start:marker.start()]))
                if not numbers:
                    raise ValueError(f"cell {index}: no number before {marker.group(0)!r}")
                tol, pct = marker.group("tol"), marker.group("pct")
                found.append(Claim(index, marker.group("label"), numbers[-1],
                                   float(tol) if tol else _unit(numbers[-1]), bool(pct)))
                start = marker.end()
    return found


def printed_text(nb: nbformat.NotebookNode) -> str:
    """All that the executed notebook's code cells printed or displayed as text."""
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.output_type == "stream":
                parts.append(output.text)
            elif "data" in output and "text/plain" in output.data:
                parts.append(output.data["text/plain"])
    return ANSI.sub("", "\n".join(parts))


def disagreements(nb: nbformat.NotebookNode) -> list[str]:
    """What the text claims and the outputs do not show; empty when every claim holds."""
    printed = printed_text(nb)
    problems = []
    for claim in claims(nb):
        at = printed.find(claim.label)
        after = NUMBER.search(printed, at + len(claim.label)) if at >= 0 else None
        if after is None:
            problems.append(f"cell {claim.cell}: {claim.text} ({claim.label!r}): "
                            "no output prints that label followed by a number")
        elif not claim.agrees_with(float(after.group(0).replace("−", "-"))):
            problems.append(f"cell {claim.cell}: the text says {claim.text}, "
                            f"the output says {claim.label} {after.group(0)}")
    return problems
