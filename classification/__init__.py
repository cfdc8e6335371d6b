"""In-context text classification with LLaMA-family models (direct, calibrate, channel, generate).

Modules: ``data`` (ag_news loading, demonstrations, input records), ``templates`` (prompt text and
placeholder filling), ``methods`` (the four methods over :class:`classification.lm.LanguageModel`),
``metrics``, ``runner`` (resumable, data-parallel evaluation), ``cli`` and ``table``.
"""

from classification.errors import ClassificationError

__all__ = ["ClassificationError"]
