"""Inputs: datasets as data (``presets``), rows from files or the hub (``sources``), seeded sampling
(``sampling``), flags -> records (``datasets``), demonstrations chosen per input (``retrieval``)
and ag_news in the original's layout (``ag_news``).  Nothing here loads a model."""
