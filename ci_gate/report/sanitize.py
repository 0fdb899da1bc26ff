"""Text from a checkpoint, a pool or a path, made safe for each place ci-gate writes it.

Class names, provenance strings and paths are chosen by whoever delivered the checkpoint. Before
they reach a person they pass one of these functions:

- ``visible``: control characters (ANSI/OSC escape sequences start with one), bidirectional
  overrides, zero-width and other format characters become a visible ``\\xNN`` / ``\\uNNNN``
  form, so a name can neither drive a terminal nor look like something else. Every other
  function starts from it.
- ``terminal``: ``visible`` plus rich's markup escaping (``[bold]`` in a name stays text).
- ``markdown``: ``visible`` plus HTML and Markdown escaping, with ``@mentions``, bare links and
  ``#123`` references broken so a summary posted as a pull-request comment pings nobody and links
  nowhere the author chose, and ``$`` as an entity so no math (``$\\Huge{CLEAN}$``) renders.
- ``plain``: ``visible`` and a length limit, for SARIF message text and one-line logs.

``plain``, ``terminal`` and ``quoted`` also break GitHub Actions workflow commands
(:func:`log_safe`): the runner reads every line a step prints for ``::command::`` at its start
(after leading spaces; rich wraps long lines, so a name can start one) and for the legacy
``##[command]`` *anywhere* in it, so a class name ``##[add-mask]backdoor`` printed in the job log
would mask the verdict, ``##[error]...`` forge an annotation and ``##[set-output ...]`` a step output.

HTML goes through Jinja's autoescaping, with ``visible`` applied to every expression
(ci_gate/report/html.py).
"""

from __future__ import annotations

import html
import re
import unicodedata

# Past this a name is shown truncated (with its length), never dropped: reports stay readable and
# a 10,000-character name cannot push the verdict off the screen.
DISPLAY_LIMIT = 200

_ESCAPE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def _visible_char(ch: str) -> str:
    if ch == " " or unicodedata.category(ch) not in _ESCAPE_CATEGORIES:
        return ch
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(text: object, limit: int | None = None) -> str:
    """Every character that would act rather than show, in a visible escaped form."""
    s = str(text)
    if limit is not None and len(s) > limit:
        s = s[:limit] + f"… ({len(s)} characters)"
    # fast path: plain printable text (the usual case) is returned as is
    if s.isprintable():
        return s
    return "".join(_visible_char(ch) for ch in s)


# "##[" anywhere and "::" (a line may start there once wrapped) are workflow commands to the
# Actions runner; their second character is written as the visible escape visible() uses.
_WORKFLOW_COMMAND = re.compile(r"##\[|::")
_COMMAND_BREAK = {"##[": "#\\x23[", "::": ":\\x3a"}


def log_safe(text: str, *, unwrapped_line: bool = False) -> str:
    """``text`` with no GitHub Actions workflow command left in it (``##[...]``, ``::...::``).

    ``unwrapped_line``: ``text`` is a whole line printed as it is (never wrapped) that starts with
    ci-gate's own words, so no ``::`` in it can start a runner line; only ``##[`` is broken."""
    if unwrapped_line:
        return text.replace("##[", _COMMAND_BREAK["##["])
    return _WORKFLOW_COMMAND.sub(lambda m: _COMMAND_BREAK[m.group()], text)


def plain(text: object, limit: int = DISPLAY_LIMIT) -> str:
    return log_safe(visible(text, limit))


def terminal(text: object, limit: int | None = DISPLAY_LIMIT) -> str:
    """For rich's console.print: visible, no workflow command, and rich markup shown as text."""
    from rich.markup import escape as rich_escape

    return rich_escape(log_safe(visible(text, limit)))


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~#!<>()])")
# A zero-width space as an HTML entity: GitHub renders it invisibly but no longer sees an
# "@user" mention, a "#123" reference or a "scheme://" / "www." autolink (Renovate and
# Dependabot break mentions the same way).
_ZWSP = "&#8203;"
_BREAKS = (
    (re.compile(r"#(?=\w)"), "#" + _ZWSP),  # first: the others insert entities, which hold a '#'
    (re.compile(r"@"), "@" + _ZWSP),
    (re.compile(r"(?<=:)(?=//)"), _ZWSP),
    (re.compile(r"(?i)\b(www)\."), r"\1" + _ZWSP + "."),
    # GitHub renders $...$ and $$...$$ as math (\Huge, \color, \text: any text, any size) and,
    # by its own docs, a backslash does not stop a "$" outside math from opening it: an entity does
    (re.compile(r"\$"), "&#36;"),
)
_ENTITY = re.compile(r"(&#?\w+;)")


def _markdown_part(part: str) -> str:
    for pattern, repl in _BREAKS:
        part = pattern.sub(repl, part)
    # the breaks inserted entities; escape the Markdown specials around them, not inside them
    return "".join(p if _ENTITY.fullmatch(p) else _MD_SPECIAL.sub(r"\\\1", p) for p in _ENTITY.split(part))


def markdown(text: object, limit: int | None = DISPLAY_LIMIT) -> str:
    """Text for a Markdown paragraph or table cell: no markup, HTML, mention or link survives."""
    escaped = html.escape(visible(text, limit), quote=True)
    # html.escape produced entities (&lt;): leave them whole
    return "".join(p if _ENTITY.fullmatch(p) else _markdown_part(p) for p in _ENTITY.split(escaped))


def quoted(text: object, limit: int = DISPLAY_LIMIT) -> str:
    """A Python-style quoted name for one-line logs: repr() already writes every non-printable
    character (controls, bidi overrides) as an escape; only the length needs bounding."""
    s = str(text)
    return log_safe(repr(s if len(s) <= limit else s[:limit] + "…"))
