"""Write ag_news input records for direct classification (the ag_news preset of run_preprocess.py)."""

import fire

from classification.cli import cli
from classification.run.preprocess import preprocess


@cli
def main(
    data_path: str = "samples/inputs_direct_ag_news.json",
    sample: bool = True,
    k: int = 1,
    seed: int = 42,
    data_dir: str | None = None,
    n_sample: int = 16,
    demos: str = "random",
    demo_pool: int | None = None,
    n_anchor: int = 0,
    demo_sampling: str = "default",
) -> None:
    """Build direct prompts with k demonstrations per class and write the records as JSON.

    Args:
        data_path: output JSON (records: prompt, completion, text, label_words, ground_truth, index).
        sample: True for a stratified sample of n_sample test examples; --nosample for all 7,600.
        k: demonstrations per class, drawn from the train split (0 for zero-shot).
        seed: random seed of the demonstrations, their order and the test sample.
        data_dir: directory with ag_news_csv train.csv and test.csv; None reads the Hugging Face hub.
        n_sample: size of the test sample, spread evenly over the classes.
        demos, demo_pool: random, bm25 or knn (k per class chosen for each input, as run_preprocess.py); pool size.
        n_anchor: also write M labeled anchors per class (never demonstrations) for --calibration hidden/knn.
        demo_sampling: default, or original: the demonstrations the original drew with --seed (needs `datasets`).
    """
    preprocess("direct", data_path, sample=sample, k=k, seed=seed, data_dir=data_dir, n_sample=n_sample,
               demos=demos, demo_pool=demo_pool, n_anchor=n_anchor, demo_sampling=demo_sampling)


if __name__ == "__main__":
    fire.Fire(main)
