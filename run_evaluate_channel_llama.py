"""Channel classification: score the text given each label word, predict the most likely label."""

from typing import Optional

import fire

from classification.cli import cli
from classification.runner import DEFAULT_CKPT_DIR, DEFAULT_TOKENIZER_PATH, evaluate


@cli
def main(
    data_path: str = "samples/inputs_channel_ag_news.json",
    output_path: str = "samples/outputs_channel_ag_news.json",
    ckpt_dir: str = DEFAULT_CKPT_DIR,
    tokenizer_path: str = DEFAULT_TOKENIZER_PATH,
    max_seq_len: int = 2048,
    max_batch_size: int = 16,
    dtype: Optional[str] = None,
    device: Optional[str] = None,
    scoring: str = "fast",
    completion_end: str = "eos",
) -> None:
    """Classify the records of data_path by log p(text | label word prompt); resumable, torchrun-ready.

    data_path: input JSON from run_preprocess_channel_ag_news.py.
    output_path: output JSON (one record per input); metrics go to <stem>.metrics.json.
    ckpt_dir, tokenizer_path: the model's checkpoint directory and tokenizer file.
    max_seq_len: longest sequence; longer test texts are shortened. max_batch_size: sequences per pass.
    dtype: fp32, fp16 or bf16 (default fp16 on CUDA, fp32 on CPU). device: cpu or cuda (default: auto).
    scoring: fast (shared prompt prefix) or naive (every sequence in full).
    completion_end: eos (score EOS after the text), none, or newline (score a "\\n").
    """
    evaluate("channel", **locals())


if __name__ == "__main__":
    fire.Fire(main)
