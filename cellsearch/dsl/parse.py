"""The cell language: Python syntax read with ``ast`` and never executed.

A cell is ``state(a, b, ...)``, then assignments, then ``return NAME``. Expressions use ``x``,
names, numbers, ``+ - *`` and the functions ``linear peep blend sigmoid tanh relu identity``.
``linear`` takes one keyword: ``bias=v`` (a number: the bias starts at ``v``) or ``bias=none`` (the
linear has no bias at all).
Assignment is sequential: after ``c = ...`` later lines see the new ``c``; before it, ``c`` is the
previous step's value. Anything else is an error with the file, line and column.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from ..errors import DSLError, IRError
from ..ir.canon import canonicalize
from ..ir.cell import Cell, Node, arity_ok, make_attrs
from ..ir.ops import FUNCTIONS, KEYWORDS, LEAVES, NO_BIAS, OP_INFO, PURE, Op
from ..ir.validate import problems

_BINOPS = {ast.Add: Op.ADD, ast.Sub: Op.SUB, ast.Mult: Op.MUL}
_KNOWN = ", ".join(sorted(FUNCTIONS))
_CONSTRUCTS = {
    ast.Attribute: "attribute access (a.b)",
    ast.Subscript: "subscripts (a[i])",
    ast.Lambda: "lambda",
    ast.Compare: "comparisons",
    ast.BoolOp: "and/or",
    ast.IfExp: "conditional expressions",
    ast.Starred: "starred arguments",
    ast.JoinedStr: "strings",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Dict: "dicts",
    ast.Set: "sets",
    ast.ListComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.Await: "await",
    ast.NamedExpr: "the walrus operator (:=)",
    ast.Import: "import",
    ast.ImportFrom: "import",
    ast.For: "loops",
    ast.While: "loops",
    ast.If: "if statements",
    ast.FunctionDef: "function definitions",
    ast.ClassDef: "class definitions",
    ast.With: "with statements",
    ast.Try: "try statements",
    ast.AugAssign: "augmented assignment (write c = c + ... instead)",
    ast.AnnAssign: "annotated assignment",
    ast.Delete: "del",
    ast.Global: "global",
    ast.Pass: "pass",
}


def _at(node: ast.AST) -> tuple[int, int]:
    return getattr(node, "lineno", 1), getattr(node, "col_offset", 0) + 1


def _not_allowed(node: ast.AST) -> DSLError:
    what = _CONSTRUCTS.get(type(node), f"`{type(node).__name__}`")
    return DSLError(f"{what} is not part of the cell language", *_at(node))


def _keyword_value(fname: str, kw: ast.keyword) -> float | str:
    """A keyword's value: a number (an initialisation hint), or ``none`` for ``bias=`` (no bias)."""
    value = kw.value
    if kw.arg == "bias":
        if isinstance(value, ast.Name) and value.id == NO_BIAS:
            return NO_BIAS
        if isinstance(value, ast.Constant) and value.value is None:
            raise DSLError(f"write {fname}(..., bias=none), in lower case, for no bias", *_at(value))
    sign = 1.0
    if isinstance(value, ast.UnaryOp) and isinstance(value.op, ast.USub):
        sign, value = -1.0, value.operand
    if not isinstance(value, ast.Constant) or isinstance(value.value, bool) or not isinstance(value.value, int | float):
        what = "a number or none (no bias)" if kw.arg == "bias" else "a number"
        raise DSLError(f"{fname}(..., {kw.arg}=) must be {what}", *_at(kw.value))
    return sign * float(value.value)


@dataclass
class _Binding:
    node: int
    at: tuple[int, int]
    read: bool = False


