"""Run methods over several demonstration seeds: per-seed outputs and mean ± std (classification.run.seeds)."""

import fire

from classification.cli import cli
from classification.run.seeds import DEFAULT_CKPT_DIR, DEFAULT_TOKENIZER_PATH, SEED_METHODS, run_seeds


@cli
def main(dataset: str = "ag_news", data_dir: str | None = None, methods: list[str] = SEED_METHODS, k: int = 1,
         seeds: list[int] = (1, 2, 3), n_sample: int = 300, out_dir: str | None = None, demos: str = "random",
         demo_pool: int | None = None, ckpt_dir: str = DEFAULT_CKPT_DIR, tokenizer_path: str = DEFAULT_TOKENIZER_PATH,
         max_seq_len: int = 2048, max_batch_size: int = 16, dtype: str | None = None, device: str | None = None,
         model_parallel_size: int | None = None, quantize: str = "none") -> None:
    """For each seed: k demonstrations per class (same test sample), every method; then mean ± std.

    Args:
        dataset: a preset (ag_news, sst2, sst5, trec, mr, cr, subj, dbpedia) or a dataset spec .json (see README).
        data_dir: folder of the preset's offline files, e.g. ../shared/data/sst2 (default: the hub).
        methods: some of direct, na, cbu, dcpmi, batch, batch_logmean, hidden, lda, knn, hidden_auto, lda_auto, logistic_auto, channel, generate.
        k: demonstrations per class.
        seeds: demonstration seeds, e.g. --seeds='[1,2,3]'.
        n_sample: stratified test sample (seed 0, the same for every seed); 0 for the whole test split.
        out_dir: where the files go (default outputs/<dataset>/k<k>, with bm25 k<k>-bm25); finished runs there are reused.
        ckpt_dir: checkpoint directory of the model.
        tokenizer_path: the model's tokenizer file (tokenizer.model or tokenizer.json).
        max_seq_len: longest sequence in tokens; longer test texts are shortened to fit.
        max_batch_size: most sequences in one forward pass.
        demos: random, or bm25 (each input's demonstrations retrieved from the training split).
        demo_pool: with bm25, retrieve from a stratified pool of this many training examples, drawn per seed.
        dtype: fp32, fp16 or bf16 (default: bf16 on CUDA where supported, else fp16; fp32 on CPU).
        device: cpu or cuda (default: cuda when available).
        model_parallel_size: ranks that split the model (default: a Meta checkpoint's shard count, 1 for HF/GGUF).
        quantize: none, int8 (LLM.int8: bitsandbytes on CUDA, int8 kernels on CPU) or int8w (int8 weights only).
    """
    run_seeds(**locals())


if __name__ == "__main__":
    fire.Fire(main)
