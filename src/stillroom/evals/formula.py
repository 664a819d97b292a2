"""`calculate_output` of multi graders: arithmetic over sub-grader names, evaluated without `eval`.

Allowed: numbers, sub-grader names, `+ - * /`, `**` and `^` (both power, as OpenAI writes it), unary
minus, parentheses, and the functions min, max, abs, floor, ceil, exp, sqrt, log. Anything else (attribute
access, subscripts, other names or calls) is refused when the grader is validated.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from stillroom.errors import BadRequestError

_FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "floor": math.floor,
    "ceil": math.ceil,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "log": math.log,
}
_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.BitXor: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def parse_formula(expression: str, names: Iterable[str]) -> ast.expr:
    """Parse and check an expression; every name must be a sub-grader's."""
    known = set(names)
    try:
        tree = ast.parse(expression, mode="eval").body
    except SyntaxError:
        raise BadRequestError(f"Invalid calculate_output {expression!r}.", param="calculate_output") from None
    _check(tree, known, expression)
    return tree


def evaluate_formula(expression: str, values: Mapping[str, float]) -> float:
    tree = parse_formula(expression, values)
    return float(_eval(tree, values))


def _check(node: ast.AST, known: set[str], expression: str) -> None:
    def refuse(what: str) -> BadRequestError:
        return BadRequestError(f"Invalid calculate_output {expression!r}: {what}.", param="calculate_output")

    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise refuse(f"{node.value!r} is not a number")
    elif isinstance(node, ast.Name):
        if node.id not in known:
            raise refuse(f"no grader named {node.id!r} (graders: {', '.join(sorted(known))})")
    elif isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise refuse("only + - * / ^ ** are allowed")
        _check(node.left, known, expression)
        _check(node.right, known, expression)
    elif isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY:
            raise refuse("only unary minus is allowed")
        _check(node.operand, known, expression)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
            raise refuse(f"functions are {', '.join(_FUNCTIONS)}")
        for arg in node.args:
            _check(arg, known, expression)
    else:
        raise refuse(f"{type(node).__name__} is not allowed")


def _eval(node: ast.AST, values: Mapping[str, float]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_eval(node.left, values), _eval(node.right, values))
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, values))
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    return _FUNCTIONS[node.func.id](*(_eval(arg, values) for arg in node.args))
