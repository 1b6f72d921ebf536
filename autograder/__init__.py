"""The course's build and grading tools, on top of nbgrader: see `python -m autograder --help`."""

import sys

# Every grading process imports nbformat, hence jsonschema, whose optional `iri` format
# checker builds a Lark grammar at import (rfc3987_syntax, installed with JupyterLab's
# jupyter-events): 1-2 s per submission graded, for a format no notebook schema uses.
# A None in sys.modules makes that optional import fail, as if it were not installed
# (benchmarks/RESULTS.md: the grader's overhead). Nothing else is changed.
sys.modules.setdefault("rfc3987_syntax", None)
