"""A jinja2 sandbox for untrusted chat templates that bounds what one render may cost.

jinja2's ImmutableSandboxedEnvironment stops the attribute tricks (no os, no private attributes, no
changes to the caller's lists) but not size or time: 'a'.ljust(10**8), '%0100000000d' % 1,
[s] * n | join, loops of loops. Rather than chase operators one by one, a render has a Budget:
- a value that a template operator, method or filter builds is sized before it is built (after, for
  the ones that can only grow it by a small factor): at most `limit` characters, 1 MiB plus twice
  the size of the input (the messages), so a long conversation still renders;
- everything written to any buffer (the output, macros, {% set %} blocks) is counted: at most
  WORK_FACTOR x limit characters, and the prompt itself at most `limit`;
- loop iterations, calls, filters and outputs are steps: at most MAX_STEPS, and MAX_SECONDS of wall
  clock, checked at every step.
Nothing runs at compile time (optimizer off, finalize needs the context), so every value and every
piece of output, literal text included, goes through these checks. Failures raise SecurityError.
"""
from __future__ import annotations

import functools
import operator
import re
import time
from collections.abc import Collection, Mapping
from contextvars import ContextVar
from itertools import chain
from typing import Any, Iterable, Iterator

from jinja2 import nodes, pass_context
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError
from jinja2.runtime import markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.utils import Namespace
from markupsafe import Markup

LIMIT = 1 << 20          # characters a value or the prompt may have, plus twice the input's
WORK_FACTOR = 16         # output written at every level (macros count once per level)
MAX_STEPS = 1_000_000
MAX_SECONDS = 2.0
MAX_INT_BITS = 1 << 16   # integers stay small: their arithmetic is not interruptible
MAX_EXPONENT = 256


class Budget:
    """What one render has used so far."""

    def __init__(self, input_size: int = 0):
        self.limit = LIMIT + 2 * input_size
        self.work = self.steps = 0
        self.deadline = time.monotonic() + MAX_SECONDS

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise SecurityError(f"the template ran more than {MAX_STEPS} steps")
        if time.monotonic() > self.deadline:
            raise SecurityError(f"the template ran longer than {MAX_SECONDS} s")

    def size(self, n: int) -> None:
        if n > self.limit:
            raise SecurityError(f"the template built a value longer than {self.limit}")

    def wrote(self, n: int) -> None:
        self.size(n)
        self.work += n
        if self.work > WORK_FACTOR * self.limit:
            raise SecurityError(f"the template wrote more than {WORK_FACTOR * self.limit} characters")


_budget: ContextVar[Budget | None] = ContextVar("larosa_template_budget", default=None)


def _current() -> Budget:
    return _budget.get() or Budget()   # outside a render (a direct call): the default limits


def weight(x: Any, cap: int) -> int:
    """About len(str(x)), counting a shared part every time it appears ([s] * 3 weighs 3 s); stops
    once past cap. Iterative: a deeply nested list cannot exhaust the stack here."""
    total, todo = 0, [iter((x,))]
    while todo:
        for v in todo[-1]:
            if total > cap:
                return total
            if isinstance(v, (str, bytes)):
                total += len(v)
            elif isinstance(v, Namespace):
                todo.append(iter((v._Namespace__attrs,)))  # type: ignore[attr-defined]
                break
            elif isinstance(v, Mapping):
                total += 2 + 4 * len(v)
                todo.append(chain.from_iterable(v.items()))
                break
            elif isinstance(v, range):
                total += 32
            elif isinstance(v, Collection):
                total += 2 + 2 * len(v)
                todo.append(iter(v))
                break
            else:
                total += 8
        else:
            todo.pop()
    return total


# -- size estimates of the calls that can grow a string without bound ---------------------------

def _int(x: Any) -> int:
    return x if isinstance(x, int) else 0


def _w(x: Any) -> int:
    return weight(x, _current().limit)


def _replaced(s: str | bytes, old: Any, new: Any, count: Any = -1) -> int:
    if not isinstance(old, type(s)) or not isinstance(new, type(s)):
        return len(s)
    hits = len(s) + 1 if not old else s.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(s) + hits * max(len(new) - len(old), 0)


def _translated(s: str | bytes, table: Any = None, *_: Any) -> int:
    if isinstance(table, Mapping):
        return len(s) * max((_w(v) for v in table.values()), default=1)
    return len(s)


