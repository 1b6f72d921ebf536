"""Checks that compare a learner's code with the course's reference, and say what differs.

Both the visible checks under each exercise and the hidden tests that decide the
grade are built from these few functions, so every failure reads the same way:
which case, which output, what shape or dtype, the first entry that differs,
expected against got, and a hint when the mistake is a known one.

A grade must not be gamed from inside the learner's kernel, so this module
compares with the functions `mechlab.pristine` took when mechlab was first
imported (the chapter's setup cell imports it before any learner code runs):
rebinding `torch.allclose`, `torch.Tensor.__eq__` or `numpy.isclose` afterwards
changes nothing here. Values are checked by exact type first, so an object
that claims to equal everything (`__eq__`, `__torch_function__`) never reaches
a comparison.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mechlab import chapters, runtime
from mechlab.pristine import (
    Parameter as _Parameter, Tensor as _Tensor, detach as _detach, getprofile as _getprofile,
    isinstance_ as _isinstance, np_abs as _np_abs, np_argwhere as _np_argwhere, np_isinf as _np_isinf,
    np_isnan as _np_isnan, np_max as _np_max, numpy as _numpy, setprofile as _setprofile,
    thread_getprofile as _thread_getprofile, thread_setprofile as _thread_setprofile, to as _to, type_ as _type,
)


class CheckFailed(AssertionError):
    """A check found a difference; the message says what and where. `values_differ` is
    True when the output had the right kind, dtype and shape but other values."""

    values_differ = False

    def _render_traceback_(self) -> list[str]:
        """How IPython shows a failed check: the message, the learner's cell and the
        learner's own frames, without the frames of the checks (which learners are asked
        not to read). The cell still fails as before; only the display is shorter."""
        from IPython.core.getipython import get_ipython  # only ever called by IPython

        _for_the_learner(self)
        return get_ipython().InteractiveTB.structured_traceback(_type(self), self, self.__traceback__)


@dataclass(frozen=True)
class Case:
    """One set of inputs for a function under test, with a description for messages."""

    description: str
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def _fail(message: str, hint: str | None, values_differ: bool = False) -> None:
    if hint:
        message = f"{message}\nHint: {hint}"
    failure = CheckFailed(message)
    failure.values_differ = values_differ
    raise failure


def _as_array(t: torch.Tensor) -> np.ndarray:
    return _numpy(_to(_detach(t), "cpu", torch.float64 if t.is_floating_point() else t.dtype))


def assert_tensor_close(
    got: Any,
    expected: torch.Tensor,
    *,
    name: str = "output",
    atol: float = 1e-5,
    rtol: float = 1e-4,
    hint: str | None = None,
) -> None:
    """Raise CheckFailed unless `got` is a plain tensor equal to `expected` within
    |got - expected| <= atol + rtol * |expected| in every entry.

    The message names the first difference found: type, dtype, shape, NaN, or the
    first entry out of tolerance with both values and the largest error.
    """
    if _type(got) not in (_Tensor, _Parameter):
        _fail(f"{name}: expected a torch.Tensor, got {_type(got).__name__}", hint)
    if got.dtype != expected.dtype:
        _fail(f"{name}: dtype {got.dtype}, expected {expected.dtype}", hint)
    if tuple(got.shape) != tuple(expected.shape):
        _fail(f"{name}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}", hint)
    g, e = _as_array(got), _as_array(expected)
    if g.size == 0:
        return
    if g.dtype.kind == "f":
        bad_nan = _np_isnan(g) & ~_np_isnan(e)
        if bad_nan.any():
            idx = tuple(int(i) for i in _np_argwhere(bad_nan)[0])
            _fail(f"{name}: NaN at index {idx}, where the reference has {e[idx]:.6g} "
                  f"({int(bad_nan.sum())} NaN entries in all)", hint)
    if g.dtype.kind != "f":  # integers and booleans: exact
        bad = g != e
        diff = _np_abs(g.astype(np.float64) - e.astype(np.float64))
    else:
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: handled below, not warned
            diff = _np_abs(g - e)
            bad = ~(diff <= atol + rtol * _np_abs(e))
        bad &= ~((_np_isnan(g) & _np_isnan(e)) | (_np_isinf(e) & (g == e)))
    if bad.any():
        idx = tuple(int(i) for i in _np_argwhere(bad)[0])
        finite = diff[~_np_isnan(diff)]
        worst = float(_np_max(finite)) if finite.size else math.nan
        _fail(
            f"{name}: {int(bad.sum())} of {g.size} entries differ (atol={atol:g}, rtol={rtol:g}); "
            f"first at index {idx}: expected {e[idx]:.6g}, got {g[idx]:.6g}; "
            f"largest absolute error {worst:.3g}",
            hint,
            values_differ=True,
        )


def assert_value_close(got: Any, expected: Any, *, name: str = "output",
                       atol: float = 1e-5, rtol: float = 1e-4, hint: str | None = None) -> None:
    """Compare a tensor, a Python number, or a tuple/list of them with the reference's."""
    if _isinstance(expected, _Tensor):
        assert_tensor_close(got, expected, name=name, atol=atol, rtol=rtol, hint=hint)
    elif _isinstance(expected, (tuple, list)):
        if _type(got) not in (tuple, list) or len(got) != len(expected):
            _fail(f"{name}: expected a {_type(expected).__name__} of {len(expected)} values, "
                  f"got {_type(got).__name__}"
                  + (f" of {len(got)}" if _type(got) in (tuple, list) else ""), hint)
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_value_close(g, e, name=f"{name}[{i}]", atol=atol, rtol=rtol, hint=hint)
    elif _isinstance(expected, bool) or _isinstance(expected, int):
        if _type(got) not in (int, bool):
            _fail(f"{name}: expected {expected!r}, got {got!r} (a {_type(got).__name__}, not an int)", hint)
        if got != expected:
            _fail(f"{name}: expected {expected!r}, got {got!r}", hint, values_differ=True)
    elif _isinstance(expected, float):
        if _type(got) not in (float, int) and not _isinstance(got, np.floating):  # np.float64 is a float too
            _fail(f"{name}: expected {expected:.6g}, got {got!r} (a {_type(got).__name__}, not a float)", hint)
        if not abs(got - expected) <= atol + rtol * abs(expected):
            _fail(f"{name}: expected {expected:.6g}, got {got!r}", hint, values_differ=True)
    else:
        raise TypeError(f"assert_value_close cannot compare a {_type(expected).__name__}")


