"""Calibrate a direct run's saved label log-probs post hoc: na, cbu, dcpmi, batch, hidden, lda or knn."""

import fire

from classification.cli import cli
from classification.run.runner import DEFAULT_CKPT_DIR, DEFAULT_TOKENIZER_PATH, evaluate


@cli
def main(
    direct_input_path: str = "samples/inputs_direct_ag_news.json",
    direct_output_path: str | None = "samples/outputs_direct_ag_news.json",
    output_path: str = "samples/outputs_direct_calibrate_ag_news.json", calibration: str = "na", quantize: str = "none",
    ckpt_dir: str = DEFAULT_CKPT_DIR, tokenizer_path: str = DEFAULT_TOKENIZER_PATH, max_seq_len: int = 2048,
    max_batch_size: int = 16, dtype: str | None = None, device: str | None = None, scoring: str = "fast",
    completion_end: str = "eos", content_free: str | list[str] | None = None, domain_premise: str | None = None,
    batch_size: int | None = None, verify_checkpoint: bool | None = None, model_parallel_size: int | None = None,
    n_anchor: int | None = None, knn_k: int | None = None, accept_mismatch: bool = False) -> None:
    """Re-score the direct run's log-probs (no new pass over the test set), renormalise, argmax.

    Args:
        direct_input_path, direct_output_path, output_path: the direct run's input and output JSON (its log_probs
            are reused); this run's output JSON, one record per input, metrics in <stem>.metrics.json.
        calibration: na (log p/p_cf, p_cf of "N/A": the original's), cbu (p_cf averaged over "N/A", "", "[MASK]"),
            dcpmi (- log p(y|domain premise)), batch (- log of the batch's mean p; no model) or batch_logmean,
            hidden (anchor centroids), lda, knn, hidden_auto, lda_auto, logistic_auto: need --save_hidden, --n_anchor.
        ckpt_dir, tokenizer_path, max_seq_len, dtype, quantize: the direct run's (checked against its metrics), and
            max_batch_size, device, verify_checkpoint, model_parallel_size as for run_evaluate_direct_llama.py.
        accept_mismatch: use a direct run made with another model or precision than these flags (refused by default).
        scoring, completion_end: fast (prefix computed once) or naive; eos, none or newline: the direct run's values.
        content_free: na/cbu: text or list of texts, averaged, e.g. --content_free='["N/A","","[MASK]"]'.
        domain_premise: dcpmi: the premise (default: the template after {text}, e.g. "Category:").
        batch_size: batch: records per batch, in file order (default: the whole test set).
        n_anchor, knn_k: anchor calibrations: anchors per class used (default: all); knn: nearest anchors that vote (3).
    """
    evaluate("calibrate", data_path=direct_input_path, **{k: v for k, v in locals().items() if k != "direct_input_path"})


if __name__ == "__main__":
    fire.Fire(main)
