"""Ray Tune + Optuna study of MiSLAS's Stage-2 knobs across data sets (``python -m study.run``).

Modules: :mod:`study.space` (search-space files -> define-by-run), :mod:`study.search`
(per-data-set OptunaSearch, grouped ASHA), :mod:`study.trainable` (one trial),
:mod:`study.stage1_cache` (Stage 1 trained once), :mod:`study.results` (Parquet),
:mod:`study.callbacks` (rows written as trials end), :mod:`study.run` (the CLI),
:mod:`study.submit` (Ray Jobs). ``mislas`` imports nothing from here.
"""
