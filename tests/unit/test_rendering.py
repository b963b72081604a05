"""compile_template / CompiledTemplate.render / redacted: the sandboxed ``{{ name }}`` templating.

A template may contain text, ``{{ name }}`` placeholders, a fixed set of filters and if-blocks;
everything else (attribute or item access, loops, macros, calls, arithmetic, other filters) is
refused at compile time with a TemplateError whose message is safe to show the caller.
"""

from __future__ import annotations

import pytest

from comms.templates.rendering import (
    DEFAULT_SECRET_VARIABLES,
    REDACTED,
    CompiledTemplate,
    TemplateError,
    compile_template,
    redacted,
)

NOT_ALLOWED_HINT = "use {{ name }} placeholders, filters and if-blocks"


def render(source: str, html: bool = False, **variables: str) -> str:
    return compile_template(source, html).render(variables)


# --- placeholders and rendering ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "variables", "expected"),
    [
        ("Hello {{ name }}", {"name": "Ada"}, "Hello Ada"),
        ("Hello {{name}}!", {"name": "Ada"}, "Hello Ada!"),
        ("{{ a }}{{ b }}", {"a": "1", "b": "2"}, "12"),
        ("{{ a }} and {{ a }}", {"a": "x"}, "x and x"),
        ("Your code is {{ code }}.", {"code": "123456"}, "Your code is 123456."),
        ("你好 {{ name }}", {"name": "张三"}, "你好 张三"),
        ("{{ name }}", {"name": ""}, ""),
        # Extra variables are ignored.
        ("Hi {{ name }}", {"name": "Ada", "unused": "x"}, "Hi Ada"),
        # A value that looks like a template is inserted literally, never rendered again.
        ("Hi {{ name }}", {"name": "{{ secret }}"}, "Hi {{ secret }}"),
        # Trailing newlines are kept (keep_trailing_newline=True).
        ("Hi {{ name }}\n", {"name": "Ada"}, "Hi Ada\n"),
        # Concatenation with ~ and string literals.
        ("{{ first ~ ' ' ~ last }}", {"first": "Ada", "last": "Lovelace"}, "Ada Lovelace"),
        ("{{ 'literal' }}", {}, "literal"),
    ],
)
def test_placeholders_render_per_variable_set(source: str, variables: dict[str, str], expected: str) -> None:
    assert compile_template(source).render(variables) == expected


def test_one_template_renders_each_variable_set_independently() -> None:
    template = compile_template("Dear {{ name }}, your order {{ order }} shipped.")
    assert template.render({"name": "Ada", "order": "A1"}) == "Dear Ada, your order A1 shipped."
    assert template.render({"name": "Bob", "order": "B2"}) == "Dear Bob, your order B2 shipped."


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"vip": "yes", "name": "Ada"}, "Welcome back, Ada!"),
        ({"vip": "", "name": "Ada"}, "Hello Ada."),
    ],
)
def test_if_else_blocks(variables: dict[str, str], expected: str) -> None:
    source = "{% if vip %}Welcome back, {{ name }}!{% else %}Hello {{ name }}.{% endif %}"
    assert compile_template(source).render(variables) == expected


@pytest.mark.parametrize(
    ("lang", "expected"),
    [("zh", "你好"), ("de", "Hallo"), ("en", "Hello"), ("fr", "Hello")],
)
def test_if_elif_with_comparisons(lang: str, expected: str) -> None:
    source = "{% if lang == 'zh' %}你好{% elif lang == 'de' %}Hallo{% else %}Hello{% endif %}"
    assert render(source, lang=lang) == expected


@pytest.mark.parametrize(
    ("source", "variables", "expected"),
    [
        ("{{ 'yes' if a and b else 'no' }}", {"a": "1", "b": "1"}, "yes"),
        ("{{ 'yes' if a and b else 'no' }}", {"a": "1", "b": ""}, "no"),
        ("{{ 'yes' if a or b else 'no' }}", {"a": "", "b": "1"}, "yes"),
        ("{{ 'yes' if not a else 'no' }}", {"a": ""}, "yes"),
        ("{{ 'in' if 'x' in a else 'out' }}", {"a": "xyz"}, "in"),
        ("{{ 'ne' if a != 'x' else 'eq' }}", {"a": "x"}, "eq"),
    ],
)
def test_conditional_expressions_and_boolean_operators(
    source: str, variables: dict[str, str], expected: str
) -> None:
    assert compile_template(source).render(variables) == expected


