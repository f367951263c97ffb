"""A restricted unpickler for PyTorch `.ckpt` / `.pt` / `.bin` files: tensors and plain data, never code.

A CompVis checkpoint is a pickle, and a pickle is a small program: its GLOBAL opcodes name any importable object
and its REDUCE opcodes call them. Real SD-v1 files pickle more than tensors (a pytorch-lightning `ModelCheckpoint`
among the callbacks, sometimes numpy scalars), so `torch.load(weights_only=True)` refuses them, while plain
`torch.load` would import pytorch-lightning and run whatever the file asks for.

`RestrictedUnpickler.find_class` resolves only the names in `_ALLOWED` (tensor and storage rebuilders, dtypes,
plain containers, numpy scalars/arrays) and never imports anything else. Every other name becomes an inert
`Placeholder` class with the same name:
* used as a value (e.g. the class used as a key of the callbacks dict) it is just that placeholder;
* instantiated through NEWOBJ (`cls.__new__(cls, *args)`, how protocol-2 pickles rebuild plain objects), it gives
  an inert instance; BUILD stores the object's state on it without running anything;
* *called* (REDUCE, or INST/OBJ with arguments), which is how a pickle runs `os.system(...)` or `eval(...)`, it
  raises `CheckpointError`: loading stops before anything runs.
The file's tensors are then exactly those torch would have produced. The loader goes through `torch.load` with
this module as `pickle_module`, so torch's own zip reader and legacy-format reader handle the storages.
"""
from __future__ import annotations

import _codecs
import collections
import io
import pickle
from typing import Any, BinaryIO

import torch

from ldm.checkpoint.errors import CheckpointError

# Python-2 module names that pickles of protocol < 3 may use (pickle's fix_imports would map them).
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes (numpy raw data), limited to latin-1."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise CheckpointError(f"pickle asks for _codecs.encode(..., {encoding!r}); only latin1 is allowed")
    return _codecs.encode(text, encoding)


def _numpy_allowed() -> dict[tuple[str, str], Any]:
    """numpy scalars, dtypes and arrays (pytorch-lightning callback state can hold them)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a torch dependency in practice
        return {}
    core = getattr(np, "_core", None) or np.core       # numpy 2 renamed numpy.core to numpy._core
    out: dict[tuple[str, str], Any] = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "scalar")] = core.multiarray.scalar
        out[(mod, "_reconstruct")] = core.multiarray._reconstruct
    out[("numpy", "dtype")] = np.dtype
    out[("numpy", "ndarray")] = np.ndarray
    for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"):
        if hasattr(np, "dtypes") and hasattr(np.dtypes, name):
            out[("numpy.dtypes", name)] = getattr(np.dtypes, name)
    return out


def _torch_allowed() -> dict[tuple[str, str], Any]:
    rebuilders = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                  "_rebuild_parameter_with_state")
    out: dict[tuple[str, str], Any] = {
        ("torch._utils", name): getattr(torch._utils, name) for name in rebuilders if hasattr(torch._utils, name)
    }
    out.update({
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("torch", "Tensor"): torch.Tensor,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
        ("torch.storage", "UntypedStorage"): torch.UntypedStorage,
        ("torch", "UntypedStorage"): torch.UntypedStorage,
    })
    for name in dir(torch):  # dtypes (torch.float16, ...) and the legacy typed storage classes (torch.FloatStorage)
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype) or (name.endswith("Storage") and isinstance(value, type)):
            out[("torch", name)] = value
    return out


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("_codecs", "encode"): _latin1_encode,
    **_torch_allowed(),
    **_numpy_allowed(),
}


class _PlaceholderMeta(type):
    """Metaclass whose instances (placeholder classes) refuse to be called."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise CheckpointError(
            f"the pickle tries to call {cls.__module__}.{cls.__qualname__}, which is not on the allow list "
            "(tensors, storages, plain containers); refusing to load it. If you trust the file, convert it to "
            ".safetensors with a trusted tool")

    def __repr__(cls) -> str:
        return f"<placeholder {cls.__module__}.{cls.__qualname__}>"


class Placeholder(metaclass=_PlaceholderMeta):
    """An inert stand-in for an object of a class that the pickle names but we do not import."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:  # NEWOBJ calls this directly, not cls(...)
        obj = object.__new__(cls)
        object.__setattr__(obj, "_pickle_args", args)
        object.__setattr__(obj, "_pickle_state", None)
        return obj

    def __setstate__(self, state: Any) -> None:  # BUILD: keep the state as data, set no attributes
        object.__setattr__(self, "_pickle_state", state)

    def __reduce__(self) -> Any:
        raise CheckpointError(f"refusing to pickle a placeholder for {type(self).__module__}.{type(self).__qualname__}")

    def __repr__(self) -> str:
        return f"<placeholder instance of {type(self).__module__}.{type(self).__qualname__}>"


def placeholder_class(module: str, name: str) -> type:
    """A fresh Placeholder subclass named `module.name` (nothing is imported)."""
    return _PlaceholderMeta(name, (Placeholder,), {"__module__": module, "__qualname__": name})


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only allow-listed globals and turns every other one into a placeholder."""

    def __init__(self, file: BinaryIO, **kwargs: Any):
        super().__init__(file, **kwargs)
        self.placeholders: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        key = (module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        if key not in self.placeholders:
            self.placeholders[key] = placeholder_class(module, name)
        return self.placeholders[key]


def load(file: BinaryIO, **kwargs: Any) -> Any:
    """`pickle.load` with the restricted unpickler (torch's legacy format reads its header with this)."""
    return RestrictedUnpickler(file, **kwargs).load()


def loads(data: bytes, **kwargs: Any) -> Any:
    """`pickle.loads` with the restricted unpickler."""
    return load(io.BytesIO(data), **kwargs)


Unpickler = RestrictedUnpickler  # the names torch.load expects of a pickle_module
