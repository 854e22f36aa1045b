"""MiSLAS: mixup Stage 1 + label-aware smoothing and shift learning in Stage 2 (CVPR 2021).

Pure PyTorch; knows nothing of Ray or Optuna. Entry points: :mod:`mislas.train` (one run),
``python -m mislas describe`` (data set facts), :mod:`mislas.stages` (the typed API in one import, re-exported
from the modules by job: ``device``, ``seeding``, ``schedules``, ``mixup``, ``loop``,
``evaluation``, ``data.batches``, ``stage1``, ``stage2``, ``checkpoint``).
"""

__version__ = "0.2.0"
