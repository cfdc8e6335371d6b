import math

import pytest

from classification import methods
from classification.inputs.ag_news import build_records
from classification.errors import ClassificationError
from classification_fakes import FakeLM, synthetic_splits

WORDS = ["World", "Sports", "Business", "Science and technology"]


def records(method, **kw):
    train, test = synthetic_splits()
    return build_records(method, train, test, k=1, seed=5, sample=False, **kw)


class ScriptedLM(FakeLM):
    """Returns scripted log-probs per continuation (label word) for the content-free tests."""

    def __init__(self, table, **kw):
        super().__init__(**kw)
        self.table = table

    def score(self, context, continuation):
        text = context.split("Article: ")[-1].split("\n")[0]
        return self.table[text][continuation.strip()]


def test_softmax_argmax():
    assert methods.softmax([0.0, math.log(3.0)]) == pytest.approx([0.25, 0.75])
    assert methods.softmax([1000.0, 1000.0]) == pytest.approx([0.5, 0.5])
    assert methods.argmax([1.0, 3.0, 3.0]) == 1


def test_requests_use_one_joining_space_and_completion_end():
    rec = {"prompt": "P {text}:", "completion": "{label_word}", "text": "a {label_word} b"}
    assert methods.request(rec, rec["text"], "World") == ("P a {label_word} b:", " World")
    assert methods.request(rec, "t", "World", methods.completion_suffix("newline")) == ("P t:", " World\n")
    assert methods.completion_suffix("eos") == methods.completion_suffix("none") == ""
    with pytest.raises(ClassificationError, match="--completion_end"):
        methods.completion_suffix("EOS")


def test_direct_scores_every_label_in_one_call():
    lm = FakeLM()
    recs = records("direct")
    results = methods.direct(lm, recs)
    assert lm.calls == 1 and len(lm.batches[0]) == 4 * len(recs)
    ctx, cont = lm.batches[0][1]
    assert ctx.endswith("Article: " + recs[0]["text"] + "\nCategory:") and cont == " Sports"
    assert [r["prediction"] for r in results] == [r["ground_truth"] for r in recs]
    r0 = results[0]
    assert len(r0["log_probs"]) == 4 and r0["shortened"] is False
    assert r0["log_probs"] == [lm.score(*lm.batches[0][i]) for i in range(4)]


def test_channel_scores_text_given_each_label():
    lm = FakeLM(append_eos=False)
    recs = records("channel")
    results = methods.channel(lm, recs, completion_end="newline")
    ctx, cont = lm.batches[0][2]
    assert ctx.endswith("Category: Business\nArticle:") and cont == " " + recs[0]["text"] + "\n"
    assert [r["prediction"] for r in results] == [r["ground_truth"] for r in recs]


def test_calibration_math_by_hand():
    p_cf = [0.5, 0.25, 0.25]
    log_probs = [math.log(0.5), math.log(0.3), math.log(0.2)]
    # (0.5/0.5, 0.3/0.25, 0.2/0.25) = (1, 1.2, 0.8) -> / 3
    assert methods.calibrate_log_probs(log_probs, p_cf) == pytest.approx([math.log(1 / 3), math.log(0.4), math.log(0.8 / 3)])
    # Unnormalised log-probs give the same answer (softmax first).
    shifted = [x - 7.0 for x in log_probs]
    assert methods.calibrate_log_probs(shifted, p_cf) == pytest.approx(methods.calibrate_log_probs(log_probs, p_cf))
    out = methods.calibrate([log_probs], ["A", "B", "C"], p_cf)
    assert out[0]["prediction"] == "B"  # direct argmax was A: calibration flips it


def test_content_free_probs_average_over_texts():
    table = {
        "N/A": {"World": math.log(0.6), "Sports": math.log(0.2), "Business": math.log(0.1), "Science and technology": math.log(0.1)},
        "": {"World": math.log(0.2), "Sports": math.log(0.2), "Business": math.log(0.3), "Science and technology": math.log(0.3)},
    }
    lm = ScriptedLM(table)
    rec = records("direct")[0]
    assert methods.content_free_probs(lm, rec, ["N/A"]) == pytest.approx([0.6, 0.2, 0.1, 0.1])
    assert methods.content_free_probs(lm, rec, ["N/A", ""]) == pytest.approx([0.4, 0.2, 0.2, 0.2])
    assert lm.batches[-1][0] == (methods.fill(rec["prompt"], text="N/A"), " World")
    with pytest.raises(ClassificationError):
        methods.content_free_probs(lm, rec, [])


@pytest.mark.parametrize(
    "generation, expected, ignoring_case",
    [
        (" Sports", "Sports", "Sports"),
        ("sports news", "none", "Sports"),  # exact case by default
        ("  SCIENCE AND TECHNOLOGY!", "none", "Science and technology"),
        ("Science and technology!", "Science and technology", "Science and technology"),
        ("Science", "none", "none"),
        ("Worldwide", "none", "none"),
        ("The world", "none", "none"),
        ("", "none", "none"),
    ],
)
def test_parse_generation(generation, expected, ignoring_case):
    assert methods.parse_generation(generation, WORDS) == expected
    assert methods.parse_generation(generation, WORDS, ignore_case=True) == ignoring_case