def is_reference(fn: Callable) -> bool:
    """True when `fn` is one of the course's own reference implementations."""
    module = getattr(fn, "__module__", None) or ""
    return _isinstance(module, str) and module.startswith("mechlab.")


_SELF_GRADING = [0]  # > 0 inside mechlab.grade_me()


@contextlib.contextmanager
def self_grading() -> Iterator[None]:
    """grade_me() watches for the reference the way the instructor's grader does."""
    _SELF_GRADING[0] += 1
    try:
        yield
    finally:
        _SELF_GRADING[0] -= 1


def _reference_module_of(name: str, caller: str) -> types.ModuleType | None:
    """The reference module of the chapter whose `mechlab.<topic>.checks` is `caller`."""
    topic = chapters.topic_of(caller)
    try:
        return chapters.reference(topic) if topic else None
    except ImportError:
        return None


def _reference_of(name: str, caller: str) -> tuple[types.ModuleType, Callable] | None:
    """The reference module and function of exercise `name`: the chapter of the calling
    `mechlab.<topic>.checks` module, else the first chapter whose reference grades it."""
    topic = chapters.topic_of(caller)
    for topic in [topic] if topic else chapters.topics():
        try:
            module = chapters.reference(topic)
        except ImportError:
            continue
        if name in getattr(module, "POINTS", {}) and callable(getattr(module, name, None)):
            return module, getattr(module, name)
    return None


def _bytecode(code: types.CodeType) -> tuple:
    """What two compilations of the same function share, whatever their names and file."""
    return (code.co_code, code.co_names, code.co_argcount, code.co_kwonlyargcount,
            tuple(c for c in code.co_consts if not _isinstance(c, types.CodeType)))


def _nested(code: types.CodeType) -> Iterator[types.CodeType]:
    for const in code.co_consts:
        if _isinstance(const, types.CodeType):
            yield const
            yield from _nested(const)


def _in_a_cell(filename: str) -> bool:
    """Code compiled from a notebook cell (ipykernel names cells /tmp/ipykernel_PID/HASH.py)."""
    return "/ipykernel_" in filename or filename.startswith("<ipython-input")


