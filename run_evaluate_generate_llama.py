"""Generation: continue the direct prompt greedily and read the label word it starts with."""

from typing import Optional

import fire

from classification.cli import cli
from classification.runner import DEFAULT_CKPT_DIR, DEFAULT_TOKENIZER_PATH, evaluate


@cli
def main(
    data_path: str = "samples/inputs_direct_ag_news.json",
    output_path: str = "samples/outputs_generate_ag_news.json",
    ckpt_dir: str = DEFAULT_CKPT_DIR,
    tokenizer_path: str = DEFAULT_TOKENIZER_PATH,
    max_seq_len: int = 2048,
    max_batch_size: int = 16,
    dtype: Optional[str] = None,
    device: Optional[str] = None,
    scoring: str = "fast",
    max_gen_len: int = 10,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> None:
    """Generate after each direct prompt (stop at newline/EOS); unparsable output counts as "none".

    data_path, output_path: direct input JSON; output JSON (metrics go to <stem>.metrics.json).
    ckpt_dir, tokenizer_path, max_seq_len, max_batch_size, dtype, device, scoring:
    as for run_evaluate_direct_llama.py.
    max_gen_len: most generated tokens. temperature: 0 = greedy; above 0 samples with top_p.
    top_p: nucleus sampling mass (used only when temperature > 0).
    """
    evaluate("generate", **locals())


if __name__ == "__main__":
    fire.Fire(main)
