"""Sandboxed ``{{ name }}`` templating.

Content and subject are Jinja2 templates rendered in a sandbox that also refuses every attribute
and item access (``{{ user.__class__ }}``, ``{{ x['y'] }}``): variables are flat strings, so a
template needs nothing more than names, filters and literals.

Variables a template needs are found once per template with ``meta.find_undeclared_variables``;
acceptance checks them against each recipient's variable set without rendering anyone, and
rendering happens at dispatch time, once per distinct variable set.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

REDACTED = "******"
# No message needs more; a template that renders beyond it is refused rather than sent.
MAX_RENDERED_LENGTH = 1_000_000
# A template's own text (content, subject or HTML part). Gmail clips HTML mail past ~100 KB; this
# leaves room and keeps a tenant from parking megabytes in every log item and in the cache below.
MAX_TEMPLATE_LENGTH = 256 * 1024
_CACHED_UP_TO = 16 * 1024  # longer sources get a cache of their own, of few entries
MAX_TAGS = 300  # {{ ... }} and {% ... %}, together
MAX_TAG_CHARACTERS = 8_000  # their text, together
# What all the filters of one rendering may produce together. Escaping and URL-encoding grow a
# value several times over, and a chain of them (within MAX_CHAIN) grows it exponentially; with
# `length` at its end the output stays short, so the rendered-length check alone never stops it
# (14 such filters on a 100,000-character value: 44 s and 160 MB).
MAX_FILTER_WORK = 2_000_000
_filter_work: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("filter_work", default=None)
MAX_CHAIN = 16
MAX_CHAINS_TOTAL = 400  # an invoice with a |default on each of 300 fields is fine
# ``a ~ b`` builds its whole string before any length check sees it: with values of up to
# MAX_VARIABLE_LENGTH, this many operands keep that under 2 MB.
MAX_CONCAT_OPERANDS = 16
MAX_VARIABLE_LENGTH = 100_000  # characters of one variable's value (messages/schemas.py enforces it)
DEFAULT_SECRET_VARIABLES = ("code", "otp", "password")


class TemplateError(ValueError):
    """A template that cannot be compiled or rendered; ``message`` is safe to show the caller."""


# What a message template may contain: text, ``{{ name }}``, these filters, and if/else. No loops,
# calls, arithmetic or macros, so rendering cost is bounded by the template's own size.
_ALLOWED_NODES = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Name,
    nodes.Const,
    nodes.Filter,
    nodes.If,
    nodes.CondExpr,
    nodes.Compare,
    nodes.Operand,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.Concat,
)
_ALLOWED_FILTERS = frozenset(
    {
        "upper",
        "lower",
        "title",
        "capitalize",
        "trim",
        "default",
        "d",
        "e",
        "escape",
        "truncate",
        "striptags",
        "urlencode",
        "string",
        "length",
    }
)


def _check_allowed(ast: nodes.Template) -> None:
    for node in ast.find_all(nodes.Node):
        if not isinstance(node, _ALLOWED_NODES):
            raise TemplateError(
                f"{type(node).__name__.lower()} is not allowed in templates: "
                "use {{ name }} placeholders, filters and if-blocks"
            )
        if isinstance(node, nodes.Filter) and node.name not in _ALLOWED_FILTERS:
            raise TemplateError(f"filter {node.name!r} is not allowed in templates")


class _FlatSandbox(SandboxedEnvironment):
    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        return False

    def getitem(self, obj: Any, argument: Any) -> Any:
        raise SecurityError("item access is not allowed in templates")

    def getattr(self, obj: Any, attribute: str) -> Any:
        raise SecurityError("attribute access is not allowed in templates")


def _budgeted(original: Callable[..., Any]) -> Callable[..., Any]:
    """``original`` counting what it returns against the rendering's MAX_FILTER_WORK. (wraps
    keeps Jinja's pass_context / pass_environment marks, which live in the function's dict.)"""

    @functools.wraps(original)
    def counted(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        work = _filter_work.get()
        if work is not None and isinstance(out, str):
            work[0] += len(out)
            if work[0] > MAX_FILTER_WORK:
                raise TemplateError(
                    f"template's filters produce more than {MAX_FILTER_WORK} characters in one rendering"
                )
        return out

    return counted


def _environment(autoescape: bool) -> _FlatSandbox:
    env = _FlatSandbox(undefined=StrictUndefined, autoescape=autoescape, keep_trailing_newline=True)
    env.globals.clear()  # range, lipsum, dict, cycler...: nothing a message needs, and reprs leak
    for name in _ALLOWED_FILTERS:
        env.filters[name] = _budgeted(env.filters[name])
    return env


_text_env = _environment(autoescape=False)
_html_env = _environment(autoescape=True)


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
    source: str
    variables: frozenset[str]
    is_static: bool
    _template: Any
    # What a static template renders to: its text without comments or raw-block tags.
    static_text: str = ""

    def literal_text(self) -> str:
        """The template's own text, without what placeholders and blocks add."""
        if self._template is None:
            return self.source
        ast = _text_env.parse(self.source)
        return "".join(node.data for node in ast.find_all(nodes.TemplateData))

    def render(self, variables: Mapping[str, str]) -> str:
        if self.is_static:
            return self.static_text
        budget = _filter_work.set([0])
        try:
            # Streamed and measured as it grows: placeholders times a long value could otherwise
            # build gigabytes before the length check.
            parts: list[str] = []
            size = 0
            for part in self._template.generate(variables):
                size += len(part)
                if size > MAX_RENDERED_LENGTH:
                    raise TemplateError(f"rendered content is longer than {MAX_RENDERED_LENGTH} characters")
                parts.append(part)
            rendered = "".join(parts)
        except TemplateError:
            raise
        except UndefinedError as exc:
            raise TemplateError(f"missing variable: {exc.message}") from exc
        except SecurityError as exc:
            raise TemplateError(str(exc)) from exc
        except Exception as exc:  # a filter given a bad argument, etc.
            # Not the exception's text: it may quote a value (a secret's length, say) into the log.
            raise TemplateError(
                f"template could not be rendered: a filter or comparison failed ({type(exc).__name__})"
            ) from exc
        finally:
            _filter_work.reset(budget)
        return rendered