@dataclass(frozen=True)
class Truth:
    """What judges a graded investigation, which the learner's function must not run: every
    function of the modules in `modules` (by file, so a copy of the module that a learner
    kept from before the grader reloaded it counts too) except those named in `public` (the
    helpers the chapter hands out, such as loading the model), and the functions in
    `functions` wherever they live. The chapter's checks module, which runs the judging,
    is always among the modules."""

    modules: tuple[types.ModuleType, ...] = ()
    public: tuple[str, ...] = ()
    functions: tuple[Callable, ...] = ()

    def code_keys(self, chapter_checks: str) -> tuple[set[str], set[str], set[tuple[str, str]]]:
        """(files off limits, top-level names allowed in them, (file, qualname) off limits elsewhere)."""
        modules = [*self.modules, sys.modules.get(chapter_checks)]
        files = {os.path.abspath(m.__file__) for m in modules if m is not None and getattr(m, "__file__", None)}
        elsewhere = {(os.path.abspath(fn.__code__.co_filename), fn.__qualname__) for fn in self.functions}
        return files, {*self.public, "<module>"}, elsewhere  # (importing a module is not judging)


class _ReferenceWatch:
    """A profile function (in this thread and every thread started while it is on) that
    notes when the reference's code runs: its own code object, a copy of it, a recompiled
    copy (same bytecode, compiled anywhere but a notebook cell), or a function nested in it
    (a hook it returns); and, for an investigation, when code that judges it runs (`Truth`).
    Turning the profiler off is noted too."""

    def __init__(self, reference: Callable, truth: Truth | None = None, chapter_checks: str = "") -> None:
        code = reference.__code__
        self.top = {_bytecode(code)}
        self.nested = {(c.co_filename, _bytecode(c)) for c in _nested(code)}
        self.truth_files, self.truth_allowed, self.truth_functions = (
            truth.code_keys(chapter_checks) if truth is not None else (set(), set(), set()))
        self.seen: list[str] = []
        self._verdicts: dict[int, tuple[types.CodeType, str | None]] = {}

    def _verdict(self, code: types.CodeType) -> str | None:
        key = _bytecode(code)
        if (key in self.top and not _in_a_cell(code.co_filename)) or (code.co_filename, key) in self.nested:
            return "ran the reference's code"
        if self.truth_files or self.truth_functions:
            file = os.path.abspath(code.co_filename)
            qualname = getattr(code, "co_qualname", code.co_name)
            # a public name covers its methods and the functions nested in it (`FactBatch.describe`)
            if (file, qualname) in self.truth_functions or (
                    file in self.truth_files and qualname.split(".", 1)[0] not in self.truth_allowed):
                module = os.path.splitext(os.path.basename(file))[0]
                return f"ran the code that judges this investigation ({module}.{qualname})"
        return None

    def __call__(self, frame, event, arg):
        if event == "call":
            code = frame.f_code
            verdict = self._verdicts.get(id(code))
            if verdict is None or verdict[0] is not code:
                verdict = self._verdicts[id(code)] = (code, self._verdict(code))
            if verdict[1]:
                self.seen.append(verdict[1])
        elif (event == "c_call" and (arg is _setprofile or arg is _thread_setprofile)
              and frame.f_code is not _WATCH_CODE):  # (not `on` itself, putting the old one back)
            self.seen.append("turned the grader's profiler off")

    @contextlib.contextmanager
    def on(self) -> Iterator[None]:
        before, before_threads = _getprofile(), _thread_getprofile()
        _thread_setprofile(self)
        _setprofile(self)
        try:
            yield
        finally:
            _setprofile(before)
            _thread_setprofile(before_threads)


_WATCH_CODE = _ReferenceWatch.on.__wrapped__.__code__


