"""The four classification methods as pure functions over :class:`classification.lm.LanguageModel`.

Scoring rule: for a record and a label word, the request is
``(fill(prompt, text, label_word), " " + fill(completion, text, label_word) + end)`` where ``end``
is "\\n" for ``completion_end="newline"`` and "" otherwise (EOS is scored inside the model when it
was built with ``append_eos``).  Direct and channel differ only in their templates:

- direct:    prompt "...Article: {text}\\nCategory:",   completion "{label_word}"
- channel:   prompt "...Category: {label_word}\\nArticle:", completion "{text}"
- calibrate: the direct run's saved log-probs re-scored post hoc (no second pass over the test
  set), one of :data:`classification.calibrations.CALIBRATIONS`; every calibrated score is renormalized over the labels
  (log-softmax), so ``log_probs`` of a calibrated output are normalized label log-probs (its
  ``score`` is the original's: softmax(direct log-probs) / p_cf for na and cbu, not renormalized,
  :func:`contextual_scores`; the calibrated probabilities exp(log_probs) for the others):

  - ``na``:    contextual calibration (Zhao et al. 2021) as in the original: p = softmax(direct
               log-probs), p_cf = the same for the content-free input "N/A";
               score(y) = log(p(y) / p_cf(y))  (W = diag(1/p_cf), b = 0).  Scores one prompt.
  - ``cbu``:   the same with p_cf averaged over several content-free inputs ("N/A", "",
               "[MASK]", as in Calibrate Before Use).
  - ``dcpmi``: domain-conditional PMI (Holtzman et al. 2021):
               score(y) = log p(y | x, prompt) - log p(y | domain premise), the premise being
               the template's text after ``{text}`` ("Category:" for ag_news).  Scores only the
               label words after the premise.
  - ``batch``: batch calibration (Zhou et al. 2023): with p(y|x) = softmax of the direct
               log-probs, score(y|x_i) = log p(y|x_i) - log of the mean over the batch j of
               p(y|x_j); the batch is the whole test set (or consecutive blocks of ``batch_size``
               records).  Needs no model at all.
  - ``batch_logmean``: the same with the mean of the log-probs in place of the log of the mean
               probability (what ``batch`` computed before it followed the paper).
- generate:  greedy continuation of the direct prompt, parsed back to a label word
             (:func:`generate`)

Test texts too long for ``lm.max_seq_len`` are shortened token-wise (:func:`fit_text`).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from classification.errors import ClassificationError
from classification.lm import LanguageModel
from classification.templates import fill

# Every method; calibrate and generate read direct input records, so only TEMPLATE_METHODS
# have input records of their own.
METHODS: Tuple[str, ...] = ("direct", "calibrate", "channel", "generate")
TEMPLATE_METHODS: Tuple[str, ...] = ("direct", "channel")
MODEL_METHODS: Tuple[str, ...] = ("direct", "channel", "generate")  # those that score the test set
COMPLETION_ENDS: Tuple[str, ...] = ("eos", "none", "newline")
NONE_PREDICTION = "none"
DEFAULT_CONTENT_FREE: Tuple[str, ...] = ("N/A",)
CBU_CONTENT_FREE: Tuple[str, ...] = ("N/A", "", "[MASK]")
# When the longest label's request is this close to the limit, every label's request is counted.
_EXACT_MARGIN = 4

Record = Dict[str, Any]
Result = Dict[str, Any]


def completion_suffix(completion_end: str) -> str:
    """Text appended to every continuation for a ``--completion_end`` value."""
    if completion_end not in COMPLETION_ENDS:
        raise ClassificationError(f"--completion_end {completion_end!r} is not one of {', '.join(COMPLETION_ENDS)}")
    return "\n" if completion_end == "newline" else ""


def argmax(xs: Sequence[float]) -> int:
    """Index of the largest value (the first one on ties)."""
    best = 0
    for i, x in enumerate(xs):
        if x > xs[best]:
            best = i
    return best


def softmax(xs: Sequence[float]) -> List[float]:
    """Numerically stable softmax of a list of log-scores."""
    top = max(xs)
    exps = [math.exp(x - top) for x in xs]
    total = sum(exps)
    return [e / total for e in exps]


def log_softmax(xs: Sequence[float]) -> List[float]:
    """xs minus their log-sum-exp: log-probabilities normalized over the entries."""
    top = max(xs)
    total = top + math.log(sum(math.exp(x - top) for x in xs))
    return [x - total for x in xs]


def request(record: Record, text: str, label_word: str, suffix: str = "") -> Tuple[str, str]:
    """The (context, continuation) pair scoring ``label_word`` for ``record`` with ``text``."""
    context = fill(record["prompt"], text=text, label_word=label_word)
    continuation = " " + fill(record["completion"], text=text, label_word=label_word) + suffix
    return context, continuation


def count_tokens(lm: LanguageModel, context: str, continuation: str = "", eos: bool = False) -> int:
    """Tokens the model sees for one request (BOS when the tokenizer adds it, EOS when asked)."""
    tok = lm.tokenizer
    return len(tok.encode(context + continuation, bos=bool(tok.add_bos), eos=False)) + (1 if eos else 0)


def fit_text(
    lm: LanguageModel, text: str, needed: Callable[[str], int], what: str = "the prompt"
) -> Tuple[str, bool]:
    """Shorten ``text`` (cutting its tokens from the end) until ``needed(text) <= lm.max_seq_len``.

    Returns (text, shortened).  Raises :class:`ClassificationError` only when even an empty
    text does not fit, i.e. the demonstrations and template alone are too long.
    """
    limit = lm.max_seq_len
    n = needed(text)
    if n <= limit:
        return text, False
    ids = lm.tokenizer.encode(text, bos=False, eos=False)
    keep = len(ids) - (n - limit)
    while keep > 0:
        candidate = lm.tokenizer.decode(ids[:keep])
        m = needed(candidate)
        if m <= limit:
            return candidate, True
        keep -= max(1, m - limit)
    empty = needed("")
    if empty <= limit:
        return "", True
    raise ClassificationError(
        f"{what} needs {empty} tokens even with the test text removed, more than max_seq_len "
        f"{limit}; use fewer demonstrations (--k) or a larger --max_seq_len"
    )


def _label_order(lm: LanguageModel, label_words: Sequence[str], suffix: str) -> List[int]:
    """Label indices, the label with the most tokens first."""
    lengths = [len(lm.tokenizer.encode(" " + w + suffix, bos=False, eos=False)) for w in label_words]
    return sorted(range(len(label_words)), key=lambda i: (-lengths[i], i))


def _loglikelihood_needed(lm: LanguageModel, record: Record, suffix: str) -> Callable[[str], int]:
    words = record["label_words"]
    order = _label_order(lm, words, suffix)
    eos = bool(lm.append_eos)

    def needed(text: str) -> int:
        n = count_tokens(lm, *request(record, text, words[order[0]], suffix), eos=eos)
        if n > lm.max_seq_len - _EXACT_MARGIN:
            n = max(count_tokens(lm, *request(record, text, words[i], suffix), eos=eos) for i in order)
        return n

    return needed


def score_labels(lm: LanguageModel, records: Sequence[Record], completion_end: str = "eos") -> List[Result]:
    """Score every label word of every record in one ``loglikelihood`` call; argmax predicts.

    Each result has ``log_probs`` (label_words order), ``prediction`` and ``shortened``.
    """
    suffix = completion_suffix(completion_end)
    texts: List[str] = []
    shortened: List[bool] = []
    requests: List[Tuple[str, str]] = []
    for pos, record in enumerate(records):
        needed = _loglikelihood_needed(lm, record, suffix)
        text, cut = fit_text(lm, record["text"], needed, f"record {pos}'s prompt")
        texts.append(text)
        shortened.append(cut)
        requests.extend(request(record, text, word, suffix) for word in record["label_words"])
    scores = lm.loglikelihood(requests) if requests else []
    if len(scores) != len(requests):
        raise RuntimeError(f"loglikelihood returned {len(scores)} scores for {len(requests)} requests")
    results: List[Result] = []
    start = 0
    for record, cut in zip(records, shortened):
        log_probs = [float(s) for s in scores[start : start + len(record["label_words"])]]
        start += len(log_probs)
        results.append(
            {"log_probs": log_probs, "prediction": record["label_words"][argmax(log_probs)], "shortened": cut}
        )
    return results


def direct(lm: LanguageModel, records: Sequence[Record], completion_end: str = "eos") -> List[Result]:
    """Direct: log p(" " + label word | demonstrations + "Article: text\\nCategory:") per label."""
    return score_labels(lm, records, completion_end)


def channel(lm: LanguageModel, records: Sequence[Record], completion_end: str = "eos") -> List[Result]:
    """Channel: log p(" " + text | demonstrations + "Category: label word\\nArticle:") per label."""
    return score_labels(lm, records, completion_end)


def record_contexts(lm: LanguageModel, records: Sequence[Record], completion_end: str = "eos") -> List[str]:
    """Each record's direct context as scored (test text shortened to fit, as the direct method does)."""
    suffix = completion_suffix(completion_end)
    contexts = []
    for pos, rec in enumerate(records):
        needed = _loglikelihood_needed(lm, rec, suffix)
        text, _ = fit_text(lm, rec["text"], needed, f"record {pos}'s prompt")
        contexts.append(request(rec, text, rec["label_words"][0], suffix)[0])
    return contexts