_STR_GROWERS = {   # method name -> (s, *args) -> size of the result
    "ljust": lambda s, w=0, *_: max(len(s), _int(w)),
    "rjust": lambda s, w=0, *_: max(len(s), _int(w)),
    "center": lambda s, w=0, *_: max(len(s), _int(w)),
    "zfill": lambda s, w=0, *_: max(len(s), _int(w)),
    "expandtabs": lambda s, n=8, *_: len(s) + s.count("\t" if isinstance(s, str) else b"\t") * max(_int(n), 0),
    "replace": _replaced,
    "translate": _translated,
}

_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")


def percent_size(fmt: str | bytes, args: Any, cap: int) -> int:
    """Longest result of fmt % args: widths and precisions, plus the arguments each spec may take."""
    text = fmt.decode("latin-1") if isinstance(fmt, bytes) else fmt
    specs = _PRINTF.findall(text)
    if any("*" in w + p for w, p in specs):
        raise SecurityError("'*' widths in % formatting are not allowed in a chat template")
    pad = sum(int(w or 0) + int(p or 0) for w, p in specs)
    if isinstance(args, tuple):
        taken = sum(weight(a, cap) for a in args)
    elif isinstance(args, Mapping):     # %(key)s may use a value many times
        taken = len(specs) * max((weight(v, cap) for v in args.values()), default=0)
    else:
        taken = weight(args, cap)
    return len(fmt) + pad + taken


# -- filters: each call is a step; arguments and result sized; the growers estimated first ------

def _lines(s: Any) -> int:
    return s.count("\n") + 1 if isinstance(s, str) else _w(s) + 1


_FILTER_GROWERS = {   # filter name -> size of the result, from the filter's own parameters (by keyword too)
    "center": lambda value, width=80: _w(value) + _int(width),
    "indent": lambda s, width=4, *a, **k: _w(s) + _lines(s) * (len(width) if isinstance(width, str)
                                                                else _int(width)),
    "format": lambda value, *args, **kwargs: percent_size(str(value), kwargs or args, _current().limit),
    "join": lambda value, d="", *a, **k: _w(value) + len(str(d)) * (len(value) if isinstance(value, Collection)
                                                                     else 0),
    "replace": lambda s, old, new, count=None: _replaced(str(s), str(old), str(new),
                                                         -1 if count is None else count),
    "wordwrap": lambda s, width=79, break_long_words=True, wrapstring=None, *a, **k: (
        (_w(s) + 1) * (1 + len(wrapstring or "\n"))),
    "batch": lambda value, linecount, fill_with=None: _w(value) + (
        0 if fill_with is None else _int(linecount) * (_w(fill_with) + 1)),
    "slice": lambda value, slices, fill_with=None: _w(value) + _int(slices) * (_w(fill_with) + 8),
    "urlize": lambda value, trim_url_limit=None, nofollow=False, target=None, rel=None, *a, **k: (
        (_w(value) + 1) * (64 + len(str(target or "")) + len(str(rel or "")))),   # per word: a link
}


def _bounded_filter(name: str, f: Any) -> Any:
    skip = 1 if hasattr(f, "jinja_pass_arg") else 0   # context/environment comes first

    @functools.wraps(f)   # keeps jinja_pass_arg
    def bounded(*args: Any, **kwargs: Any) -> Any:
        b = _current()
        b.step()
        if name == "join" and len(args) > skip and not isinstance(args[skip], Collection):
            args = (*args[:skip], list(args[skip]), *args[skip + 1:])   # sized before joined
        for a in chain(args[skip:], kwargs.values()):
            b.size(weight(a, b.limit))
        start = kwargs.get("start", args[skip + 2] if len(args) > skip + 2 else 0)
        if name == "sum" and not isinstance(start, (int, float)):   # sum(lists) is quadratic
            raise SecurityError("the sum filter only adds numbers in a chat template")
        grow = _FILTER_GROWERS.get(name)
        if grow is not None and len(args) > skip:
            b.size(grow(*args[skip:], **kwargs))
        rv = f(*args, **kwargs)
        b.size(weight(rv, b.limit))
        return rv
    return bounded


class _BoundedFormatter(SandboxedFormatter):
    """str.format / format_map: each field's width and the whole result are bounded."""

    def __init__(self, env: Any, escape: Any = None):
        super().__init__(env)
        self.escape, self.budget, self.written = escape, _current(), 0

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        self.budget.size(weight(value, self.budget.limit))   # !r of a huge list
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        b = self.budget
        b.step()
        b.size(max((int(d) for d in re.findall(r"\d+", format_spec)), default=0) + weight(value, b.limit))
        rv = super().format_field(self.escape(value) if self.escape else value, format_spec)
        self.written += len(rv)
        b.size(self.written)
        return rv


