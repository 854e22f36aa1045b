"""Files are data, never code: the one place a checkpoint or a CIFAR pickle is read.

Why: researchers download Stage-1 checkpoints and share study folders, and a pickle can run
any function it names when it is loaded. Every torch file (ours, the reference's released
ones, ``--pretrained`` weights) goes through :func:`load_torch_file`: ``torch.load`` with
``weights_only=True`` plus the few NumPy types the reference's files really hold
(:data:`TORCH_SAFE_GLOBALS`). Every CIFAR python pickle goes through :func:`load_cifar_pickle`,
an unpickler that knows only the names a CIFAR batch needs (:data:`CIFAR_GLOBALS`). A file
that names anything else is refused with :class:`UnsafeFileError` (a usage error: exit 2)
naming the file and the global, before that global is looked up.
"""

from __future__ import annotations

import importlib
import pickle
import pickletools
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from mislas.errors import UsageError

__all__ = [
    "CIFAR_GLOBALS", "TORCH_SAFE_GLOBALS", "UnsafeFileError", "load_cifar_pickle", "load_torch_file",
    "pickled_globals",
]


class UnsafeFileError(UsageError):
    """A file that names a Python global outside the allowed list: loading it could run code."""

    def __init__(self, path: Path | str, global_name: str) -> None:
        super().__init__(f"{path}: refused, it holds {global_name}, which is code, not data; only tensors, "
                         "containers, numbers, strings and the NumPy types listed in mislas.safe_load are "
                         "loaded (files are data, never code)")
        self.path = Path(path)
        self.global_name = global_name


def _multiarray() -> Any:
    try:
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:  # NumPy 1.x
        return importlib.import_module("numpy.core.multiarray")


_SCALAR_DTYPES = (np.float64, np.float32, np.int64, np.int32)
"""NumPy scalar types our readers accept inside torch files: the reference's ``its_ece`` (and
a ``best_acc1`` kept as a NumPy number) are float64; float32 / int64 / int32 cover the same
values computed in single precision or as counts."""

TORCH_SAFE_GLOBALS: list[Any] = [
    (_multiarray().scalar, "numpy.core.multiarray.scalar"),  # a NumPy scalar as NumPy 1.x pickles it
    (_multiarray().scalar, "numpy._core.multiarray.scalar"),  # ... and as NumPy 2 pickles it
    np.dtype,  # the scalar's dtype, rebuilt by calling numpy.dtype("f8", False, True)
    *[type(np.dtype(t)) for t in _SCALAR_DTYPES],  # numpy.dtypes.Float64DType ...: the dtype's own setstate
]
"""The globals :func:`load_torch_file` allows beyond torch's own weights-only set (tensors,
state dicts, containers, numbers, strings): NumPy scalars, by both of NumPy's module names."""

