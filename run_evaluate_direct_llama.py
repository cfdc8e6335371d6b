"""Direct classification: score each label word after the prompt, predict the most likely one."""

import fire

from classification.cli import cli
from classification.run.runner import DEFAULT_CKPT_DIR, DEFAULT_TOKENIZER_PATH, evaluate


@cli
def main(
    data_path: str = "samples/inputs_direct_ag_news.json",
    output_path: str = "samples/outputs_direct_ag_news.json",
    ckpt_dir: str = DEFAULT_CKPT_DIR, tokenizer_path: str = DEFAULT_TOKENIZER_PATH,
    max_seq_len: int = 2048, max_batch_size: int = 16, dtype: str | None = None, save_hidden: bool = False,
    device: str | None = None, scoring: str = "fast", quantize: str = "none", completion_end: str = "eos",
    check_model: bool = True, verify_checkpoint: bool | None = None, model_parallel_size: int | None = None,
) -> None:
    """Classify each record by log p(label word | prompt); resumable; runs under python or torchrun.

    Args:
        data_path: input JSON written by run_preprocess_direct_ag_news.py.
        output_path: output JSON, one record per input; metrics go to <stem>.metrics.json.
        ckpt_dir: checkpoint directory of the model.
        tokenizer_path: the model's tokenizer file (tokenizer.model or tokenizer.json).
        max_seq_len: longest sequence in tokens; longer test texts are shortened to fit.
        max_batch_size: most sequences in one forward pass.
        dtype: fp32, fp16 or bf16 (default: bf16 on CUDA where supported, else fp16; fp32 on CPU).
        device: cpu or cuda (default: cuda when available).
        quantize: none, int8 (LLM.int8: bitsandbytes on CUDA, int8 kernels on CPU) or int8w (int8 weights only).
        scoring: fast (prompt prefix computed once) or naive (every sequence in full).
        completion_end: eos (also score EOS after the label), none, or newline (score a newline).
        save_hidden: also save each record's label-predicting states of 6 layers (<stem>.hidden.npy) for hidden/lda/knn.
        check_model, verify_checkpoint: stop if the model predicts its prompt near uniform; check checklist.chk md5s.
        model_parallel_size: ranks that split the model (default: a Meta checkpoint's shard count, 1 for HF/GGUF).
    """
    evaluate("direct", **locals())


if __name__ == "__main__":
    fire.Fire(main)