class _Builder:
    def __init__(self, stmts: list[ast.stmt]) -> None:
        self.nodes: list[Node] = []
        self.where: list[tuple[int, int]] = []
        self.seen: dict[tuple[object, ...], int] = {}
        self.env: dict[str, _Binding] = {}
        self.states: dict[str, tuple[int, int]] = {}
        self.updates: dict[str, int] = {}
        self.target: str | None = None
        self.assigned_later = {
            t.id: _at(t) for s in stmts if isinstance(s, ast.Assign) for t in s.targets if isinstance(t, ast.Name)
        }

    def add(self, op: Op, args: tuple[int, ...], at: tuple[int, int], **attrs: object) -> int:
        node = Node(op, args, make_attrs(**attrs))
        key = None
        if op in PURE or op in LEAVES:
            key = (op, tuple(sorted(args)) if OP_INFO[op].commutative else args, node.attrs)
            if key in self.seen:
                return self.seen[key]
        self.nodes.append(node)
        self.where.append(at)
        if key is not None:
            self.seen[key] = len(self.nodes) - 1
        return len(self.nodes) - 1

    # ---- expressions ----
    def expr(self, e: ast.expr) -> int:
        at = _at(e)
        if isinstance(e, ast.Name):
            return self.name(e.id, at)
        if isinstance(e, ast.Constant):
            if isinstance(e.value, bool) or not isinstance(e.value, int | float):
                raise DSLError(f"only numbers may appear as constants, not {e.value!r}", *at)
            return self.add(Op.CONST, (), at, value=float(e.value))
        if isinstance(e, ast.BinOp):
            op = _BINOPS.get(type(e.op))
            if op is None:
                sym = {ast.Div: "/", ast.Pow: "**", ast.MatMult: "@", ast.FloorDiv: "//", ast.Mod: "%"}.get(
                    type(e.op), type(e.op).__name__
                )
                raise DSLError(f"the operator {sym} is not part of the cell language (use + - * and linear())", *at)
            return self.add(op, (self.expr(e.left), self.expr(e.right)), at)
        if isinstance(e, ast.UnaryOp):
            if isinstance(e.op, ast.UAdd):
                return self.expr(e.operand)
            if isinstance(e.op, ast.USub):
                if (
                    isinstance(e.operand, ast.Constant)
                    and isinstance(e.operand.value, int | float)
                    and not isinstance(e.operand.value, bool)
                ):
                    return self.add(Op.CONST, (), at, value=-float(e.operand.value))
                zero = self.add(Op.CONST, (), at, value=0.0)
                return self.add(Op.SUB, (zero, self.expr(e.operand)), at)
            raise DSLError("only unary minus is part of the cell language", *at)
        if isinstance(e, ast.Call):
            return self.call(e)
        raise _not_allowed(e)

    def name(self, name: str, at: tuple[int, int]) -> int:
        if name == "x":
            return self.add(Op.INPUT, (), at)
        if name in self.env:
            self.env[name].read = True
            return self.env[name].node
        if name in self.states:
            return self.add(Op.STATE, (), at, name=name)
        if name in FUNCTIONS or name == "state":
            raise DSLError(f"'{name}' is a function; call it, e.g. {name}(...)", *at)
        if name == self.target:
            raise DSLError(
                f"'{name}' is defined in terms of itself (a cycle); only states may be read before they are assigned", *at
            )
        if name in self.assigned_later:
            line = self.assigned_later[name][0]
            raise DSLError(f"'{name}' is used before it is assigned (it is assigned on line {line})", *at)
        raise DSLError(f"unknown name '{name}'", *at)

    def call(self, e: ast.Call) -> int:
        at = _at(e)
        if not isinstance(e.func, ast.Name):
            raise (
                _not_allowed(e.func) if isinstance(e.func, ast.Attribute) else DSLError("only named functions can be called", *at)
            )
        fname = e.func.id
        if fname == "state":
            raise DSLError("state(...) declares the states once, as the first line of the cell", *at)
        op = FUNCTIONS.get(fname)
        if op is None:
            raise DSLError(f"unknown function '{fname}' (known: {_KNOWN})", *at)
        for arg in e.args:
            if isinstance(arg, ast.Starred):
                raise _not_allowed(arg)
        if not arity_ok(op, len(e.args)):
            arity = OP_INFO[op].arity
            want = "at least 1 argument" if arity is None else f"{arity} argument{'s' if arity != 1 else ''}"
            raise DSLError(f"{fname}() takes {want}, got {len(e.args)}", *at)
        attrs: dict[str, float | str] = {}
        for kw in e.keywords:
            allowed = KEYWORDS.get(op, frozenset())
            if kw.arg is None or kw.arg not in allowed:
                hint = f" (it accepts: {', '.join(sorted(allowed))})" if allowed else ""
                raise DSLError(f"{fname}() has no keyword '{kw.arg or '**'}'{hint}", *_at(kw))
            if kw.arg in attrs:
                raise DSLError(f"{fname}() has the keyword '{kw.arg}' twice", *_at(kw))
            attrs[kw.arg] = _keyword_value(fname, kw)
        args = tuple(self.expr(a) for a in e.args)
        if op in (Op.LINEAR, Op.PEEP):
            for a, src in zip(args, e.args, strict=True):
                if self.nodes[a].op is Op.CONST:
                    raise DSLError(f"{fname}() needs a vector argument (x, a state or an expression), not a constant", *_at(src))
        return self.add(op, args, at, **attrs)

    # ---- statements ----
    def declare(self, stmt: ast.stmt) -> None:
        call = stmt.value if isinstance(stmt, ast.Expr) else None
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "state"):
            raise DSLError("a cell starts with state(...) naming its states, e.g. state(c, h)", *_at(stmt))
        if call.keywords or not call.args:
            raise DSLError("state(...) takes one or more state names, e.g. state(c, h)", *_at(call))
        for a in call.args:
            if not isinstance(a, ast.Name):
                raise DSLError("state(...) takes plain names, e.g. state(c, h)", *_at(a))
            if a.id == "x" or a.id in FUNCTIONS or a.id == "state":
                raise DSLError(f"'{a.id}' is reserved and cannot be a state", *_at(a))
            if a.id in self.states:
                raise DSLError(f"state '{a.id}' is declared twice", *_at(a))
            self.states[a.id] = _at(a)

    def assign(self, stmt: ast.Assign) -> None:
        if len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Name):
            raise DSLError("assign to exactly one plain name, e.g. c = ...", *_at(stmt.targets[0]))
        target = stmt.targets[0]
        name, at = target.id, _at(target)
        if name == "x":
            raise DSLError("x is the step's input and cannot be assigned", *at)
        if name in FUNCTIONS or name == "state":
            raise DSLError(f"'{name}' is a function name and cannot be assigned", *at)
        if name in self.updates:
            raise DSLError(f"state '{name}' is assigned twice; every state is assigned exactly once per step", *at)
        if name in self.env and name not in self.states:
            raise DSLError(f"'{name}' is already assigned (line {self.env[name].at[0]}); use a new name", *at)
        self.target = name
        k = self.expr(stmt.value)
        self.target = None
        node = self.nodes[k]
        if node.label is None and not node.is_leaf:
            self.nodes[k] = node.replace(label=name)
        if name in self.states:
            self.updates[name] = k
        self.env[name] = _Binding(k, at, read=name in self.states)


