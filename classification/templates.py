"""Prompt templates (as sh0416/llama-classification) and literal placeholder filling.

A record's ``prompt`` and ``completion`` keep the placeholders ``{text}`` and ``{label_word}``;
:func:`fill` replaces them in one pass, so braces inside user text are never interpreted (no
``str.format``) and a value that itself contains ``{label_word}`` is inserted verbatim.

Any dataset describes one example with a single *template* holding both placeholders, e.g.
``"Review: {text}\nSentiment: {label_word}"`` (direct: the label word comes last) or
``"Sentiment: {label_word}\nReview: {text}"`` (channel: the text comes last).
:func:`parse_template` splits it where the scored part starts: the prompt tail ends before it
(trailing spaces dropped; the scorer joins prompt and completion with one space) and the
completion is the scored placeholder plus whatever follows it.  A demonstration is
``tail + " " + completion`` filled in, followed by :data:`DEMO_SEPARATOR`.
"""

from __future__ import annotations

import re
from typing import Dict, Sequence, Tuple

from classification.errors import ClassificationError

# ag_news class names as the label words scored by the model (class 1..4 = label 0..3).
AG_NEWS_LABEL_WORDS: Tuple[str, ...] = ("World", "Sports", "Business", "Science and technology")

PLACEHOLDERS: Tuple[str, ...] = ("text", "label_word")

_PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


def fill(template: str, **values: str) -> str:
    """Replace ``{name}`` for each given name, literally and in a single left-to-right pass.

    Placeholders whose name is not given are left as they are; replaced values are never
    scanned again.  ``fill("A {text} B", text="{label_word}")`` is ``"A {label_word} B"``.
    """
    unknown = set(values) - set(PLACEHOLDERS)
    if unknown:
        raise KeyError(f"unknown placeholder(s) {sorted(unknown)}; known: {list(PLACEHOLDERS)}")

    def replace(match: "re.Match[str]") -> str:
        name = match.group(1)
        return values[name] if name in values else match.group(0)

    return _PLACEHOLDER_RE.sub(replace, template)


def has_placeholder(s: str) -> bool:
    """Whether ``s`` contains ``{text}`` or ``{label_word}`` literally."""
    return _PLACEHOLDER_RE.search(s) is not None


DEMO_SEPARATOR = "\n"
# The placeholder each method scores (it ends the prompt tail and starts the completion).
SCORED_PLACEHOLDER: Dict[str, str] = {"direct": "label_word", "channel": "text"}


def parse_template(template: str, method: str) -> Tuple[str, str, str]:
    """(demonstration, prompt tail, completion) of a one-example ``template`` for ``method``.

    ``parse_template("Article: {text}\nCategory: {label_word}", "direct")`` gives
    ``TEMPLATES["direct"]``.  Raises :class:`ClassificationError` (one line) for a template
    without exactly one ``{text}`` and one ``{label_word}``, or with them in the wrong order.
    """
    if method not in SCORED_PLACEHOLDER:
        raise ClassificationError(f"unknown method {method!r} for a template; use one of {sorted(SCORED_PLACEHOLDER)}")
    if not isinstance(template, str):
        raise ClassificationError(f"--template must be a string, got {type(template).__name__}")
    shown = template.replace("\n", "\\n")
    for name in PLACEHOLDERS:
        count = template.count("{" + name + "}")
        if count != 1:
            raise ClassificationError(
                f"template {shown!r} has {count} {{{name}}}; it needs exactly one {{text}} and one {{label_word}}"
            )
    scored = SCORED_PLACEHOLDER[method]
    other = "text" if scored == "label_word" else "label_word"
    at = template.index("{" + scored + "}")
    if template.index("{" + other + "}") > at:
        raise ClassificationError(
            f"a {method} template puts {{{other}}} before {{{scored}}} (the scored part comes last), got {shown!r}"
        )
    tail = template[:at].rstrip(" ")
    completion = template[at:]
    return tail + " " + completion + DEMO_SEPARATOR, tail, completion


def build_prompt_from_template(
    template: str, method: str, demonstrations: Sequence[Tuple[str, str]], instruction: str = ""
) -> Tuple[str, str]:
    """(prompt, completion): ``instruction`` + filled demonstrations + the template's prompt tail."""
    demo, tail, completion = parse_template(template, method)
    parts = [fill(demo, text=text, label_word=word) for text, word in demonstrations]
    return instruction + "".join(parts) + tail, completion


def unescape_cli(template: str) -> str:
    """A template typed on a command line: the two characters ``\\n`` (``\\t``) become a newline (tab)."""
    return template.replace("\\n", "\n").replace("\\t", "\t")
