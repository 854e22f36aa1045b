"""The LAS related functions ε_y = f(N_y) in numpy, for the report's form study.

One copy for the library and the report: :func:`mislas.spec.related_function` (torch-free;
seed Eq. 3.a–3.c and 7), re-exported here under the name the report used.
"""

from __future__ import annotations

from mislas.spec import related_function

__all__ = ["related_function"]
