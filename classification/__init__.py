"""In-context text classification with LLaMA-family models (direct, calibrate, channel, generate).

Modules: ``data`` (ag_news loading, demonstrations, input records), ``datasets`` (any dataset:
presets, local files, the hub), ``templates`` (prompt text and placeholder filling), ``methods``
(the methods and calibrations over :class:`classification.lm.LanguageModel`), ``metrics``,
``runner`` (resumable, data-parallel evaluation), ``seeds`` (several demonstration seeds, mean ±
std), ``report`` (Markdown + plots), ``cli`` and ``table``.
"""

from classification.errors import ClassificationError

__all__ = ["ClassificationError"]