def content_free_probs(
    lm: LanguageModel,
    record: Record,
    content_free: Sequence[str] = DEFAULT_CONTENT_FREE,
    completion_end: str = "eos",
) -> List[float]:
    """p_cf: softmax over the label log-probs of each content-free text, averaged over the texts."""
    if not content_free:
        raise ClassificationError("--content_free needs at least one content-free text, e.g. N/A")
    suffix = completion_suffix(completion_end)
    words = record["label_words"]
    requests: List[Tuple[str, str]] = []
    for cf in content_free:
        for word in words:
            req = request(record, cf, word, suffix)
            n = count_tokens(lm, *req, eos=bool(lm.append_eos))
            if n > lm.max_seq_len:
                raise ClassificationError(
                    f"the content-free prompt for {cf!r} needs {n} tokens, more than max_seq_len "
                    f"{lm.max_seq_len}; use fewer demonstrations (--k) or a larger --max_seq_len"
                )
            requests.append(req)
    scores = lm.loglikelihood(requests)
    total = [0.0] * len(words)
    for j in range(len(content_free)):
        probs = softmax([float(s) for s in scores[j * len(words) : (j + 1) * len(words)]])
        total = [t + p for t, p in zip(total, probs)]
    return [t / len(content_free) for t in total]


def contextual_scores(log_probs: Sequence[float], p_cf: Sequence[float]) -> List[float]:
    """softmax(log_probs) / p_cf, not renormalized: the original's per-record ``score``
    (``w * probs`` with ``w = 1 / p_cf``); its argmax is the calibrated prediction."""
    if len(log_probs) != len(p_cf):
        raise ValueError(f"{len(log_probs)} log-probs but {len(p_cf)} content-free probabilities")
    return [p / max(c, 1e-300) for p, c in zip(softmax(log_probs), p_cf)]


