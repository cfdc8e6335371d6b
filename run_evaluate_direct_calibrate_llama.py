"""Contextual calibration (Zhao et al. 2021) of a direct run's label probabilities."""

from typing import Optional, Sequence, Union

import fire

from classification.cli import cli
from classification.runner import DEFAULT_CKPT_DIR, DEFAULT_TOKENIZER_PATH, evaluate


@cli
def main(
    direct_input_path: str = "samples/inputs_direct_ag_news.json",
    direct_output_path: str = "samples/outputs_direct_ag_news.json",
    output_path: str = "samples/outputs_direct_calibrate_ag_news.json",
    ckpt_dir: str = DEFAULT_CKPT_DIR,
    tokenizer_path: str = DEFAULT_TOKENIZER_PATH,
    max_seq_len: int = 2048,
    max_batch_size: int = 16,
    dtype: Optional[str] = None,
    device: Optional[str] = None,
    scoring: str = "fast",
    completion_end: str = "eos",
    content_free: Union[str, Sequence[str]] = ("N/A",),
) -> None:
    """Divide the direct label probabilities by those of content-free inputs, renormalise, argmax.

    direct_input_path, direct_output_path: the direct run's input and output JSON (only the
    content-free inputs are scored here). output_path: output JSON; metrics go to <stem>.metrics.json.
    ckpt_dir, tokenizer_path, max_seq_len, max_batch_size, dtype, device, scoring, completion_end:
    as for run_evaluate_direct_llama.py (use the direct run's values).
    content_free: content-free text or list, e.g. --content_free='["N/A","","[MASK]"]' (averaged).
    """
    args = locals()
    evaluate("calibrate", data_path=args.pop("direct_input_path"), **args)


if __name__ == "__main__":
    fire.Fire(main)
