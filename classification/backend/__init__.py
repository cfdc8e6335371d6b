"""The model behind :class:`classification.lm.LanguageModel`: the LlamaLM scorer (``scoring``), its
hidden states (``hidden``) and the one model loader (``loader``).  The only layer that runs torch."""
