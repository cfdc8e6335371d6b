"""Prompt templates (as sh0416/llama-classification) and literal placeholder filling.

A record's ``prompt`` and ``completion`` keep the placeholders ``{text}`` and ``{label_word}``;
:func:`fill` replaces them in one pass, so braces inside user text are never interpreted (no
``str.format``) and a value that itself contains ``{label_word}`` is inserted verbatim.
"""

from __future__ import annotations

import re
from typing import Dict, List, Sequence, Tuple

# ag_news class names as the label words scored by the model (class 1..4 = label 0..3).
AG_NEWS_LABEL_WORDS: Tuple[str, ...] = ("World", "Sports", "Business", "Science and technology")

PLACEHOLDERS: Tuple[str, ...] = ("text", "label_word")

# Per method: (demonstration, prompt tail, completion).  Demonstrations are concatenated in front
# of the prompt tail.
TEMPLATES: Dict[str, Tuple[str, str, str]] = {
    "direct": ("Article: {text}\nCategory: {label_word}\n", "Article: {text}\nCategory:", "{label_word}"),
    "channel": ("Category: {label_word}\nArticle: {text}\n", "Category: {label_word}\nArticle:", "{text}"),
}

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


def build_prompt(method: str, demonstrations: Sequence[Tuple[str, str]]) -> Tuple[str, str]:
    """(prompt, completion) for ``method`` with the (text, label word) demonstrations filled in.

    The prompt keeps ``{text}`` (direct) or ``{label_word}`` (channel) for the test example.
    """
    if method not in TEMPLATES:
        raise KeyError(f"unknown template method {method!r}; use one of {sorted(TEMPLATES)}")
    demo, tail, completion = TEMPLATES[method]
    parts: List[str] = [fill(demo, text=text, label_word=word) for text, word in demonstrations]
    return "".join(parts) + tail, completion