# --- variables and is_static ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("plain text", set()),
        ("", set()),
        ("{{ name }}", {"name"}),
        ("{{ a }} {{ b }} {{ a }}", {"a", "b"}),
        ("{% if vip %}VIP{% endif %}", {"vip"}),
        ("{% if vip %}{{ name }}{% else %}{{ fallback }}{% endif %}", {"vip", "name", "fallback"}),
        ("{% if a %}x{% elif b %}{{ c }}{% endif %}", {"a", "b", "c"}),
        ("{{ name|upper }}", {"name"}),
        ("{{ name|default(nickname) }}", {"name", "nickname"}),
        ("{{ text|truncate(size) }}", {"text", "size"}),
        ("{{ 'y' if flag else 'n' }}", {"flag"}),
        ("{{ a ~ b }}", {"a", "b"}),
        ("{{ 'literal' }}", set()),
    ],
)
def test_variables_are_every_name_the_template_reads(source: str, expected: set[str]) -> None:
    compiled = compile_template(source)
    assert compiled.variables == frozenset(expected)
    assert isinstance(compiled.variables, frozenset)


@pytest.mark.parametrize(
    ("source", "static"),
    [
        ("Plain text, nothing to fill in.", True),
        ("", True),
        ("Multi\nline\ntext\n", True),
        ("Hello {{ name }}", False),
        ("{{ 'literal' }}", False),
        ("{% if a %}x{% endif %}", False),
        ("text {% if a %}x{% endif %} more", False),
    ],
)
def test_is_static(source: str, static: bool) -> None:
    assert compile_template(source).is_static is static


def test_static_template_renders_its_source_with_any_variables() -> None:
    source = "Our office is closed on Monday."
    compiled = compile_template(source)
    assert compiled.render({}) == source
    assert compiled.render({"name": "ignored"}) == source


# is_static short-cuts rendering to "return the source", which is only right when the Jinja
# rendering of the template *is* its source. Comments and raw blocks parse to nothing but text,
# so they are classed static and come out verbatim: a template author's internal comment is sent
# to every recipient, and a raw block keeps its {% raw %} tags.
@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("Hello {# internal note: promo B #}world", "Hello world"),
        ("{% raw %}Use {{ name }} in your templates{% endraw %}", "Use {{ name }} in your templates"),
    ],
    ids=["comment", "raw-block"],
)
def test_text_only_template_with_comment_or_raw_block_renders_like_jinja(source: str, expected: str) -> None:
    assert compile_template(source).render({}) == expected


def test_comment_next_to_a_placeholder_is_dropped() -> None:
    # With a placeholder the template is not static, so Jinja renders it and drops the comment.
    assert render("Hi {{ name }}{# note #}!", name="Ada") == "Hi Ada!"


# --- forbidden constructs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "node"),
    [
        ("{{ a.b }}", "getattr"),
        ("{{ a.__class__ }}", "getattr"),
        ("{{ a.__class__.__mro__ }}", "getattr"),
        ("{{ a['b'] }}", "getitem"),
        ("{{ a[0] }}", "getitem"),
        ("{{ a[1:] }}", "getitem"),
        ("{% for x in items %}{{ x }}{% endfor %}", "for"),
        ("{% macro m() %}x{% endmacro %}", "macro"),
        ("{{ f() }}", "call"),
        ("{{ range(10) }}", "call"),
        ("{{ lipsum() }}", "call"),
        ("{{ 2**100 }}", "pow"),
        ("{{ 'a' * 10 }}", "mul"),
        ("{{ 1 + 1 }}", "add"),
        ("{{ 5 - 1 }}", "sub"),
        ("{{ 9 / 3 }}", "div"),
        ("{{ 9 // 2 }}", "floordiv"),
        ("{{ 9 % 2 }}", "mod"),
        ("{{ -1 }}", "neg"),
        ("{% set x = 1 %}", "assign"),
        ("{% set x %}y{% endset %}", "assignblock"),
        ("{% include 'other' %}", "include"),
        ("{% extends 'base' %}", "extends"),
        ("{% import 'lib' as lib %}", "import"),
        ("{% filter upper %}x{% endfilter %}", "filterblock"),
        ("{% with x = 1 %}{{ x }}{% endwith %}", "with"),
        ("{{ [1, 2] }}", "list"),
        ("{{ {'a': 1} }}", "dict"),
        ("{{ (1, 2) }}", "tuple"),
        ("{{ a is defined }}", "test"),
        ("{% block b %}x{% endblock %}", "block"),
        # A filter with a keyword argument: the Keyword node is not in the allowed set.
        ("{{ a|truncate(length=5) }}", "keyword"),
    ],
)
def test_forbidden_constructs_are_refused_at_compile_time(source: str, node: str) -> None:
    with pytest.raises(TemplateError) as excinfo:
        compile_template(source)
    message = str(excinfo.value)
    assert message.startswith(f"{node} is not allowed in templates")
    assert NOT_ALLOWED_HINT in message


