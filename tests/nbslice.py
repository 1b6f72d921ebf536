"""The part of a notebook that some of its cells need: those cells, and of the earlier code
cells every top-level statement that binds (or changes by assignment) a name they or another
kept statement read.

Tests that prove something about a few cells use it to leave out the rest: the
lost-exercise grading needs every exercise and test cell, not the experiments between them
that only show a finding (chapter 7's cost 80 s of CPU a run), and the browser needs the
cells that draw a panel, not the chapter around them. The analysis reads names, not
behaviour, and errs towards keeping: a statement is kept if it binds a read name at the top
level or assigns to one of its attributes or items (`store.scale = ...`), and a cell that
cannot be parsed is kept whole. What it cannot see is a change made by a method call
(`model.eval()` as a statement of its own). A notebook sliced wrongly fails loudly in the
test that uses it (a NameError, a changed score); it does not pass silently.
"""

from __future__ import annotations

import ast
import builtins
import re
import symtable
from collections.abc import Callable, Iterable

import nbformat

MAGIC = re.compile(r"^\s*[%!]", re.MULTILINE)
BUILTINS = frozenset(dir(builtins))


def _module_level(tree: ast.Module) -> Iterable[ast.AST]:
    """The statements of the module's own scope (not inside a function or class body)."""
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            stack += [n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt)]


def _root(node: ast.AST) -> str | None:
    """`a` for `a`, `a.b.c`, `a[i].b`."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Starred)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _global_reads(table: symtable.SymbolTable) -> Iterable[str]:
    """The module-level names read in `table` and the scopes inside it (a function's own
    parameters and locals are not)."""
    for sym in table.get_symbols():
        if sym.is_referenced() and (table.get_type() == "module" or sym.is_global()):
            yield sym.get_name()
    for child in table.get_children():
        yield from _global_reads(child)


def _global_writes(table: symtable.SymbolTable) -> Iterable[str]:
    for sym in table.get_symbols():
        if table.get_type() == "module" and (sym.is_assigned() or sym.is_imported()):
            yield sym.get_name()
        elif sym.is_declared_global() and sym.is_assigned():
            yield sym.get_name()
    for child in table.get_children():
        yield from _global_writes(child)


def names(source: str) -> tuple[set[str], set[str]] | None:
    """(module-level names the cell binds or changes, module-level names it reads), or None
    when it does not parse (the lost-exercise test's syntax error, say). Python's own
    symbol tables say which names a function reads from the module and which are its own;
    assignments to an attribute or item (`store.scale = 2`) and augmented assignments
    (`total += 1`, which also reads) are read off the syntax tree."""
    source = MAGIC.sub("pass  # ", source)
    try:
        tree, table = ast.parse(source), symtable.symtable(source, "<cell>", "exec")
    except SyntaxError:
        return None
    written, read = set(_global_writes(table)), set(_global_reads(table))
    for node in _module_level(tree):
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            changed = {r for t in targets if (r := _root(t)) and (isinstance(node, ast.AugAssign)
                                                                  or not isinstance(t, ast.Name))}
            written |= changed
            read |= changed
    return written, read - BUILTINS


def statements(source: str) -> list[str] | None:
    """The cell's top-level statements, each as its source lines (a decorated definition with
    its decorators; a magic line on its own), or None when the cell does not parse."""
    lines = source.splitlines()
    try:
        tree = ast.parse(MAGIC.sub("pass  # ", source))
    except SyntaxError:
        return None
    starts = [min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) for node in tree.body]
    return ["\n".join(lines[start - 1:node.end_lineno]) for start, node in zip(starts, tree.body)]


def needed(nb: nbformat.NotebookNode, keep: Callable[[int, nbformat.NotebookNode], bool]) -> nbformat.NotebookNode:
    """A copy of `nb` with every markdown cell, every code cell `keep(index, cell)` holds, and
    of the earlier code cells the top-level statements those need (see the module's
    docstring); a cell left with none of its statements is left out."""
    out = nbformat.from_dict(nb)
    kept = [c.cell_type != "code" or keep(i, c) for i, c in enumerate(out.cells)]
    wanted: set[str] = set()
    for i in reversed(range(len(out.cells))):
        cell = out.cells[i]
        if cell.cell_type != "code":
            continue
        parts = statements(cell.source)
        if kept[i] or parts is None:  # whole (one that does not parse reads nothing we can see)
            kept[i] = True
            wanted |= names(cell.source)[1] if parts is not None else set()
            continue
        chosen = []
        for part in reversed(parts):
            written, read = names(part)
            if written & wanted:
                chosen.insert(0, part)
                wanted |= read
        if chosen:
            kept[i] = True
            cell.source = "\n".join(chosen)
    out.cells = [c for c, k in zip(out.cells, kept) if k]
    return out


def with_setup(nb: nbformat.NotebookNode, keep: Callable[[nbformat.NotebookNode], bool]) -> nbformat.NotebookNode:
    """`needed` for a chapter's notebook: its setup (every cell before the first exercise:
    the setup cell, imports, models) whole, the cells `keep(cell)` holds, and what they need."""
    first = next(i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade_id"))
    return needed(nb, lambda i, cell: i < first or keep(cell))
