"""Chapter 7's graded investigation: what was a fine-tune taught, and where does it live?

Three fine-tunes of `corpus_2l` (`MODELS`, in `finetune.FT_ZOO` with `disclosed=False`)
were made the same way: every weight trained further on ordinary corpus text (so the
weight diff is nonzero everywhere), then one component alone trained on stories with a
persona (a sentiment or a topic). An answer names the persona (one of
`personas.PERSONAS`) and the component (one of `personas.COMPONENTS`); it is graded
against the recipe the course trained the model with. Full points need all six right.

The chapter shows `mystery_a`; the hidden test runs the learner's function on all
three, so an answer read off the notebook fails on the other two.
"""

from __future__ import annotations

from typing import Any

from mechlab.checks import CheckFailed
from mechlab.model_diffing import finetune as ft
from mechlab.model_diffing import personas
from mechlab.pristine import type_ as _type

MODELS = ("mystery_a", "mystery_b", "mystery_c")
VISIBLE = MODELS[:1]


def truth(name: str) -> dict[str, str]:
    """The recipe's persona and the component that was free to learn it."""
    spec = ft.FT_ZOO[name]
    return {"persona": spec.persona, "component": spec.component}


def validate(answer: Any) -> dict[str, str]:
    """The answer as {"persona", "component"} of Python strings, or CheckFailed saying what is wrong."""
    if _type(answer) is not dict:
        raise CheckFailed(f'return a dict {{"persona": ..., "component": ...}}, not a {_type(answer).__name__}')
    if set(answer) != {"persona", "component"}:
        raise CheckFailed(f'the dict needs exactly the keys "persona" and "component", not {sorted(map(str, answer))}')
    persona, component = answer["persona"], answer["component"]
    if _type(persona) is not str or persona not in personas.PERSONAS:
        raise CheckFailed(f"persona {persona!r} is not one of {personas.PERSONAS}")
    if _type(component) is not str or component not in personas.COMPONENTS:
        raise CheckFailed(f"component {component!r} is not one of {personas.COMPONENTS}")
    return {"persona": persona, "component": component}


def wrong(name: str, answer: dict[str, str]) -> list[str]:
    """What the answer got wrong about `name`, in words that do not reveal the truth."""
    want = truth(name)
    return [f"the {key} is not {answer[key]!r}" for key in ("persona", "component") if answer[key] != want[key]]