def compile_template(source: str, html: bool = False) -> CompiledTemplate:
    """The checked, compiled template; :class:`TemplateError` says why a source cannot be one."""
    if len(source) > MAX_TEMPLATE_LENGTH:
        raise TemplateError(f"template is longer than {MAX_TEMPLATE_LENGTH} characters")
    _check_tags(source)
    return _compile_cached(source, html) if len(source) <= _CACHED_UP_TO else _compile_large(source, html)


@functools.lru_cache(maxsize=1024)
def _compile_cached(source: str, html: bool) -> CompiledTemplate:
    return _compile(source, html)


@functools.lru_cache(maxsize=16)  # at most 16 x 256 KiB of sources held
def _compile_large(source: str, html: bool) -> CompiledTemplate:
    return _compile(source, html)


def _check_tags(source: str) -> None:
    """Bounds on what is costly to compile, checked before parsing: parsing and compiling cost
    ~150 us per placeholder (52,000 placeholders in 256 KiB: 3.5 s of the event loop, on every
    request that shows such a template), while plain text is nearly free. Measured on Jinja's own
    tokens (linear in the source, and it knows strings and comments: a quoted "}}" does not end a
    tag, a "{{" in a comment does not open one)."""
    tags = characters = chains = longest = 0
    chain = 0
    inside = False
    try:
        for _, kind, value in _text_env.lex(source):
            if kind in ("variable_begin", "block_begin"):
                tags, inside, chain = tags + 1, True, 0
            if inside:
                characters += len(value)
                # Filters and "not" nest the code Jinja generates: compiling costs grow with the
                # square of a chain's length (150 filters on one value: 2.8 s).
                if (kind == "operator" and value == "|") or (kind == "name" and value == "not"):
                    chain, chains = chain + 1, chains + 1
                    longest = max(longest, chain)
            if kind in ("variable_end", "block_end"):
                inside = False
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error on line {exc.lineno}: {exc.message}") from exc
    if tags > MAX_TAGS:
        raise TemplateError(f"template has more than {MAX_TAGS} placeholders and blocks")
    if characters > MAX_TAG_CHARACTERS:
        raise TemplateError(
            f"template's placeholders and blocks are longer than {MAX_TAG_CHARACTERS} characters"
        )
    if longest > MAX_CHAIN or chains > MAX_CHAINS_TOTAL:
        raise TemplateError(
            f"template chains too many filters or 'not's (at most {MAX_CHAIN} in one placeholder, "
            f"{MAX_CHAINS_TOTAL} in all)"
        )


def _check_shape(ast: nodes.Template) -> None:
    """The bounds of :func:`_check_tags` measured on the parsed template (parsing is cheap; the
    code generation after it is what grows with the square of a chain): a tag's text cannot hide
    a chain (``{{ "}}" ~ x|upper|...}}`` ends the regex early)."""
    chains = operands = 0
    stack: list[tuple[nodes.Node, int]] = [(ast, 0)]
    while stack:
        node, chain = stack.pop()
        if isinstance(node, (nodes.Filter, nodes.Not)):
            chain, chains = chain + 1, chains + 1
            if chain > MAX_CHAIN or chains > MAX_CHAINS_TOTAL:
                raise TemplateError(
                    f"template chains too many filters or 'not's (at most {MAX_CHAIN} in one "
                    f"placeholder, {MAX_CHAINS_TOTAL} in all)"
                )
        if isinstance(node, nodes.Concat):
            operands += len(node.nodes)
            if operands > MAX_CONCAT_OPERANDS:
                raise TemplateError(f"template joins more than {MAX_CONCAT_OPERANDS} values with ~")
        stack.extend((child, chain) for child in node.iter_child_nodes())


def _compile(source: str, html: bool) -> CompiledTemplate:
    env = _html_env if html else _text_env
    try:
        ast = env.parse(source)
        _check_allowed(ast)
        _check_shape(ast)
        template = env.from_string(ast)
        variables = frozenset(meta.find_undeclared_variables(ast))
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error on line {exc.lineno}: {exc.message}") from exc
    except (RecursionError, SyntaxError, MemoryError):
        # Blocks, parentheses or filter chains nested deeper than the parser (or Python's
        # compiler, for the code Jinja generates) can follow.
        raise TemplateError("template is nested too deeply") from None
    static = _is_static(ast)
    static_text = "".join(node.data for node in ast.find_all(nodes.TemplateData)) if static else ""
    return CompiledTemplate(
        source=source, variables=variables, is_static=static, _template=template, static_text=static_text
    )


def _is_static(ast: nodes.Template) -> bool:
    """True when the template is plain text, so rendering is the identity."""
    if len(ast.body) != 1 or not isinstance(ast.body[0], nodes.Output):
        return not ast.body
    return all(isinstance(node, nodes.TemplateData) for node in ast.body[0].nodes)


def redacted(variables: Mapping[str, str], secret_names: frozenset[str]) -> dict[str, str]:
    """The variables with every secret value replaced, for anything that is stored or shown."""
    return {k: (REDACTED if k in secret_names else v) for k, v in variables.items()}
