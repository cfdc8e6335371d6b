"""Direct classification: score each label word after the prompt, predict the most likely one."""

import fire

from classification.cli import cli
from classification.runner import DEFAULT_CKPT_DIR, DEFAULT_TOKENIZER_PATH, evaluate


@cli
def main(
    data_path: str = "samples/inputs_direct_ag_news.json",
    output_path: str = "samples/outputs_direct_ag_news.json",
    ckpt_dir: str = DEFAULT_CKPT_DIR, tokenizer_path: str = DEFAULT_TOKENIZER_PATH,
    max_seq_len: int = 2048, max_batch_size: int = 16, dtype: str | None = None,
    device: str | None = None, scoring: str = "fast", completion_end: str = "eos", save_hidden: bool = False,
) -> None:
    """Classify each record by log p(label word | prompt); resumable; runs under python or torchrun.

    Args:
        data_path: input JSON written by run_preprocess_direct_ag_news.py.
        output_path: output JSON, one record per input; metrics go to <stem>.metrics.json.
        ckpt_dir: checkpoint directory of the model.
        tokenizer_path: the model's tokenizer file (tokenizer.model or tokenizer.json).
        max_seq_len: longest sequence in tokens; longer test texts are shortened to fit.
        max_batch_size: most sequences in one forward pass.
        dtype: fp32, fp16 or bf16 (default: fp16 on CUDA, fp32 on CPU).
        device: cpu or cuda (default: cuda when available).
        scoring: fast (prompt prefix computed once) or naive (every sequence in full).
        completion_end: eos (also score EOS after the label), none, or newline (score a newline).
        save_hidden: also save each record's final hidden state at the label-predicting position (float16
            <output stem>.hidden.npy) for --calibration hidden/knn.
    """
    evaluate("direct", **locals())


if __name__ == "__main__":
    fire.Fire(main)