def own_work(fn: Callable, name: str, chapter_module: str | None = None, truth: Truth | None = None) -> Callable:
    """The learner's `fn` as the hidden test of exercise `name` should call it.

    The course's reference implementations ship with the course, so a stuck learner
    can go on; under grading (and in grade_me) they earn nothing for their own
    exercise. The reference itself is refused at once. Any other function is returned
    watched: if, while it runs, the reference's code runs (called through a wrapper, a
    lambda, a partial, a method, a copied `__code__`, a thread it starts, or a function
    it returns, such as a hook), the call fails with "uses the course's reference".
    Other exercises' references stay allowed: that is how a learner who skipped one
    exercise still does the next. `chapter_module` (default: the caller's module) is the
    chapter's `mechlab.<topic>.checks`, which names the reference module.

    For a graded investigation, `truth` names the code that judges it (the course's truth,
    its measurement, the recipes of the undisclosed models): a function that runs any of it
    while it is graded earns 0 as the reference does, however it got there."""
    if is_reference(fn):
        raise CheckFailed(f"{name} is the course's reference implementation (from {fn.__module__}): "
                          "imported with the escape hatch, or, under grading, put in place of a missing or "
                          "broken definition; write your own to earn these points.")
    if not callable(fn):  # an investigation's answer (a dict, a list): the reference's own object earns 0
        module = _reference_module_of(name, chapter_module or sys._getframe(1).f_globals.get("__name__", ""))
        if module is not None and fn is getattr(module, name, None) and fn is not None:
            raise CheckFailed(f"{name} is the course's own answer (from {module.__name__}): "
                              "find your own to earn these points.")
        return fn
    if not (runtime.under_grading() or _SELF_GRADING[0]):
        return fn
    chapter_module = chapter_module or sys._getframe(1).f_globals.get("__name__", "")
    found = _reference_of(name, chapter_module)
    if found is None or not _isinstance(getattr(found[1], "__code__", None), types.CodeType):
        return fn
    module, reference = found
    number = list(module.POINTS).index(name) + 1
    return _watched(fn, _ReferenceWatch(reference, truth, chapter_module), name, number,
                    _other_references(module, name))


def _other_references(module: types.ModuleType, name: str) -> dict[str, Callable]:
    """The chapter's other exercises, by name, as the reference module has them."""
    return {other: getattr(module, other) for other in getattr(module, "POINTS", {}) if other != name}


@contextlib.contextmanager
def _other_exercises_as_reference(fn: Callable | None, others: dict[str, Callable],
                                  namespace: dict | None = None) -> Iterator[None]:
    """While `fn` runs, the names of the chapter's other exercises in its notebook
    (`namespace`, default: its globals), and its default arguments that are those
    exercises, are their references: a learner's function that calls their own (wrong)
    earlier exercise is graded on its own work, as DESIGN.md promises, and a wrong
    exercise 2 never costs exercise 3."""
    target = getattr(fn, "func", fn)  # a function or a partial
    if not _isinstance(target, types.FunctionType):
        target = None
    if namespace is None:
        namespace = target.__globals__ if target is not None else None
    if not _isinstance(namespace, dict):
        yield
        return

    def swap(value):  # a default argument such as `forward: Callable = toy_forward`
        return others.get(getattr(value, "__name__", None), value) if callable(value) else value

    saved = {n: namespace[n] for n in others if n in namespace}
    defaults, kwdefaults = (target.__defaults__, target.__kwdefaults__) if target else (None, None)
    namespace.update(others)
    if target is not None:
        target.__defaults__ = tuple(swap(d) for d in defaults) if defaults else defaults
        target.__kwdefaults__ = {k: swap(d) for k, d in kwdefaults.items()} if kwdefaults else kwdefaults
    try:
        yield
    finally:
        for n in others:
            namespace.pop(n, None)
        namespace.update(saved)
        if target is not None:
            target.__defaults__, target.__kwdefaults__ = defaults, kwdefaults


def isolate_test_cell(namespace: dict, name: str, topic: str) -> None:
    """Under grading, at the top of exercise `name`'s test cell (the grader adds the call):
    until the cell ends, the notebook's names of the chapter's other exercises, and the
    exercise's default arguments that are those exercises, are their references, so a
    wrong or missing exercise costs no other, in the visible checks as in the hidden
    tests. IPython's post_run_cell event puts the learner's own back, error or not."""
    try:
        module = chapters.reference(topic)
        shell = get_ipython()  # noqa: F821 (a kernel's builtin)
    except (ImportError, NameError):
        return
    swapped = _other_exercises_as_reference(namespace.get(name), _other_references(module, name), namespace)
    swapped.__enter__()

    def restore(*_) -> None:
        shell.events.unregister("post_run_cell", restore)
        swapped.__exit__(None, None, None)

    shell.events.register("post_run_cell", restore)


