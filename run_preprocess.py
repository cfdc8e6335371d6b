"""Write direct or channel input records for any text-classification dataset (classification.datasets)."""

import fire

from classification.cli import cli
from classification.datasets import preprocess_dataset


@cli
def main(
    preset: str | None = None, method: str = "direct", data_path: str | None = None, data_dir: str | None = None,
    train: str | None = None, test: str | None = None, hub: str | None = None, label_column: str | None = None,
    text_column: str | list[str] | None = None, label_words: list[str] | None = None, template: str | None = None,
    k: int = 1, seed: int = 42, n_sample: int = 16, sample_seed: int | None = None, test_size: int | None = None,
    demos: str = "random", demo_pool: int | None = None, n_anchor: int = 0, embedder: str | None = None,
    ckpt_dir: str = "checkpoints/smollm2/135M", tokenizer_path: str = "checkpoints/smollm2/tokenizer.json",
) -> None:
    """Build prompts with k demonstrations per class for a preset, local files or a hub dataset.

    Args:
        preset: ag_news, sst2, sst5, trec, mr, cr, subj or dbpedia (template, label words, files, hub id).
        method: direct or channel (the template's label word last, or its text last).
        data_path: output JSON records; default samples/inputs_<method>_<dataset>.json.
        data_dir: folder of the files, e.g. ../shared/data/sst2 (a preset knows its file names); none: the hub.
        train, test: train/test file (.csv with a header, .json list, .jsonl) or, with --hub, split names; without a
            test, test_size rows of train are held out (seed 0; presets: mr, cr, subj 2000, dbpedia 1000).
        hub: a Hugging Face dataset, "name" or "name:config" (default for a preset without data_dir: its id).
        label_column, text_column: the label column (0-based integers or label words/class names; default label)
            and the text column, or list of columns joined by a space (default text).
        label_words: words scored for the labels, in label order (default: the preset's, or labels.txt).
        template: one example with {text} and {label_word}, e.g. "Review: {text}\\nSentiment: {label_word}".
        k, seed: demonstrations per class from the train split (0: zero-shot); the seed of their choice and order.
        n_sample, sample_seed: size of the stratified test sample (0: all of it); its seed (default: seed).
        demos, demo_pool: random, bm25 or knn (k per class chosen for each input, most similar last, listed in the
            records); bm25/knn retrieve from a stratified sample of demo_pool training examples (default: all).
        n_anchor: also write M labeled anchors per class (never demonstrations) to <data_path stem>.anchors.json.
        embedder, ckpt_dir, tokenizer_path: knn: a local sentence-transformers model, default: the scoring model.
    """
    preprocess_dataset(**locals())


if __name__ == "__main__":
    fire.Fire(main)
