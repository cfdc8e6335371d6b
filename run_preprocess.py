"""Write direct or channel input records for any text-classification dataset (classification.inputs.datasets)."""

import fire
from classification.cli import cli
from classification.run.preprocess import preprocess_dataset


@cli
def main(
    preset: str | None = None, method: str = "direct", data_path: str | None = None, data_dir: str | None = None,
    train: str | None = None, test: str | None = None, hub: str | None = None, label_column: str | None = None,
    text_column: str | list[str] | None = None, label_words: list[str] | None = None, template: str | None = None,
    k: int = 1, seed: int = 42, n_sample: int = 16, sample_seed: int | None = None, test_size: int | None = None,
    demos: str = "random", demo_pool: int | None = None, n_anchor: int = 0, embedder: str | None = None,
    ckpt_dir: str = "checkpoints/smollm2/135M", tokenizer_path: str = "checkpoints/smollm2/tokenizer.json",
    demo_sampling: str = "default") -> None:
    """Build prompts with k demonstrations per class for a preset, local files or a hub dataset.

    Args:
        preset: ag_news, sst2, sst5, trec, mr, cr, subj or dbpedia (template, label words, files, hub id).
        method: direct or channel (the template's label word last, or its text last).
        data_path: output JSON records; default samples/inputs_<method>_<dataset>.json.
        data_dir: folder of the files, e.g. ../shared/data/sst2 (a preset knows its file names); none: the hub.
        train: train file (.csv with a header, .json list or .jsonl), or with --hub the train split name.
        test: test file or split name; without one, test_size rows of train are held out.
        hub: a Hugging Face dataset, "name" or "name:config" (default for a preset without data_dir: its id).
        label_column: column of 0-based integer labels or label words/class names (default label).
        text_column: column, or list of columns joined by a space, holding the text (default text).
        label_words: words scored for the labels, in label order (default: the preset's, or labels.txt).
        template: one example with {text} and {label_word}, e.g. "Review: {text}\\nSentiment: {label_word}".
        k: demonstrations per class, drawn from the train split (0 for zero-shot).
        seed: random seed of the demonstrations and their order.
        n_sample: size of the stratified test sample; 0 for the whole test split.
        sample_seed: random seed of the test sample (default: seed).
        test_size: rows held out (seed 0) as test without a test file/split (presets: mr, cr, subj 2000, dbpedia 1000).
        demos: random, bm25 or knn: k per class chosen for each input, most similar last; records list them.
        demo_pool: bm25/knn: retrieve from a stratified sample of this many training examples (seeded).
        n_anchor: also write M labeled anchors per class (never demonstrations) to <data_path stem>.anchors.json.
        embedder: knn: a local sentence-transformers model (default: the scoring model's mean hidden states).
        ckpt_dir: the scoring model's checkpoint, knn's default embedder.
        tokenizer_path: the scoring model's tokenizer file.
        demo_sampling: default, or original: the demonstrations the original drew with --seed (needs `datasets`).
    """
    preprocess_dataset(**locals())


if __name__ == "__main__":
    fire.Fire(main)