def _watched(fn: Callable, watch: _ReferenceWatch, name: str, number: int, others: dict[str, Callable]) -> Callable:
    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            with _other_exercises_as_reference(fn, others), watch.on():
                result = fn(*args, **kwargs)
        finally:
            if watch.seen and "judges this investigation" in watch.seen[0]:
                raise CheckFailed(f"{name} looks up the course's own truth for exercise {number} ({name}): "
                                  f"it {watch.seen[0]}. An investigation earns its points by what you "
                                  "measure; the course's judging code and the recipes of its undisclosed "
                                  "models are off limits here (other exercises' references are fine).") from None
            if watch.seen:
                raise CheckFailed(f"{name} uses the course's reference for exercise {number} ({name}): "
                                  f"it {watch.seen[0]}. Calling other exercises' references is fine; "
                                  "this exercise's must be your own work to earn its points.") from None
        if _isinstance(result, (types.FunctionType, functools.partial, types.MethodType)):
            return _watched(result, watch, name, number, others)  # a hook or closure it made: watched too
        return result

    return call


def call_learner(fn: Callable, name: str, description: str, args: tuple, kwargs: dict | None = None) -> Any:
    """Call the learner's function; its exceptions become a CheckFailed naming the case."""
    if not callable(fn):
        _fail(f"{name} should be a function, but it is a {_type(fn).__name__}", None)
    try:
        return fn(*args, **(kwargs or {}))
    except NotImplementedError:
        raise CheckFailed(f"{name} is not implemented yet (it raised NotImplementedError)") from None
    except CheckFailed:
        raise
    except Exception as e:  # the learner's bug, reported with the case it happened on
        raise CheckFailed(f"{name}({description}) raised {_type(e).__name__}: {e}") from e


UNKNOWN_CAUSE = ("No known mistake gives this output: work the case above through by hand, or print "
                 "your intermediate tensors on it and compare each step with the exercise's text.")


def compare_function(
    fn: Callable,
    reference: Callable,
    cases: Sequence[Case],
    *,
    name: str,
    mistakes: Sequence[tuple[str, Callable]] = (),
    hint: str | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    copy_inputs: bool = True,
    report: bool = True,
) -> None:
    """Call `fn` and `reference` on each case (on separate copies of the inputs, so an
    in-place edit by either cannot leak into the other) and compare the results.
    `copy_inputs=False` passes the inputs as they are, for inputs too big to copy (a
    model): then the caller guards them (see `mechlab.induction_heads.checks`).
    `report=False` leaves the ✓ line to the caller, when more checks follow.

    When they differ, the known mistakes (`(hint, wrong_function)` pairs) are tried on
    the same case: if the learner's output matches one, its hint is added to the message.
    The general `hint` is about the output's form (type, dtype, shape, NaN): it is added
    only when the form is what differs, never to a plain difference in values, where
    it would point the learner the wrong way; values that differ in a way no known
    mistake explains say so (`UNKNOWN_CAUSE`).
    """
    if not callable(fn):
        _fail(f"{name} should be a function, but it is a {_type(fn).__name__}", None)
    dup = copy.deepcopy if copy_inputs else (lambda x: x)
    for case in cases:
        expected = reference(*dup(case.args), **dup(case.kwargs))
        got = call_learner(fn, name, case.description, dup(case.args), dup(case.kwargs))
        label = f"{name}({case.description})"
        try:
            assert_value_close(got, expected, name=label, atol=atol, rtol=rtol)
        except CheckFailed as failure:
            for mistake_hint, wrong in mistakes:
                try:
                    wrong_out = wrong(*dup(case.args), **dup(case.kwargs))
                    assert_value_close(got, wrong_out, name=label, atol=atol, rtol=rtol)
                except Exception:  # CheckFailed included: not this mistake
                    continue
                raise CheckFailed(f"{failure}\nHint: {mistake_hint}") from None
            if hint and not failure.values_differ:
                raise CheckFailed(f"{failure}\nHint: {hint}") from None
            if failure.values_differ:  # say plainly that no cause is known, rather than guess one
                raise CheckFailed(f"{failure}\n{UNKNOWN_CAUSE}") from None
            raise
    if report:
        passed(f"{name} matches the reference on {len(cases)} case{'s' * (len(cases) != 1)}")