class _CodeGenerator(CodeGenerator):
    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:
        self.write("environment.bounded_concat(context, (")   # `a ~ b`: sized before joined
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


@pass_context
def _finalize(context: Any, value: Any) -> Any:
    b = _current()
    b.step()
    b.wrote(weight(value, b.limit))
    return value


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment with a Budget per render (see the module docstring); reaching
    for an unsafe attribute raises at once (the stock sandbox returns an Undefined that stays silent
    when printed). Render with render()."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})
    code_generator_class = _CodeGenerator

    def __init__(self, filters: Mapping[str, Any] = {}, globals: Mapping[str, Any] = {}, **options: Any):
        super().__init__(optimized=False, finalize=_finalize, **options)
        self.globals.pop("lipsum", None)   # lipsum(n) builds n paragraphs at once
        self.globals.update(globals)
        self.filters.update(filters)
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}

    def render(self, template: Any, variables: Mapping[str, Any]) -> str:
        """template (from self.from_string) with variables, within a fresh Budget."""
        budget = Budget(weight(list(variables.values()), 1 << 40))
        token = _budget.set(budget)
        try:
            out, n = [], 0
            for chunk in template.generate(**variables):
                n += len(chunk)
                budget.size(n)
                out.append(chunk)
            return "".join(out)
        finally:
            _budget.reset(token)

    # -- hooks the compiled template calls ------------------------------------------------------
    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for out in list(tree.find_all(nodes.Output)):   # literal text goes through finalize (counted) too
            out.nodes = [nodes.Const(n.data, lineno=n.lineno) if isinstance(n, nodes.TemplateData) else n
                         for n in out.nodes]
        for loop in list(tree.find_all(nodes.For)):      # each iteration is a step
            loop.iter = nodes.Call(nodes.EnvironmentAttribute("counted", lineno=loop.lineno), [loop.iter],
                                   [], None, None, lineno=loop.lineno)
        return tree

    def counted(self, iterable: Iterable[Any]) -> Iterator[Any]:
        b = _current()
        for item in iterable:
            b.step()
            yield item

    def bounded_concat(self, context: Any, parts: tuple[Any, ...]) -> str:
        b = _current()
        b.step()
        b.size(sum(weight(p, b.limit) for p in parts))
        return (markup_join if context.eval_ctx.autoescape else str_join)(parts)

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe")

    def wrap_str_format(self, value: Any) -> Any:
        owner = getattr(value, "__self__", None)
        if not isinstance(owner, str) or getattr(value, "__name__", None) not in ("format", "format_map"):
            return None
        formatter = _BoundedFormatter(self, owner.escape if isinstance(owner, Markup) else None)
        is_map = value.__name__ == "format_map"

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                args, kwargs = (), args[0]
            return type(owner)(formatter.vformat(owner, args, kwargs))
        return functools.update_wrapper(wrapper, value)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        b = _current()
        b.step()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, (str, bytes)):
            name = getattr(__obj, "__name__", "")
            if name == "join" and args:
                args = (list(args[0]), *args[1:])
                b.size(sum(weight(p, b.limit) for p in args[0]) + len(owner) * len(args[0]))
            elif name in _STR_GROWERS:
                b.size(_STR_GROWERS[name](owner, *args, *kwargs.values()))
        rv = super().call(__context, __obj, *args, **kwargs)
        b.size(weight(rv, b.limit))
        return rv

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        b = _current()
        b.step()
        ints = isinstance(left, int) and isinstance(right, int)
        if operator_ == "+":
            b.size(weight(left, b.limit) + weight(right, b.limit))
        elif operator_ == "*":
            if ints and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise SecurityError(f"the template built an integer of more than {MAX_INT_BITS} bits")
            seq, n = (left, right) if isinstance(right, int) else (right, left)
            if not ints and isinstance(n, int) and isinstance(seq, (str, bytes, list, tuple)):
                b.size(weight(seq, b.limit) * max(n, 0))
        elif operator_ == "**":
            if isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"exponent {right} is above {MAX_EXPONENT}")
            if ints and abs(left).bit_length() * max(right, 0) > MAX_INT_BITS:
                raise SecurityError(f"the template built an integer of more than {MAX_INT_BITS} bits")
        elif operator_ == "%" and isinstance(left, (str, bytes)):
            b.size(percent_size(left, right, b.limit))
        return {"+": operator.add, "*": operator.mul, "**": operator.pow, "%": operator.mod}[operator_](left, right)