def calibrate_log_probs(log_probs: Sequence[float], p_cf: Sequence[float]) -> List[float]:
    """Contextual calibration: log of normalize(softmax(log_probs) / p_cf)."""
    weighted = contextual_scores(log_probs, p_cf)
    total = sum(weighted)
    return [math.log(w / total) if w > 0 else float("-inf") for w in weighted]


def calibrate(
    direct_log_probs: Sequence[Sequence[float]], label_words: Sequence[str], p_cf: Sequence[float]
) -> List[Result]:
    """Calibrated ``log_probs``, argmax ``prediction`` and the original's ``score`` for each direct result."""
    results: List[Result] = []
    for log_probs in direct_log_probs:
        calibrated = calibrate_log_probs(log_probs, p_cf)
        results.append({"log_probs": calibrated, "prediction": label_words[argmax(calibrated)],
                        "score": contextual_scores(log_probs, p_cf)})
    return results


def _match_form(word: str, ignore_case: bool) -> str:
    """What a label word is matched as: stripped, and case-folded when case is ignored."""
    return word.strip().casefold() if ignore_case else word.strip()


def check_label_matching(label_words: Sequence[str], ignore_case: bool = False) -> None:
    """One line when two label words are the same under the matching of generations (["us", "US"]
    when case is ignored): a generation naming one would count for the other."""
    seen: Dict[str, str] = {}
    for word in label_words:
        form = _match_form(word, ignore_case)
        if form in seen:
            how = "case-insensitive matching" if ignore_case else "matching (surrounding spaces are ignored)"
            raise ClassificationError(
                f"label words {seen[form]!r} and {word!r} are the same under {how}; a generation could not tell "
                "them apart: use distinct label words"
            )
        seen[form] = word


def parse_generation(generation: str, label_words: Sequence[str], ignore_case: bool = False) -> str:
    """The label word the generation starts with as a whole word, with its exact case unless
    ``ignore_case`` (longest match: "World news" and "World." name World, "Worldwide" does not,
    nor does "world" by default), else "none"."""
    text = _match_form(generation, ignore_case)
    for word in sorted(label_words, key=len, reverse=True):
        w = _match_form(word, ignore_case)
        if w and text.startswith(w) and not (len(text) > len(w) and text[len(w)].isalnum() and w[-1].isalnum()):
            return word
    return NONE_PREDICTION