def test_forbidden_construct_is_found_inside_an_if_block() -> None:
    with pytest.raises(TemplateError, match="getattr is not allowed"):
        compile_template("{% if vip %}{{ user.name }}{% endif %}")


def test_forbidden_constructs_are_refused_in_html_templates_too() -> None:
    with pytest.raises(TemplateError, match="getattr is not allowed"):
        compile_template("<p>{{ a.__class__ }}</p>", html=True)


@pytest.mark.parametrize(
    "name",
    ["center", "format", "attr", "map", "safe", "join", "list", "wordwrap", "indent", "nosuch", "replace"],
)
def test_disallowed_filters_are_refused_by_name(name: str) -> None:
    with pytest.raises(TemplateError) as excinfo:
        compile_template("{{ a|" + name + " }}")
    assert str(excinfo.value) == f"filter {name!r} is not allowed in templates"


@pytest.mark.parametrize(
    "source",
    [
        "{{ a|center(1000000) }}",
        "{{ '%s'|format(a) }}",
        "{{ a|attr('__class__') }}",
        "{{ a|map('upper') }}",
        "{{ a|upper|center(9) }}",  # an allowed filter does not launder the next one
        "{% if a|center(9) %}x{% endif %}",
    ],
)
def test_disallowed_filters_are_refused_with_arguments_and_in_chains(source: str) -> None:
    with pytest.raises(TemplateError, match=r"filter '\w+' is not allowed in templates"):
        compile_template(source)


# Rendering cost is meant to be bounded by the template's own size, but ``replace`` with an empty
# ``old`` inserts ``new`` between every character, so each link of a chain multiplies the output:
# five links of a 10-character literal (a 148-character template) render 1.77 MB, and every further
# link multiplies that by 11 (ten links: ~2.6e11 characters, enough to exhaust the dispatcher's memory).
def test_replace_chain_cannot_amplify_output_beyond_template_size() -> None:
    link = "|replace('', 'xxxxxxxxxx')"
    source = "{{ 'xxxxxxxxxx'" + link * 5 + " }}"
    try:
        output = compile_template(source).render({})
    except TemplateError:
        return  # refusing it is an acceptable fix
    assert len(output) <= 100 * len(source)


# --- allowed filters -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "variables", "expected"),
    [
        ("{{ a|upper }}", {"a": "ada"}, "ADA"),
        ("{{ a|lower }}", {"a": "ADA"}, "ada"),
        ("{{ a|title }}", {"a": "ada lovelace"}, "Ada Lovelace"),
        ("{{ a|capitalize }}", {"a": "aDA"}, "Ada"),
        ("[{{ a|trim }}]", {"a": "  ada  "}, "[ada]"),
        ("{{ a|default('friend') }}", {"a": "Ada"}, "Ada"),
        ("{{ a|default('friend', true) }}", {"a": ""}, "friend"),
        ("{{ a|d('friend', true) }}", {"a": ""}, "friend"),
        # truncate cuts at a word boundary, leaving room for the "..." (and allows 5 chars of leeway).
        ("{{ a|truncate(11) }}", {"a": "hello wonderful world"}, "hello..."),
        ("{{ a|truncate(11) }}", {"a": "hello world, hi"}, "hello world, hi"),
        ("{{ a|truncate(9, true, '…') }}", {"a": "abcdefghijklmnop"}, "abcdefgh…"),
        ("{{ a|truncate(50) }}", {"a": "short"}, "short"),
        ("{{ a|striptags }}", {"a": "<b>bold</b> text"}, "bold text"),
        ("{{ a|urlencode }}", {"a": "a b&c"}, "a%20b%26c"),
        ("{{ a|length }}", {"a": "12345"}, "5"),
        ("{{ a|string }}", {"a": "x"}, "x"),
        ("{{ a|e }}", {"a": "<b>"}, "&lt;b&gt;"),
        ("{{ a|escape }}", {"a": "a & b"}, "a &amp; b"),
        ("{{ a|trim|upper|truncate(11) }}", {"a": "  hello wonderful world  "}, "HELLO..."),
    ],
)
def test_allowed_filters_work(source: str, variables: dict[str, str], expected: str) -> None:
    assert compile_template(source).render(variables) == expected


def test_default_filter_covers_a_missing_variable() -> None:
    # default() is the one way to make a variable optional under StrictUndefined.
    assert compile_template("Hi {{ name|default('there') }}").render({}) == "Hi there"