def compare_gradients(fn: Callable, reference: Callable, case: Case, wrt: Sequence[int], *, name: str,
                      mistakes: Sequence[tuple[str, Callable]] = (), atol: float = 1e-5, rtol: float = 1e-4,
                      seed: int = 0) -> None:  # fmt: skip
    """Backpropagate the same random upstream gradient through `fn` and `reference` on one
    case and compare the gradients reaching the arguments at positions `wrt` (a gradient
    that never arrives counts as zeros). Known mistakes are tried as in `compare_function`.
    Prints nothing: the caller reports the exercise's one ✓ line."""
    label = f"{name}({case.description})"

    def grads(f: Callable, learner: bool) -> list[torch.Tensor]:
        args = [a.detach().clone().requires_grad_(i in wrt) if _isinstance(a, _Tensor) else a
                for i, a in enumerate(copy.deepcopy(case.args))]
        out = call_learner(f, name, case.description, tuple(args)) if learner else f(*args)
        if learner and (_type(out) not in (_Tensor, _Parameter) or not out.requires_grad):
            _fail(f"{label}: the output does not depend differentiably on its inputs (no gradient reaches them); "
                  "build it from the input tensors with torch operations, without .item(), .detach() or "
                  "torch.no_grad()", None)
        upstream = torch.randn(out.shape, generator=seeded(seed), dtype=out.dtype)
        try:
            out.backward(upstream)
        except Exception as e:
            if not learner:
                raise
            raise CheckFailed(f"{label}: the backward pass raised {_type(e).__name__}: {e}") from e
        return [args[i].grad if args[i].grad is not None else torch.zeros_like(args[i]) for i in wrt]

    expected = grads(reference, learner=False)
    got = grads(fn, learner=True)
    for index, g, e in zip(wrt, got, expected):
        grad_name = f"{label}: gradient reaching argument {index + 1}"
        try:
            assert_tensor_close(g, e, name=grad_name, atol=atol, rtol=rtol)
        except CheckFailed as failure:
            for mistake_hint, wrong in mistakes:
                try:
                    assert_tensor_close(g, grads(wrong, learner=False)[wrt.index(index)], name=grad_name,
                                        atol=atol, rtol=rtol)
                except Exception:
                    continue
                raise CheckFailed(f"{failure}\nHint: {mistake_hint}") from None
            raise


@functools.cache
def course_model(name: str):
    """The zoo's model `name`, loaded once per process for the checks (under grading, once
    per test cell: the grader reloads this module, so a learner's function that changed
    the model's weights in one cell changes nothing in the next)."""
    from mechlab import zoo

    return zoo.load(name)


@functools.cache
def other_models(seed: int) -> tuple[tuple[str, object], ...]:
    """Untrained models of other shapes (`zoo.other_shapes`), once per seed: what
    hard-coded sizes or layer indices trip on."""
    from mechlab import zoo

    return zoo.other_shapes(seed=seed)


_COURSE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep  # mechlab/


def _without_course_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """The traceback less the frames of mechlab's own files: a learner sees the line of
    their cell and of their own function where it broke, not the checks' code."""
    kept = []
    while tb is not None:
        if not os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_COURSE_DIR):
            kept.append(tb)
        tb = tb.tb_next
    trimmed = None
    for t in reversed(kept):
        trimmed = types.TracebackType(trimmed, t.tb_frame, t.tb_lasti, t.tb_lineno)
    return trimmed


def _for_the_learner(error: BaseException) -> BaseException:
    """`error` and the errors it was raised from, with the course's frames left out."""
    seen, e = set(), error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__traceback__ = _without_course_frames(e.__traceback__)
        e = e.__cause__ if e.__cause__ is not None or e.__suppress_context__ else e.__context__
    return error


def check_and_grade(name: str, run: Callable[[Callable, bool], None],
                    truth: Truth | None = None) -> tuple[Callable, Callable]:
    """The visible check and the hidden test of an exercise whose two differ only in their
    cases: `run(fn, hidden)`. The hidden test also refuses the reference (see `own_work`),
    and, for a graded investigation, the code that judges it (`truth`)."""
    def check(fn: Callable) -> None:
        run(fn, False)

    chapter_module = sys._getframe(1).f_globals["__name__"]  # the chapter's mechlab.<topic>.checks

    def grade(fn: Callable) -> None:
        run(own_work(fn, name, chapter_module, truth), True)

    check.__name__, grade.__name__ = f"check_{name}", f"grade_{name}"
    return check, grade


def _weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _held_tensors(value: Any) -> list[torch.Tensor]:
    """The tensors an argument holds: itself, or the values of a cache or dict."""
    if _isinstance(value, _Tensor):
        return [value]
    if callable(getattr(value, "values", None)):
        return [v for v in value.values() if _isinstance(v, _Tensor)]
    return []


