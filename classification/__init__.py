"""In-context text classification with LLaMA-family models (direct, calibrate, channel, generate).

Modules: ``presets`` (built-in datasets as data), ``sources`` (rows from local files or the
hub), ``sampling`` (demonstrations, test samples, hold-out splits), ``datasets`` (flags ->
input records), ``data`` (ag_news in the original's layout), ``templates`` (prompt text and
placeholder filling), ``methods`` (the methods over :class:`classification.lm.LanguageModel`),
``calibrations`` (one class per ``--calibration``), ``metrics``, ``runner`` (evaluation),
``resume`` (partial files and fingerprints), ``seeds`` (several demonstration seeds, mean ±
std), ``report`` (Markdown + plots), ``cli`` and ``table``.
"""

from classification.errors import ClassificationError

__all__ = ["ClassificationError"]