def generate(
    lm: LanguageModel,
    records: Sequence[Record],
    max_gen_len: int = 10,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: Optional[int] = None,
    ignore_case: bool = False,
) -> List[Result]:
    """Continue each filled prompt (stopping at a newline or EOS) and parse the label word (its
    exact case unless ``ignore_case``; label words that matching cannot tell apart are refused)."""
    for record in records[:1]:  # one label set per file
        check_label_matching(record["label_words"], ignore_case)
    contexts: List[str] = []
    shortened: List[bool] = []
    for pos, record in enumerate(records):

        def needed(text: str, record: Record = record) -> int:
            return count_tokens(lm, fill(record["prompt"], text=text)) + max_gen_len

        what = f"record {pos}'s prompt plus --max_gen_len {max_gen_len}"
        text, cut = fit_text(lm, record["text"], needed, what)
        contexts.append(fill(record["prompt"], text=text))
        shortened.append(cut)
    # One seed per record (from its index), so a sample does not depend on chunks or batches.
    seeds = None if seed is None else [(seed * 1_000_003 + int(r.get("index", 0))) % (1 << 63) for r in records]
    generations = (
        lm.generate_until(contexts, max_gen_len, stop=("\n",), temperature=temperature, top_p=top_p, seed=seeds)
        if contexts
        else []
    )
    if len(generations) != len(contexts):
        raise RuntimeError(f"generate_until returned {len(generations)} outputs for {len(contexts)} contexts")
    return [
        {
            "generation": g,
            "prediction": parse_generation(g, record["label_words"], ignore_case),
            "log_probs": None,
            "shortened": cut,
        }
        for g, record, cut in zip(generations, records, shortened)
    ]


def default_domain_premise(record: Record) -> str:
    """The direct template's text after ``{text}``, stripped ("Category:" for ag_news)."""
    prompt = record["prompt"]
    premise = prompt[prompt.rfind("{text}") + len("{text}") :].strip() if "{text}" in prompt else ""
    if not premise:
        raise ClassificationError(
            "the direct prompt has nothing after {text} to use as the domain premise; pass --domain_premise"
        )
    return premise


def premise_log_probs(
    lm: LanguageModel, record: Record, premise: str, completion_end: str = "eos"
) -> List[float]:
    """log p(label word | domain premise) for each label word (scored as in the direct run)."""
    suffix = completion_suffix(completion_end)
    words = record["label_words"]
    requests = [(premise, " " + fill(record["completion"], label_word=w) + suffix) for w in words]
    return [float(x) for x in lm.loglikelihood(requests)]


def dcpmi_log_probs(log_probs: Sequence[float], premise_lp: Sequence[float]) -> List[float]:
    """Domain-conditional PMI: log-softmax of log p(y|x, prompt) - log p(y|premise)."""
    if len(log_probs) != len(premise_lp):
        raise ValueError(f"{len(log_probs)} log-probs but {len(premise_lp)} premise log-probs")
    return log_softmax([a - b for a, b in zip(log_probs, premise_lp)])


BATCH_AVERAGES: Tuple[str, ...] = ("probs", "log_probs")


def batch_log_priors(
    all_log_probs: Sequence[Sequence[float]], batch_size: Optional[int] = None, average: str = "probs"
) -> List[List[float]]:
    """Per record, the log label prior of its batch (all records when batch_size is None).

    ``average="probs"``: log of the mean of the normalized label probabilities, the contextual
    prior of Batch Calibration (Zhou et al. 2023).  ``"log_probs"``: the mean of the normalized
    label log-probs (a geometric mean of the probabilities).
    """
    if average not in BATCH_AVERAGES:
        raise ValueError(f"average must be one of {BATCH_AVERAGES}, not {average!r}")
    n = len(all_log_probs)
    size = n if batch_size is None else batch_size
    priors: List[List[float]] = []
    for start in range(0, n, max(1, size)):
        block = [log_softmax(lp) for lp in all_log_probs[start : start + size]]
        if average == "probs":
            prior = [math.log(sum(math.exp(x) for x in col) / len(block)) for col in zip(*block)]
        else:
            prior = [sum(col) / len(block) for col in zip(*block)]
        priors.extend([prior] * len(block))
    return priors


def batch_calibrate(
    all_log_probs: Sequence[Sequence[float]], batch_size: Optional[int] = None, average: str = "probs"
) -> List[List[float]]:
    """Batch calibration: log-softmax of (log-softmax(lp_i) - its batch's log prior), per record."""
    priors = batch_log_priors(all_log_probs, batch_size, average)
    return [log_softmax([a - m for a, m in zip(log_softmax(lp), prior)]) for lp, prior in zip(all_log_probs, priors)]


def shared_context(records: Sequence[Record], method: str) -> str:
    """The longest common string prefix of every context ``method`` will score for ``records``.

    direct and channel: the contexts of every record and label word (a test text may be
    shortened, so contexts with an empty text count too); generate: the prompts; calibrate: "".
    """
    if method == "calibrate" or not records:
        return ""
    contexts: List[str] = []
    for record in records:
        for text in (record["text"], ""):
            if method == "generate":
                contexts.append(fill(record["prompt"], text=text))
            else:
                contexts.extend(request(record, text, word)[0] for word in record["label_words"])
    return os.path.commonprefix(contexts)