_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def load_torch_file(path: Path | str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with :data:`TORCH_SAFE_GLOBALS`.

    A missing or unreadable file is a :class:`UsageError`; one whose pickle names another
    global is an :class:`UnsafeFileError` naming it (nothing it names is ever called).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(TORCH_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL_IN_MESSAGE.search(str(exc))
        name = found.group(1) if found else _first_unsafe_global(path)
        if name is not None:
            raise UnsafeFileError(path, name) from None
        raise UsageError(f"checkpoint {path} cannot be read as a weights-only torch file "
                         f"(UnpicklingError: {_weights_only_reason(exc)})") from None
    except Exception as exc:  # torch raises many types for foreign or damaged files
        raise UsageError(f"checkpoint {path} cannot be read as a weights-only torch file "
                         f"({type(exc).__name__}: {_first_line(exc)})") from None


def _weights_only_reason(exc: BaseException) -> str:
    """The line of torch's weights-only message that says what failed (not its preamble)."""
    lines = [re.sub(r"^\(\d+\)\s*", "", line.strip()) for line in str(exc).splitlines() if line.strip()]
    preamble = ("Weights only load failed", "In PyTorch 2.6", "Check the documentation", "Please file an issue")
    useful = [line for line in lines if not line.startswith(preamble) and "WeightsUnpickler error" not in line]
    return (useful[0] if useful else lines[0] if lines else "")[:200]


def _first_unsafe_global(path: Path) -> str | None:
    """Name the first global the file's pickle needs that is not allowed.

    The first global named by the file's pickle that is not allowed (for messages only:
    the file is scanned by :mod:`pickletools`, never unpickled).
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                member = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                data = zf.read(member) if member else b""
        else:
            data = path.read_bytes()
        names = pickled_globals(data)
    except Exception:  # a damaged file: no name to give
        return None
    allowed = {f"{obj.__module__}.{obj.__qualname__}" if not isinstance(obj, tuple) else obj[1]
               for obj in TORCH_SAFE_GLOBALS}
    allowed.update(_torch_default_allowed())
    return next((n for n in names if n not in allowed), None)


def _torch_default_allowed() -> set[str]:
    getter: Callable[[], dict[str, Any]] | None = getattr(
        importlib.import_module("torch._weights_only_unpickler"), "_get_allowed_globals", None)
    return set(getter()) if getter is not None else set()


def pickled_globals(data: bytes) -> list[str]:
    """``module.name`` of every GLOBAL / STACK_GLOBAL in the first pickle of ``data``, in order."""
    names: list[str] = []
    strings: list[str | None] = []  # what each opcode pushed, where it is a string (memo gets included)
    memo: dict[int, str | None] = {}
    for opcode, arg, _ in pickletools.genops(data):
        pushed: str | None = None
        if opcode.name == "GLOBAL":
            names.append(str(arg).replace(" ", "."))
        elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2 and None not in strings[-2:]:
            names.append(f"{strings[-2]}.{strings[-1]}")
        elif opcode.name == "MEMOIZE":
            memo[len(memo)] = strings[-1] if strings else None
            continue
        elif opcode.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(str(arg))] = strings[-1] if strings else None
            continue
        elif opcode.name in ("GET", "BINGET", "LONG_BINGET"):
            pushed = memo.get(int(str(arg)))
        elif isinstance(arg, str) and "UNICODE" in opcode.name:
            pushed = arg
        strings.append(pushed)
    return names


# --- CIFAR python pickles ---------------------------------------------------------------------

_NUMERIC_KINDS = "biuf"


def _dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype[Any]:
    """``numpy.dtype`` for numbers only: an object dtype would unpickle arbitrary elements."""
    if isinstance(spec, bytes):
        spec = spec.decode("latin1")
    dt: np.dtype[Any] = np.dtype(spec, align=bool(align), copy=bool(copy))
    if dt.kind not in _NUMERIC_KINDS:
        raise pickle.UnpicklingError(f"numpy.dtype {dt.str!r} (only numeric dtypes are data here)")
    return dt


def _reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    """NumPy's ``_reconstruct`` for a plain ndarray only."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"_reconstruct of {subtype!r} (only numpy.ndarray)")
    return np.ndarray.__new__(np.ndarray, shape, _dtype(dtype_code))


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """NumPy's protocol-5 array reader, for numeric dtypes."""
    dt = dtype if isinstance(dtype, np.dtype) else _dtype(dtype)
    if dt.kind not in _NUMERIC_KINDS:
        raise pickle.UnpicklingError(f"numpy.dtype {dt.str!r} (only numeric dtypes are data here)")
    return np.frombuffer(buf, dtype=dt).reshape(shape, order=order).copy()


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode(str, "latin1")``: how Python 3 writes bytes in a protocol 0-2 pickle."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode other than (str, 'latin1')")
    return text.encode("latin1")


CIFAR_GLOBALS: dict[tuple[str, str], Any] = {
    # the official batches (Python 2 cPickle, protocol 2) hold a dict of byte-string keys ->
    # a uint8 ndarray [N, 3072] (b"data"), lists of ints (labels), byte strings (names):
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    # the same dict re-pickled by Python 3 with protocol 5 (numpy's in-band buffer) or 2 (bytes):
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1,
}
"""The only globals a CIFAR pickle may name, each mapped to a restricted stand-in."""


class _CifarUnpickler(pickle.Unpickler):
    def __init__(self, fh: BinaryIO, path: Path) -> None:
        super().__init__(fh, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        found = CIFAR_GLOBALS.get((module, name))
        if found is None:
            raise UnsafeFileError(self.path, f"{module}.{name}")
        return found


def load_cifar_pickle(path: Path | str) -> Any:
    """One CIFAR python batch, unpickled with :data:`CIFAR_GLOBALS` only (byte-string keys)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            return _CifarUnpickler(fh, path).load()
    except UnsafeFileError:
        raise
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise UsageError(f"{path}: cannot read a CIFAR python pickle ({type(exc).__name__}: {_first_line(exc)})") \
            from None