def test_filter_given_a_bad_argument_raises_template_error_at_render() -> None:
    compiled = compile_template("{{ a|truncate('x') }}")
    with pytest.raises(TemplateError, match="template could not be rendered"):
        compiled.render({"a": "hello"})
    # The error names no value: a secret given as a filter's argument must not show its length.
    leaky = compile_template("{{ x|truncate(1, false, code) }}")
    with pytest.raises(TemplateError) as raised:
        leaky.render({"x": "hello", "code": "12345678"})
    assert "8" not in str(raised.value) and "12345678" not in str(raised.value)


# --- syntax errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "line"),
    [
        ("{{ name }", 1),
        ("{{ }}", 1),
        ("Hello\n{% if a %}x{% endfor %}", 2),
        ("one\ntwo\n{% if %}x{% endif %}", 3),
        ("{% endif %}", 1),
        ("line 1\nline 2\nline 3\n{{ a | }}", 4),
    ],
)
def test_syntax_errors_name_the_line(source: str, line: int) -> None:
    with pytest.raises(TemplateError, match=rf"^template syntax error on line {line}: \S"):
        compile_template(source)


def test_template_error_is_a_value_error_and_chains_the_cause() -> None:
    with pytest.raises(ValueError) as excinfo:
        compile_template("{{ name }")
    assert isinstance(excinfo.value, TemplateError)
    assert excinfo.value.__cause__ is not None


# --- missing variables ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "variables", "missing"),
    [
        ("Hello {{ name }}", {}, "name"),
        ("{{ a }} {{ b }}", {"a": "1"}, "b"),
        ("{% if vip %}x{% endif %}", {}, "vip"),
        ("{{ name|upper }}", {}, "name"),
        ("{{ 'y' if flag else 'n' }}", {}, "flag"),
        ("{% if vip %}{{ name }}{% endif %}", {"vip": "1"}, "name"),
    ],
)
def test_missing_variable_raises_template_error(source: str, variables: dict[str, str], missing: str) -> None:
    with pytest.raises(TemplateError, match=rf"^missing variable: '{missing}' is undefined"):
        compile_template(source).render(variables)


def test_variable_only_read_in_the_branch_not_taken_need_not_be_given() -> None:
    compiled = compile_template("{% if vip %}{{ name }}{% else %}Hello{% endif %}")
    assert compiled.variables == {"vip", "name"}
    assert compiled.render({"vip": ""}) == "Hello"


# --- html vs text --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
        ("Tom & Jerry", "Tom &amp; Jerry"),
        ('say "hi"', "say &#34;hi&#34;"),
        ("it's", "it&#39;s"),
    ],
)
def test_html_environment_autoescapes_and_text_does_not(value: str, escaped: str) -> None:
    assert render("<p>{{ v }}</p>", html=True, v=value) == f"<p>{escaped}</p>"
    assert render("{{ v }}", html=False, v=value) == value


def test_html_autoescape_does_not_double_escape_with_e_filter() -> None:
    assert render("{{ v|e }}", html=True, v="<b>") == "&lt;b&gt;"


def test_html_template_markup_itself_is_not_escaped() -> None:
    assert render("<b>Hi</b> {{ name }}", html=True, name="Ada") == "<b>Hi</b> Ada"
    assert render("<b>Static</b>", html=True) == "<b>Static</b>"


def test_safe_filter_cannot_switch_off_html_escaping() -> None:
    with pytest.raises(TemplateError, match="filter 'safe' is not allowed"):
        compile_template("{{ v|safe }}", html=True)


def test_html_and_text_compilations_are_distinct() -> None:
    text = compile_template("{{ v }}")
    html = compile_template("{{ v }}", True)
    assert text is not html
    assert text.render({"v": "<i>"}) == "<i>"
    assert html.render({"v": "<i>"}) == "&lt;i&gt;"


# --- redacted ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "secrets", "expected"),
    [
        ({"name": "Ada", "code": "123456"}, {"code"}, {"name": "Ada", "code": REDACTED}),
        ({"name": "Ada", "code": "1"}, set(), {"name": "Ada", "code": "1"}),
        ({"otp": "1", "password": "p"}, {"otp", "password"}, {"otp": REDACTED, "password": REDACTED}),
        ({"name": "Ada"}, {"code"}, {"name": "Ada"}),  # a secret name absent from the variables
        ({}, {"code"}, {}),
        ({"Code": "1"}, {"code"}, {"Code": "1"}),  # names match exactly
        ({"pin": ""}, {"pin"}, {"pin": REDACTED}),  # even an empty secret is masked
    ],
)
def test_redacted_replaces_only_secret_names(
    variables: dict[str, str], secrets: set[str], expected: dict[str, str]
) -> None:
    assert redacted(variables, frozenset(secrets)) == expected


