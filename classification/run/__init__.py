"""Runs: the resumable file-based evaluation (``runner``), its partial files (``resume``), several
demonstration seeds (``seeds``) and the preprocessing commands (``preprocess``)."""
