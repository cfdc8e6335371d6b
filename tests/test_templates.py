import pytest

from classification.templates import AG_NEWS_LABEL_WORDS, build_prompt_from_template, fill, has_placeholder

DIRECT = "Article: {text}\nCategory: {label_word}"
CHANNEL = "Category: {label_word}\nArticle: {text}"


def test_fill_replaces_literally_and_keeps_braces_in_values():
    assert fill("Article: {text}\nCategory:", text="a {b} {0} }{") == "Article: a {b} {0} }{\nCategory:"
    assert fill("{text} / {label_word}", text="x", label_word="World") == "x / World"


def test_fill_is_one_pass():
    # A value containing a placeholder is inserted verbatim, never filled again.
    assert fill("{text}|{label_word}", text="{label_word}", label_word="Sports") == "{label_word}|Sports"
    assert fill("{label_word} {text}", label_word="{text}", text="T") == "{text} T"


def test_fill_leaves_missing_names_and_rejects_unknown():
    assert fill("{text} {label_word} {other}", text="t") == "t {label_word} {other}"
    with pytest.raises(KeyError):
        fill("{text}", txt="t")


def test_has_placeholder():
    assert has_placeholder("a {text} b") and has_placeholder("{label_word}")
    assert not has_placeholder("{ text } {label} {} {Text}")


def test_direct_prompt_matches_original_format():
    prompt, completion = build_prompt_from_template(DIRECT, "direct", [("t1", "Sports"), ("t {2}", "World")])
    assert prompt == "Article: t1\nCategory: Sports\nArticle: t {2}\nCategory: World\nArticle: {text}\nCategory:"
    assert completion == "{label_word}"


def test_channel_prompt_matches_original_format():
    prompt, completion = build_prompt_from_template(CHANNEL, "channel", [("t1", "Business")])
    assert prompt == "Category: Business\nArticle: t1\nCategory: {label_word}\nArticle:"
    assert completion == "{text}"


def test_zero_shot_and_label_words():
    assert build_prompt_from_template(DIRECT, "direct", []) == ("Article: {text}\nCategory:", "{label_word}")
    assert AG_NEWS_LABEL_WORDS == ("World", "Sports", "Business", "Science and technology")
