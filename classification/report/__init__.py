"""Reports from metrics files: a results table (``table``) and a Markdown report with plots
(``markdown``)."""