def test_generate_matches_label_words_with_their_case():
    """With label words us and US, a generated "US" is US, never us; matching that cannot tell
    two label words apart is refused in one line."""
    words = ["us", "US", "them"]
    assert methods.parse_generation("US", words) == "US" and methods.parse_generation(" us.", words) == "us"
    assert methods.parse_generation("Us", words) == "none"
    rec = {"prompt": "Q: {text}\nA:", "completion": "{label_word}", "text": "who", "label_words": words,
           "ground_truth": "US", "index": 0}
    (r,) = methods.generate(FakeLM(generator=lambda c: " US"), [rec])
    assert r["prediction"] == "US"
    with pytest.raises(ClassificationError) as e:
        methods.generate(FakeLM(generator=lambda c: " US"), [rec], ignore_case=True)
    assert str(e.value).startswith("label words 'us' and 'US' are the same under case-insensitive matching")
    with pytest.raises(ClassificationError, match="'us' and ' us' are the same under matching"):
        methods.check_label_matching(["us", " us"])


def test_parse_generation_prefers_longest_match():
    assert methods.parse_generation("Science fiction", ["Science", "Science fiction"]) == "Science fiction"


def test_generate_fills_text_and_parses():
    lm = FakeLM()
    recs = records("direct")
    results = methods.generate(lm, recs, max_gen_len=5)
    assert lm.contexts[0] == recs[0]["prompt"].replace("{text}", recs[0]["text"])
    assert all("{text}" not in c for c in lm.contexts)
    assert results[0]["generation"] == " " + recs[0]["ground_truth"].split()[0] + " news"
    # The fake says "Science news", which is no label word: "none" for that class only.
    expected = [r["ground_truth"] if r["ground_truth"] != WORDS[3] else "none" for r in recs]
    assert [r["prediction"] for r in results] == expected
    assert all(r["log_probs"] is None for r in results)


def test_generate_none_prediction():
    lm = FakeLM(generator=lambda c: "no idea")
    (r,) = methods.generate(lm, records("direct")[:1])
    assert r["prediction"] == "none" and r["generation"] == "no idea"


def prompt_tokens(lm, rec, text):
    return len(lm.tokenizer.encode(methods.fill(rec["prompt"], text=text), bos=True, eos=False))


def test_long_text_is_shortened_to_fit_and_demos_kept():
    rec = dict(records("direct")[0])
    rec["text"] = " ".join(f"tok{i}" for i in range(50)) + " sports"
    probe = FakeLM()
    base = prompt_tokens(probe, rec, "")  # demonstrations + template, no text
    limit = base + 3 + 1 + 9  # " Science and technology" (3 tokens) + EOS + room for 9 text tokens
    lm = FakeLM(max_seq_len=limit)
    (result,) = methods.direct(lm, [rec])
    assert result["shortened"] is True
    longest = max(len(lm.tokenizer.encode(c + x, bos=True, eos=False)) + 1 for c, x in lm.batches[0])
    assert longest == limit
    ctx = lm.batches[0][0][0]
    assert ctx.startswith(rec["prompt"].split("{text}")[0])  # demonstrations untouched
    assert "Article: tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 tok8\n" in ctx  # 9 text tokens kept


def test_short_text_untouched_and_generate_leaves_room():
    rec = dict(records("direct")[0])
    lm = FakeLM(max_seq_len=prompt_tokens(FakeLM(), rec, rec["text"]) + 4)
    (r,) = methods.generate(lm, [rec], max_gen_len=4)
    assert r["shortened"] is False
    (r,) = methods.generate(lm, [rec], max_gen_len=6)
    assert r["shortened"] is True
    assert prompt_tokens(lm, rec, lm.contexts[-1].split("Article: ")[-1].split("\n")[0]) <= lm.max_seq_len


def test_error_when_demonstrations_alone_do_not_fit():
    rec = records("channel")[0]
    lm = FakeLM(max_seq_len=10)
    with pytest.raises(ClassificationError, match=r"even with the test text removed.*--k"):
        methods.channel(lm, [rec])
    with pytest.raises(ClassificationError, match="content-free"):
        methods.content_free_probs(lm, records("direct")[0], ["N/A"])


def test_generation_label_needs_a_word_boundary():
    words = ["World", "Sports", "Science and technology"]
    assert methods.parse_generation(" Worldwide markets", words) == "none"
    assert methods.parse_generation(" Sportsmanship", words) == "none"
    assert methods.parse_generation(" World.", words) == "World"
    assert methods.parse_generation(" world.", words) == "none"
    assert methods.parse_generation(" World news", words) == "World"
    assert methods.parse_generation("Science and technology", words) == "Science and technology"


def test_sampling_seeds_depend_on_the_record_not_the_batch(tmp_path):
    from classification.run import runner
    from test_runner import write_inputs

    data, recs = write_inputs(tmp_path)
    by_chunking = []
    for chunk in (1, 5, 64):
        lm = FakeLM()
        runner.evaluate("generate", data, str(tmp_path / f"g{chunk}.json"), lm=lm, temperature=0.7, seed=3,
                        chunk_size=chunk)
        by_chunking.append(dict(zip(lm.contexts, lm.seeds)))
    assert by_chunking[0] == by_chunking[1] == by_chunking[2]
    assert len(set(by_chunking[0].values())) == len(recs)  # one seed per record
