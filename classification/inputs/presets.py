r"""Built-in datasets as data: where their rows are, their templates and label words.

Presets carry the standard templates and label words of the in-context-learning literature and
know both the layout of the offline copies (``../shared/data/<name>``) and a hub id:

- ag_news: ``Article: {text}\nCategory: {label_word}`` (sh0416's); World, Sports, Business,
  Science and technology.
- sst2: ``Review: {text}\nSentiment: {label_word}`` (Zhao et al. 2021); Negative, Positive.
- sst5: the sst2 template; terrible, bad, okay, good, great (Gao et al. 2021).
- trec: an instruction + ``Question: {text}\nAnswer Type: {label_word}``; Abbreviation, Entity,
  Description, Person, Location, Number (Zhao et al.).
- mr, cr: the sst2 template; terrible, great (Gao et al.).
- subj: ``Input: {text}\nType: {label_word}``; subjective, objective (Gao et al.).
- dbpedia: an instruction + ``Article: {text}\nAnswer: {label_word}``; Company, School, ...,
  Book (Zhao et al.).

Channel templates swap the two lines (``Category: {label_word}\nArticle: {text}``).
Datasets without a test split (mr, cr, subj: ``all.csv``; dbpedia: ``train.csv`` only) hold out
``test_size`` rows chosen with ``random.Random(split_seed)``; the rest is the train pool.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Optional, Tuple

from classification.errors import ClassificationError
from classification.templates import AG_NEWS_LABEL_WORDS

DEFAULT_TEMPLATES: Dict[str, str] = {
    "direct": "Input: {text}\nLabel: {label_word}",
    "channel": "Label: {label_word}\nInput: {text}",
}


@dataclass(frozen=True)
class Source:
    """Where a dataset's rows come from: local files (``hub`` None) or a Hugging Face dataset.

    ``train``/``test`` are file paths (relative to ``--data_dir`` for presets) or split names;
    ``test`` None holds out ``test_size`` rows of train with ``split_seed``.
    """

    train: str
    test: Optional[str] = None
    text_columns: Tuple[str, ...] = ("text",)
    label_column: str = "label"
    hub: Optional[str] = None
    config: Optional[str] = None
    format: Optional[str] = None  # None: from the file extension (.csv, .json, .jsonl)
    test_size: Optional[int] = None
    split_seed: int = 0


@dataclass(frozen=True)
class Preset:
    name: str
    label_words: Tuple[str, ...]
    label_names: Tuple[str, ...]  # class names as in labels.txt (string labels may use them)
    templates: Dict[str, str]
    local: Source
    hub: Source
    instruction: str = ""
    reference: str = ""


def _templates(question: str, answer: str) -> Dict[str, str]:
    return {
        "direct": f"{question}: {{text}}\n{answer}: {{label_word}}",
        "channel": f"{answer}: {{label_word}}\n{question}: {{text}}",
    }


_LOCAL = Source(train="train.csv", test="test.csv")
_ALL = Source(train="all.csv", test=None, test_size=2000)
_SENTIMENT = ("negative", "positive")
_TREC_WORDS = ("Abbreviation", "Entity", "Description", "Person", "Location", "Number")
_DBPEDIA_WORDS = ("Company", "School", "Artist", "Athlete", "Politician", "Transportation", "Building",
                  "Nature", "Village", "Animal", "Plant", "Album", "Film", "Book")
_DBPEDIA_NAMES = ("Company", "EducationalInstitution", "Artist", "Athlete", "OfficeHolder", "MeanOfTransportation",
                  "Building", "NaturalPlace", "Village", "Animal", "Plant", "Album", "Film", "WrittenWork")

PRESETS: Dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("ag_news", AG_NEWS_LABEL_WORDS, ("World", "Sports", "Business", "Sci/Tech"),
               _templates("Article", "Category"), replace(_LOCAL, format="ag_news_csv"),
               Source(hub="ag_news", train="train", test="test"), reference="sh0416/llama-classification"),
        Preset("sst2", ("Negative", "Positive"), _SENTIMENT, _templates("Review", "Sentiment"), _LOCAL,
               Source(hub="SetFit/sst2", train="train", test="test", label_column="label_text"),
               reference="Zhao et al. 2021"),
        Preset("sst5", ("terrible", "bad", "okay", "good", "great"),
               ("very negative", "negative", "neutral", "positive", "very positive"),
               _templates("Review", "Sentiment"), _LOCAL,
               Source(hub="SetFit/sst5", train="train", test="test", label_column="label_text"),
               reference="template: Zhao et al. 2021; words: Gao et al. 2021"),
        Preset("trec", _TREC_WORDS, ("abbreviation", "entity", "description", "human", "location", "number"),
               _templates("Question", "Answer Type"), _LOCAL,
               Source(hub="CogComp/trec", train="train", test="test", label_column="coarse_label"),
               instruction="Classify the questions based on whether their answer type is a Number, Location, "
               "Person, Description, Entity, or Abbreviation.\n\n", reference="Zhao et al. 2021"),
        Preset("mr", ("terrible", "great"), _SENTIMENT, _templates("Review", "Sentiment"), _ALL,
               Source(hub="rotten_tomatoes", train="train", test="test"),
               reference="template: Zhao et al. 2021; words: Gao et al. 2021"),
        Preset("cr", ("terrible", "great"), _SENTIMENT, _templates("Review", "Sentiment"), _ALL,
               Source(hub="SetFit/SentEval-CR", train="train", test="test", label_column="label_text"),
               reference="template: Zhao et al. 2021; words: Gao et al. 2021"),
        Preset("subj", ("subjective", "objective"), ("subjective", "objective"), _templates("Input", "Type"), _ALL,
               Source(hub="SetFit/subj", train="train", test="test", label_column="label_text"),
               reference="words: Gao et al. 2021"),
        Preset("dbpedia", _DBPEDIA_WORDS, _DBPEDIA_NAMES, _templates("Article", "Answer"),
               Source(train="train.csv", test=None, test_size=1000),
               Source(hub="dbpedia_14", train="train", test="test", text_columns=("content",)),
               instruction="Classify the documents based on whether they are about a "
               + ", ".join(_DBPEDIA_WORDS[:-1]) + f", or {_DBPEDIA_WORDS[-1]}.\n\n",
               reference="Zhao et al. 2021"),
    )
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ClassificationError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)} or give your own files")
    return PRESETS[name]