def parse(text: str, name: str = "cell", file: str | None = None, strict: bool = True) -> Cell:
    """Parse cell text into a canonical :class:`Cell`; raise :class:`DSLError` (``file:line:col``).

    With ``strict=False`` unused temporaries are dropped instead of being an error.
    """
    where = file or f"<{name}>"
    try:
        return _parse(text, name, strict)
    except DSLError as err:
        raise err.with_file(where) from None


def _parse(text: str, name: str, strict: bool) -> Cell:
    try:
        tree = ast.parse(text, mode="exec")
    except SyntaxError as err:
        raise DSLError(f"syntax error: {err.msg}", err.lineno or 1, err.offset or 1) from None
    except (RecursionError, MemoryError, ValueError) as err:
        raise DSLError(f"cannot read the cell: {type(err).__name__}", 1, 1) from None
    stmts = tree.body
    if not stmts:
        raise DSLError("the cell is empty: write state(...), assignments and return NAME", 1, 1)
    b = _Builder(stmts)
    try:
        b.declare(stmts[0])
        output: int | None = None
        for stmt in stmts[1:]:
            if output is not None:
                raise DSLError("nothing may follow return", *_at(stmt))
            if isinstance(stmt, ast.Assign):
                b.assign(stmt)
            elif isinstance(stmt, ast.Return):
                if not isinstance(stmt.value, ast.Name):
                    raise DSLError("return must name a value, e.g. return h", *_at(stmt.value or stmt))
                if stmt.value.id == "x":
                    raise DSLError("the cell returns its input x; it must return a value computed in the step", *_at(stmt.value))
                output = b.name(stmt.value.id, _at(stmt.value))
            elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call | ast.Name | ast.BinOp | ast.Constant):
                if isinstance(stmt.value, ast.Call) and isinstance(stmt.value.func, ast.Name) and stmt.value.func.id == "state":
                    raise DSLError("state(...) declares the states once, as the first line of the cell", *_at(stmt))
                raise DSLError("an expression on its own does nothing; assign it to a name", *_at(stmt))
            else:
                raise _not_allowed(stmt)
    except RecursionError:
        raise DSLError("an expression is nested too deeply", 1, 1) from None
    if output is None:
        raise DSLError("the cell has no `return NAME` at its end", getattr(stmts[-1], "end_lineno", None) or 1, 1)
    for s, at in b.states.items():
        if s not in b.updates:
            raise DSLError(f"state '{s}' is declared but never assigned", *at)
    if strict:
        for n, bind in b.env.items():
            if not bind.read and n not in b.states and bind.node != output:
                raise DSLError(f"'{n}' is assigned but never used", *bind.at)
    states = list(b.states)
    updates = [b.updates[s] for s in states]
    for p in problems(b.nodes, states, updates, output):
        if p.node is not None:
            at = b.where[p.node]
            if p.state is not None and p.state in b.env:
                at = b.env[p.state].at
        elif p.state is not None:
            at = b.states[p.state]
        else:
            at = _at(stmts[0])
        raise DSLError(p.message, *at)
    try:
        return canonicalize(b.nodes, states, updates, output, name=name)
    except IRError as err:  # pragma: no cover - the checks above should catch everything first
        raise DSLError(str(err), 1, 1) from None


def parse_file(path: str | Path, strict: bool = True) -> Cell:
    """Parse a ``.cell`` file; the cell is named after the file's stem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DSLError("the file is not UTF-8 text", 1, 1, str(path)) from None
    return parse(text, name=p.stem, file=str(path), strict=strict)