def test_redacted_returns_a_new_dict_and_leaves_the_input_alone() -> None:
    variables = {"name": "Ada", "code": "123456"}
    result = redacted(variables, frozenset({"code"}))
    assert result is not variables
    assert variables == {"name": "Ada", "code": "123456"}


def test_redacted_with_the_default_secret_names() -> None:
    variables = {"code": "1", "otp": "2", "password": "3", "name": "Ada"}
    assert redacted(variables, frozenset(DEFAULT_SECRET_VARIABLES)) == {
        "code": REDACTED,
        "otp": REDACTED,
        "password": REDACTED,
        "name": "Ada",
    }
    assert REDACTED == "******"


# --- cache ---------------------------------------------------------------------------------------


def test_compile_cache_returns_the_same_object_for_the_same_source() -> None:
    source = "Cached {{ thing }} (test_rendering)"
    first = compile_template(source)
    assert isinstance(first, CompiledTemplate)
    assert compile_template(source) is first
    assert compile_template(source, True) is compile_template(source, True)
    assert compile_template(source + " ") is not first


def test_compiled_template_is_immutable() -> None:
    compiled = compile_template("{{ a }}")
    with pytest.raises(AttributeError):
        compiled.source = "other"  # type: ignore[misc]


def test_a_chain_hidden_behind_a_quoted_closing_brace_is_measured_on_the_parsed_template(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``"}}"`` in a string ends the tag regex early: the chain is counted on the parsed template,
    and refused before the code generation that costs seconds for it (4 s for this one)."""
    from comms.templates import rendering

    def never(*_: object, **__: object) -> None:
        raise AssertionError("compiled before it was refused")

    monkeypatch.setattr(rendering._text_env, "from_string", never)
    with pytest.raises(TemplateError, match="chains too many filters"):
        compile_template('{{ "}}" ~ x' + "|upper" * 195 + " }}")


def test_joins_are_bounded_so_no_huge_string_is_built() -> None:
    """``a ~ a ~ ...`` builds its whole string before the rendered-length check sees it: a few
    joins are fine, many are refused (values are bounded at acceptance)."""
    assert compile_template('{{ first ~ " " ~ last }}').render({"first": "Ann", "last": "Lee"}) == "Ann Lee"
    with pytest.raises(TemplateError, match="joins more than"):
        compile_template("{{ " + " ~ ".join(["a"] * 40) + " }}")


def test_the_tag_bounds_are_measured_in_linear_time_on_jinjas_own_tokens() -> None:
    """A flood of "{{" with no closer (here inside a comment) is counted in one pass: the regex
    it replaced took 13.5 s for 64 KiB. A quoted "}}" no longer ends a tag early, so a tag's text
    cannot hide past the character bound."""
    flood = "Hello {{ name }} {# " + "{{" * 100_000 + " #}"  # ~10 ms now; minutes with the regex
    assert compile_template(flood).render({"name": "Ann"}) == "Hello Ann "
    hidden = '{{ "}}" ~ (' + " == ".join(["a"] * 4000) + ") }}"
    with pytest.raises(TemplateError, match="placeholders and blocks are longer than"):
        compile_template(hidden)
    with pytest.raises(TemplateError, match="syntax error"):
        compile_template("Hi {{ name ")


def test_filters_share_a_work_budget_per_rendering() -> None:
    """Escaping and URL-encoding grow a value several times; chained (within the chain bound) and
    ended with `length`, the output stays short while the work grows exponentially. The filters of
    one rendering may produce MAX_FILTER_WORK characters in all."""
    from comms.templates.rendering import MAX_FILTER_WORK

    chain = compile_template("{{ x" + "|e|urlencode" * 7 + "|length }}" * 25)
    with pytest.raises(TemplateError, match=f"more than {MAX_FILTER_WORK} characters"):
        chain.render({"x": '"' * 100_000})
    # the budget is per rendering, not per template or process
    small = compile_template("{{ x|e|urlencode|length }}")
    for _ in range(50):
        assert small.render({"x": '"' * 10_000}) == str(len("%26%2334%3B") * 10_000)


def test_jinjas_globals_are_not_readable() -> None:
    for name in ("range", "lipsum", "dict", "cycler", "joiner", "namespace"):
        with pytest.raises(TemplateError, match="missing variable"):
            compile_template("{{ " + name + " }}").render({})