def guard_model(fn: Callable, name: str) -> Callable:
    """`fn(model, ...)`, after which the model has no hooks left (they are removed), and
    the model's weights and every tensor passed in (tokens, activation caches) must be as
    they were: if not, they are restored, so the next check sees the real inputs, and
    the check fails saying which argument was edited."""

    def call(model, *args, **kwargs):
        before = _weights(model)
        inputs = [(i, t, t.detach().clone()) for i, a in enumerate(args) for t in _held_tensors(a)]
        try:
            return fn(model, *args, **kwargs)
        finally:
            model.reset_hooks()
            changed = [(i, t, copy) for i, t, copy in inputs if not torch.equal(t.detach(), copy)]
            edited = sorted({i for i, _, _ in changed})
            with torch.no_grad():
                for _, t, copy in changed:
                    t.copy_(copy)
            if any(not torch.equal(a, b) for a, b in zip(before, _weights(model))):
                with torch.no_grad():
                    for p, w in zip(model.parameters(), before):  # the next check needs the real model
                        p.copy_(w)
                raise CheckFailed(f"{name} changed the model's weights; leave the model as it was "
                                  "(edit activations with hooks, or work on copies of the weight matrices)")
            if edited:
                raise CheckFailed(f"{name} changed argument {edited[0] + 2} it was given (a tensor in it was "
                                  "edited in place); clone before editing (`x = x.clone()`), or every later use "
                                  "of that cache or tensor sees your edit")

    return call


def compare_on_models(fn: Callable, reference: Callable, cases: Sequence[Case], name: str,
                      mistakes: Sequence[tuple[str, Callable]] = (), **tolerance) -> None:  # fmt: skip
    """`compare_function` for functions whose first argument is a TransformerLens model:
    inputs are passed as they are (a model is too big to copy), guarded by `guard_model`."""
    compare_function(guard_model(fn, name), reference, cases, name=name, mistakes=mistakes, copy_inputs=False,
                     **tolerance)


def checked_array(got: Any, name: str, shape: tuple, dtype: torch.dtype = torch.float32,
                  *, detached: bool = False) -> np.ndarray:
    """Check a learner's tensor by exact type, dtype, shape (and that it is detached, when
    asked); return a float64 NumPy copy for statistics no learner cell can rebind."""
    if _type(got) not in (_Tensor, _Parameter):
        _fail(f"{name}: expected a torch.Tensor, got {_type(got).__name__}", None)
    if got.dtype != dtype:
        _fail(f"{name}: dtype {got.dtype}, expected {dtype}", None)
    if tuple(got.shape) != tuple(shape):
        _fail(f"{name}: shape {tuple(got.shape)}, expected {tuple(shape)}", None)
    if detached and got.requires_grad:
        _fail(f"{name} still requires grad: return detached values (`loss.detach()`), "
              "or the history keeps every step's computation graph alive", None)
    return _numpy(_to(_detach(got), "cpu", torch.float64))


def checked_table(got: Any, label: str, columns: Sequence[str], why: str = "") -> Any:
    """A learner's table: a pandas DataFrame (by exact type) with at least `columns`; `why`
    says what the missing columns are for."""
    import pandas as pd

    if _type(got) is not pd.DataFrame:
        _fail(f"{label} should return a pandas DataFrame, not a {_type(got).__name__}", None)
    missing = [c for c in columns if c not in got.columns]
    if missing:
        _fail(f"{label} has no column {missing}; it needs {list(columns)}{why}", None)
    return got


class CountedCalls:
    """Wraps a piece handed to a learner's function (a forward pass, a loss), so a check
    can tell whether the learner really used it rather than a notebook global."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)

    def expect(self, argument: str, at_least: int, name: str) -> None:
        if self.calls < at_least:
            _fail(f"{name} called the `{argument}` it was given {self.calls} times in {at_least} steps; "
                  f"use the `{argument}` argument (the grader passes the course's version), "
                  "not a function from the notebook", None)


def seeded(seed: int) -> torch.Generator:
    """A CPU generator: test inputs are the same on every machine and device."""
    return torch.Generator().manual_seed(seed)


def randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=seeded(seed))


def passed(message: str) -> None:
    """Report a passed check on stdout (never stderr: nbgrader would fail the cell)."""
    print(f"✓ {message}")
