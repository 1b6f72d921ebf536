"""mechlab.checks: every failure names what differs, and nothing a learner's cell
rebinds changes a verdict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechlab import checks
from mechlab.checks import Case, CheckFailed, assert_tensor_close, assert_value_close, compare_function


def fails_with(fn, *fragments: str) -> None:
    with pytest.raises(CheckFailed) as err:
        fn()
    for fragment in fragments:
        assert fragment in str(err.value), str(err.value)


def test_messages_name_type_dtype_shape_and_first_difference():
    expected = torch.zeros(2, 3)
    fails_with(lambda: assert_tensor_close([0.0] * 6, expected), "expected a torch.Tensor, got list")
    fails_with(lambda: assert_tensor_close(torch.zeros(2, 3, dtype=torch.float64), expected),
               "dtype torch.float64, expected torch.float32")
    fails_with(lambda: assert_tensor_close(torch.zeros(3, 2), expected), "shape (3, 2), expected (2, 3)")
    got = expected.clone()
    got[1, 2] = 0.5
    fails_with(lambda: assert_tensor_close(got, expected, name="W", hint="transposed?"),
               "W: 1 of 6 entries differ", "first at index (1, 2): expected 0, got 0.5",
               "largest absolute error 0.5", "Hint: transposed?")
    got[0, 1] = float("nan")
    fails_with(lambda: assert_tensor_close(got, expected), "NaN at index (0, 1)")


def test_tolerances_are_the_stated_ones():
    expected = torch.tensor([1.0, 100.0])
    assert_tensor_close(expected + torch.tensor([0.9e-5, 0.0]), expected, atol=1e-5, rtol=0)
    fails_with(lambda: assert_tensor_close(expected + torch.tensor([2e-5, 0.0]), expected, atol=1e-5, rtol=0),
               "1 of 2 entries differ")
    assert_tensor_close(expected * 1.009, expected, atol=0, rtol=1e-2)
    assert_tensor_close(torch.tensor([float("inf"), float("nan")]), torch.tensor([float("inf"), float("nan")]))


def test_values_tuples_and_numbers():
    assert_value_close((torch.ones(2), 3, 0.5), (torch.ones(2), 3, 0.5))
    fails_with(lambda: assert_value_close((torch.ones(2),), (torch.ones(2), 1)),
               "expected a tuple of 2 values, got tuple of 1")
    fails_with(lambda: assert_value_close(2, 3, name="count"), "count: expected 3, got 2")
    fails_with(lambda: assert_value_close("3", 3), "expected 3, got '3'")
    fails_with(lambda: assert_value_close(0.6, 0.5, name="loss"), "loss: expected 0.5, got 0.6")


def test_compare_function_uses_separate_copies_and_names_the_case():
    def in_place(x):
        x.add_(1)
        return x

    def reference(x):
        return x + 1

    compare_function(in_place, reference, [Case("ones", (torch.ones(3),))], name="f")
    fails_with(lambda: compare_function(lambda x: x + 2, reference, [Case("ones", (torch.ones(3),))], name="f"),
               "f(ones): 3 of 3 entries differ")

    def stub(x):
        raise NotImplementedError()
    fails_with(lambda: compare_function(stub, reference, [Case("ones", (torch.ones(3),))], name="f"),
               "f is not implemented yet")
    fails_with(lambda: compare_function(42, reference, [], name="f"), "f should be a function")


def test_rebinding_comparison_functions_changes_nothing(monkeypatch):
    monkeypatch.setattr(torch, "allclose", lambda *a, **k: True)
    monkeypatch.setattr(torch, "isclose", lambda a, b, **k: torch.ones_like(a, dtype=torch.bool))
    monkeypatch.setattr(np, "isclose", lambda *a, **k: True)
    monkeypatch.setattr(np, "abs", lambda x: x * 0)
    monkeypatch.setattr(torch.Tensor, "__eq__", lambda self, other: True)
    fails_with(lambda: assert_tensor_close(torch.ones(3), torch.zeros(3)), "3 of 3 entries differ")


def test_objects_that_equal_everything_are_rejected_by_type():
    class Liar(torch.Tensor):  # a subclass with __torch_function__ tricks is not a plain tensor
        def __eq__(self, other):
            return True

    liar = torch.zeros(3).as_subclass(Liar)
    fails_with(lambda: assert_tensor_close(liar, torch.ones(3)), "expected a torch.Tensor, got Liar")


def test_reference_functions_are_refused():
    from mechlab.runtime import seed_everything
    assert checks.is_reference(seed_everything)
    fails_with(lambda: checks.own_work(seed_everything, "f"), "course's reference implementation")
    own = lambda x: x  # noqa: E731
    assert checks.own_work(own, "f") is own  # a learner's own function, outside grading: as it is


def test_own_work_watches_for_the_exercises_reference_when_grading():
    """In-process version of the grader's test (tests/test_grader.py runs every route in a
    real kernel): the reference reached through a wrapper or a hook it returns fails, the
    learner's own code and another exercise's reference pass."""
    import types

    from mechlab.superposition import reference as ref

    W, b, x = torch.randn(3, 2, 5), torch.randn(3, 5), torch.rand(4, 3, 5)
    wrapper = lambda W, b, x: ref.toy_forward(W, b, x)  # noqa: E731
    recompiled = types.FunctionType(ref.toy_forward.__code__.replace(co_name="mine"), vars(ref))
    recompiled.__module__ = "__main__"  # a copy of the code object, dressed as the learner's
    honest = lambda W, b, x: torch.relu(  # noqa: E731
        torch.einsum("ihf,bih->bif", W, torch.einsum("ihf,bif->bih", W, x)) + b)
    other = lambda W, b, x: ref.generate_batch(1, torch.ones(3), 5, torch.Generator())  # noqa: E731
    with checks.self_grading():
        for cheat in (wrapper, recompiled):
            fails_with(lambda: checks.own_work(cheat, "toy_forward", "mechlab.superposition.checks")(W, b, x),
                       "uses the course's reference for exercise 1")
        checks.own_work(honest, "toy_forward", "mechlab.superposition.checks")(W, b, x)
        checks.own_work(other, "toy_forward", "mechlab.superposition.checks")(W, b, x)
        factory = lambda: (lambda W, b, x: ref.toy_forward(W, b, x))  # noqa: E731  (a hook maker)
        made = checks.own_work(factory, "toy_forward", "mechlab.superposition.checks")()
        fails_with(lambda: made(W, b, x), "uses the course's reference")
    assert checks.own_work(wrapper, "toy_forward", "mechlab.superposition.checks") is wrapper  # not grading


def test_a_failed_check_shows_the_learners_frames_not_the_checks_code(capsys):
    """In IPython (the kernel), a failed check shows the learner's cell, the learner's own
    function where it raised, and the message; none of mechlab's frames."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance(colors="nocolor")
    result = shell.run_cell(
        "from mechlab.superposition import checks\n"
        "def toy_forward(W, b, x):\n"
        "    return x.view(-1, 7)\n"
        "checks.check_toy_forward(toy_forward)\n")
    shown = capsys.readouterr().out
    assert type(result.error_in_exec).__name__ == "CheckFailed"  # the cell still fails
    assert "----> 3     return x.view(-1, 7)" in shown and "----> 4 checks.check_toy_forward" in shown
    assert "raised RuntimeError: shape '[-1, 7]' is invalid" in shown
    assert "mechlab/" not in shown and "compare_function" not in shown


def test_a_difference_no_known_mistake_explains_says_so_and_a_known_one_names_its_cause():
    from mechlab.checks import UNKNOWN_CAUSE, Case, CheckFailed, compare_function

    cases = [Case("x=[1, 2]", (torch.tensor([1.0, 2.0]),))]
    mistakes = [("you doubled instead of squaring.", lambda x: 2 * x)]
    with pytest.raises(CheckFailed) as unknown:
        compare_function(lambda x: x + 1, lambda x: x ** 2, cases, name="square", mistakes=mistakes)
    assert UNKNOWN_CAUSE in str(unknown.value) and "Hint" not in str(unknown.value)
    with pytest.raises(CheckFailed) as known:
        compare_function(lambda x: x * 2, lambda x: x ** 2, cases, name="square", mistakes=mistakes)
    assert "Hint: you doubled" in str(known.value) and UNKNOWN_CAUSE not in str(known.value)
