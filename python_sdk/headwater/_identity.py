"""Checks a flow body makes that no placeholder can answer: ``x is None``, ``x is not
y``, ``isinstance(x, T)``, ``type(x)``, ``match x:`` (docs/flows.md).

While a flow is built, its parameters are placeholders (``ParamRef``) and task calls
return references (``TaskRef``). Every other use of one calls one of its methods, so
the compiler hears of it: a parameter then builds the graph from its value, a task
result is refused naming the line. An identity or type check calls nothing: ``limit is
None`` was simply False for the placeholder, the branch was lost, and the run returned
a wrong result without a word. So the compiler reads those checks from the body's
source (once per function) and acts on them before running it:

* a parameter checked that way: the graph is built from the parameters' values, as
  for ``range(n)`` (value-dependent);
* a task result checked that way (a name assigned from a task or flow call in the
  body, or such a call itself): FlowDefinitionError naming the line and the fix.

Only the flow function's own body is read: a check inside a helper function it calls
is not seen (docs/flows.md says so). A body without source (typed at a bare
interpreter prompt) is not read.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import inspect
import textwrap
from dataclasses import dataclass
from types import CodeType
from typing import Any

#: Calls whose answer depends on the object itself, not on any method of it.
_TYPE_CALLS = frozenset({"isinstance", "issubclass", "type", "id", "callable"})


@dataclass(frozen=True)
class IdentityCheck:
    """One check of a flow body: what it checks, how, and where.

    ``name`` is the variable checked (None when a call is checked directly:
    ``fetch() is None``; "" for another expression: ``opts["limit"] is None``);
    ``calls`` the dotted names of the functions whose result it may be (the calls in
    what was assigned to ``name``, or in what a loop or comprehension giving ``name``
    iterates over: ``for x in [fetch(), None]``; the call checked directly; none when
    unknown).
    """

    name: str | None
    calls: tuple[str, ...]
    how: str
    line: int


_CHECKS: dict[CodeType, tuple[IdentityCheck, ...]] = {}


def identity_checks(fn: Any) -> tuple[IdentityCheck, ...]:
    """The identity and type checks in the body of ``fn`` (read once per function;
    () when its source cannot be read)."""
    fn = inspect.unwrap(fn)
    code = getattr(fn, "__code__", None)
    if not isinstance(code, CodeType):
        return ()
    known = _CHECKS.get(code)
    if known is None:
        known = _CHECKS[code] = _read(fn, code)
    return known


#: Bodies whose source could not be read (typed at a prompt, exec'd, piped to python).
_UNREAD: set[CodeType] = set()


def unread_checks(fn: Any) -> bool:
    """Whether ``fn``'s source could not be read and its bytecode makes an identity or
    type check (``is``, ``isinstance``, ``type``, ``match`` on a class or mapping...):
    then which value it checks is unknown."""
    fn = inspect.unwrap(fn)
    code = getattr(fn, "__code__", None)
    if not isinstance(code, CodeType):
        return False
    identity_checks(fn)
    return code in _UNREAD and _identity_ops(code)


def _identity_ops(code: CodeType) -> bool:
    import dis

    for instruction in dis.get_instructions(code):
        name = instruction.opname
        # (`x is None` in a branch compiles to a jump: POP_JUMP_*_IF_NONE / _NOT_NONE)
        if name == "IS_OP" or name.startswith("MATCH_") or name.endswith("_NONE"):
            return True
        if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME") and (
            instruction.argval in _TYPE_CALLS
        ):
            return True
    return any(isinstance(c, CodeType) and _identity_ops(c) for c in code.co_consts)


def _read(fn: Any, code: CodeType) -> tuple[IdentityCheck, ...]:
    try:
        lines, first = inspect.getsourcelines(fn)
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError, IndentationError):
        _UNREAD.add(code)
        return ()
    body: ast.AST | None = next((n for n in tree.body if isinstance(n, ast.FunctionDef)), None)
    if body is None:
        # A lambda (``flow(lambda limit=None: ...)``): its source is the lines it is
        # on; read when it is the only lambda there, else left to its bytecode.
        lambdas = [n for n in ast.walk(tree) if isinstance(n, ast.Lambda)]
        if len(lambdas) != 1 or getattr(fn, "__name__", "") != "<lambda>":
            _UNREAD.add(code)
            return ()
        body = lambdas[0]
    offset = (first or code.co_firstlineno) - 1
    # variable -> the calls whose result it may hold: assigned from an expression
    # with calls in it (the last such assignment), or given by a loop or comprehension
    # over one (``for x in [fetch(), None]``, ``for x in rows`` with ``rows = [...]``).
    assigned: dict[str, tuple[str, ...]] = {}
    for _ in range(2):  # a second pass follows names assigned later in the walk's order
        for node in ast.walk(body):
            if isinstance(node, ast.Assign):
                calls = _calls_in(node.value, assigned)
                targets: list[ast.expr] = list(node.targets)
            elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension):
                calls, targets = _calls_in(node.iter, assigned), [node.target]
            else:
                continue
            if calls:
                for target in targets:
                    for name in ast.walk(target):
                        if isinstance(name, ast.Name):
                            assigned[name.id] = calls
    found: list[IdentityCheck] = []

    def check(operand: ast.expr, how: str, line: int) -> None:
        if isinstance(operand, ast.Name):
            found.append(IdentityCheck(operand.id, assigned.get(operand.id, ()), how, line))
        elif isinstance(operand, ast.Call):
            found.append(IdentityCheck(None, (_dotted(operand.func),), how, line))
        elif not isinstance(operand, ast.Constant):  # opts["limit"], self.x, ...
            found.append(IdentityCheck("", (), how, line))

    for node in ast.walk(body):
        line = offset + getattr(node, "lineno", 1)
        if isinstance(node, ast.Compare):
            ops = [op for op in node.ops if isinstance(op, ast.Is | ast.IsNot)]
            if ops:
                how = (
                    "compared with `is not`"
                    if isinstance(ops[0], ast.IsNot)
                    else "compared with `is`"
                )
                for operand in (node.left, *node.comparators):
                    check(operand, how, line)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in _TYPE_CALLS and node.args and _builtin(fn, node.func.id):
                check(node.args[0], f"given to {node.func.id}()", line)
        elif isinstance(node, ast.Match):
            check(node.subject, "matched with `match`", line)
        elif isinstance(node, ast.Try | ast.TryStar):
            for handler in node.handlers:
                what = _catching_type_error(fn, handler.type)
                if what:
                    # A C function refuses a placeholder by its type (date.fromisoformat
                    # (day) raises TypeError, asking it nothing): caught, the body went
                    # on with its fallback for every value. The calls in the `try` say
                    # whether a task result may be what is refused.
                    how = f"{IN_TRY} a `try` that catches {what}"
                    calls = _calls_in_body(node.body, assigned)
                    found.append(IdentityCheck("", calls, how, offset + handler.lineno))
                    break
        elif isinstance(node, ast.With | ast.AsyncWith):
            for item in node.items:
                what = _suppressing_type_error(fn, item.context_expr)
                if what:  # `with suppress(TypeError):`, as a `try` that catches it
                    how = f"{IN_TRY} a `with suppress(...)` that catches {what}"
                    calls = _calls_in_body(node.body, assigned)
                    found.append(IdentityCheck("", calls, how, offset + node.lineno))
                    break
    return tuple(found)


#: How a check made by catching TypeError begins (IdentityCheck.how).
IN_TRY = "may be refused by code in"


def _suppressing_type_error(fn: Any, expr: ast.expr) -> str:
    """What ``contextlib.suppress(...)`` in a ``with`` catches a TypeError as ("" when
    ``expr`` is no such call, by the builtin names only)."""
    if not isinstance(expr, ast.Call) or resolve(fn, _dotted(expr.func)) is not contextlib.suppress:
        return ""
    for arg in expr.args:
        what = _catching_type_error(fn, arg)
        if what:
            return what
    return ""


#: The exceptions a handler catches TypeError with.
_CATCH_TYPE_ERROR = ("TypeError", "Exception", "BaseException")


def _catching_type_error(fn: Any, caught: ast.expr | None) -> str:
    """What an ``except`` clause catching ``caught`` (None: a bare ``except:``) catches
    a TypeError as ("TypeError", "Exception", "everything"; "" when it does not, by the
    builtin names only)."""
    if caught is None:
        return "everything"
    if isinstance(caught, ast.Starred):  # (suppress(*errors): not followed)
        return ""
    names = caught.elts if isinstance(caught, ast.Tuple) else [caught]
    for name in names:
        if isinstance(name, ast.Name) and name.id in _CATCH_TYPE_ERROR and _builtin(fn, name.id):
            return name.id
    return ""


def _calls_in_body(body: list[ast.stmt], assigned: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """``_calls_in`` over the statements of a block."""
    found: dict[str, None] = {}
    for statement in body:
        found.update(dict.fromkeys(_calls_in(statement, assigned)))
    return tuple(found)


def _calls_in(expr: ast.AST, assigned: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """The dotted names of the calls in ``expr``, and of those ``assigned`` to the
    names it reads, in order, without repeats."""
    found: dict[str, None] = {}
    for node in ast.walk(expr):
        if isinstance(node, ast.Call):
            found[_dotted(node.func)] = None
        elif isinstance(node, ast.Name):
            found.update(dict.fromkeys(assigned.get(node.id, ())))
    found.pop("", None)
    return tuple(found)


def _builtin(fn: Any, name: str) -> bool:
    """Whether ``name`` in ``fn``'s module is still the builtin of that name."""
    return fn.__globals__.get(name, getattr(builtins, name, None)) is getattr(builtins, name)


def _dotted(node: ast.expr) -> str:
    """``a.b.c`` for a name or attribute chain ("" for anything else)."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    parts.append(node.id)
    return ".".join(reversed(parts))


def resolve(fn: Any, dotted: str) -> Any:
    """The object ``dotted`` names in ``fn``'s module or closure (None if unknown)."""
    if not dotted:
        return None
    fn = inspect.unwrap(fn)
    head, *rest = dotted.split(".")
    scope = dict(fn.__globals__)
    if fn.__closure__:
        with contextlib.suppress(TypeError, ValueError):  # (a cell not filled yet)
            scope.update(inspect.getclosurevars(fn).nonlocals)
    obj = scope.get(head)
    for part in rest:
        obj = getattr(obj, part, None)
    return obj
