"""Contextual calibration (Zhao et al. 2021) of a direct run's label probabilities."""

import fire

from classification.cli import cli
from classification.runner import DEFAULT_CKPT_DIR, DEFAULT_TOKENIZER_PATH, evaluate


@cli
def main(
    direct_input_path: str = "samples/inputs_direct_ag_news.json",
    direct_output_path: str = "samples/outputs_direct_ag_news.json",
    output_path: str = "samples/outputs_direct_calibrate_ag_news.json",
    ckpt_dir: str = DEFAULT_CKPT_DIR, tokenizer_path: str = DEFAULT_TOKENIZER_PATH,
    max_seq_len: int = 2048, max_batch_size: int = 16, dtype: str | None = None,
    device: str | None = None, scoring: str = "fast", completion_end: str = "eos",
    content_free: str | list[str] = ("N/A",),
) -> None:
    """Divide the direct run's label probabilities by a content-free input's, renormalise, argmax.

    Args:
        direct_input_path: the direct run's input JSON.
        direct_output_path: the direct run's output JSON (its log_probs are reused, not recomputed).
        output_path: output JSON, one record per input; metrics go to <stem>.metrics.json.
        ckpt_dir: checkpoint directory of the model (the direct run's).
        tokenizer_path: the model's tokenizer file (tokenizer.model or tokenizer.json).
        max_seq_len: longest sequence in tokens.
        max_batch_size: most sequences in one forward pass.
        dtype: fp32, fp16 or bf16 (default: fp16 on CUDA, fp32 on CPU).
        device: cpu or cuda (default: cuda when available).
        scoring: fast (prompt prefix computed once) or naive (every sequence in full).
        completion_end: eos, none or newline: the value the direct run used.
        content_free: text or list of texts, averaged: --content_free='["N/A","","[MASK]"]'.
    """
    args = locals()
    evaluate("calibrate", data_path=args.pop("direct_input_path"), **args)


if __name__ == "__main__":
    fire.Fire(main)
