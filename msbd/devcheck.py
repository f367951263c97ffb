"""Device discipline without a GPU: run code as if a CUDA device existed, and catch what real CUDA would reject.

`EmulatedCUDA` is a torch function mode. Inside it, a tensor created with `device="cuda"`, moved with `.to("cuda")`
/ `.cuda()`, or computed from such a tensor lives on the CPU but is *tagged* as being on the emulated device: its
`.device` reads `cuda:0`, `.is_cuda` is True. Every torch call is then checked the way CUDA checks it:

* an op mixing a tagged tensor with an untagged tensor of one element or more is a **mismatch** (real CUDA raises
  "Expected all tensors to be on the same device"); 0-dim CPU tensors mix freely, as on CUDA. Copies (`to`, `copy_`,
  slice assignment) and CPU index tensors are allowed, as on CUDA;
* `.numpy()` of a tagged tensor is a mismatch (CUDA raises); a CUDA-device factory call with a CPU generator is too;
* host syncs are counted: `.item()`, `.tolist()`, `bool()` / `float()` / `int()` of a tagged tensor and copies back
  to the CPU; so are host-to-device copies (`h2d`) of non-scalar tensors.

`torch.cuda.is_available()` reads True inside the mode, `torch.cuda.mem_get_info()` returns the emulated card's
free and total bytes, and `synchronize`, `empty_cache`, peak-memory statistics and `pin_memory` are harmless.

    with EmulatedCUDA() as emu:          # strict=True (default): the first mismatch raises, with its call site
        run_something(device="cuda")
    emu.report()                         # counts of mismatches, syncs and h2d copies, by call site

`python -m msbd.devcheck scripts/run.py +experiment=edit device=cuda ...` runs a script under the mode (the CI's
device check does this with the edit CLI). The emulation checks *placement*, not speed or numerics: every op still
runs on the CPU in the requested dtype, so fp16/bf16 dtype mixing fails here as it would on the GPU.
"""
from __future__ import annotations

import collections
import os
import runpy
import sys
import time
import traceback
from contextlib import ExitStack
from typing import Any
from unittest import mock

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

_TAG = "_msbd_emulated_cuda"
_DEVICE = torch.device("cuda", 0)
# calls that may legitimately take tensors on both devices (copies, CPU index tensors, metadata)
_MIXING_ALLOWED = {"to", "copy_", "__setitem__", "__getitem__", "index_put_", "index_put", "__set__", "__get__",
                   "size", "dim", "numel", "is_floating_point", "is_complex", "element_size", "stride",
                   "data_ptr", "is_contiguous", "untyped_storage", "_has_compatible_shallow_copy_type", "cpu",
                   "type", "detach", "clone", "requires_grad_", "is_pinned", "pin_memory", "__repr__", "__format__",
                   "numpy", "item", "tolist", "__bool__", "__float__", "__int__", "__index__", "__len__",
                   "__iter__", "__hash__", "__reduce_ex__", "__deepcopy__", "storage_offset", "__array__"}
_SYNCS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "__array__"}
_FACTORY_DEVICE_KW = "device"


class _Event:
    """torch.cuda.Event stand-in: record() reads the wall clock (ops run synchronously on the CPU here)."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False) -> None:
        self.t = None

    def record(self, stream=None) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, end: "_Event") -> float:
        return (end.t - self.t) * 1000.0


class DeviceMismatch(RuntimeError):
    """An op that real CUDA would reject (tensors on two devices, numpy() of a device tensor, ...)."""


def is_tagged(tensor: Any) -> bool:
    return isinstance(tensor, torch.Tensor) and getattr(tensor, _TAG, False)


def _tag(tensor: Any) -> Any:
    if isinstance(tensor, torch.Tensor):
        try:
            setattr(tensor, _TAG, True)
        except (AttributeError, RuntimeError):  # pragma: no cover - tensors that refuse attributes
            pass
    return tensor


def _untag(tensor: torch.Tensor) -> torch.Tensor:
    if getattr(tensor, _TAG, False):
        delattr(tensor, _TAG)
    return tensor


def _is_cuda(device: Any) -> bool:
    if device is None or isinstance(device, torch.Tensor):
        return False
    try:
        return torch.device(device).type == "cuda"
    except (RuntimeError, TypeError):
        return False


def _name(func: Any) -> str:
    name = getattr(func, "__name__", None) or repr(func)
    return name


def _call_site() -> str:
    """The innermost frame of project code (not torch, not this file) that made the call."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        path = frame.filename
        if "site-packages" in path or path == __file__ or "/torch/" in path or path.startswith("<"):
            continue
        return f"{os.path.relpath(path)}:{frame.lineno} ({frame.name})"
    return "?"


class EmulatedCUDA(TorchFunctionMode):
    """Emulate one CUDA device on the CPU; record (or raise on) what real CUDA would reject. See the module doc."""

    def __init__(self, strict: bool = True, total_bytes: int = 80 * 2**30, free_bytes: int | None = None) -> None:
        super().__init__()
        self.strict = strict
        self.total_bytes, self.free_bytes = total_bytes, total_bytes if free_bytes is None else free_bytes
        self.mismatches: collections.Counter[str] = collections.Counter()
        self.syncs: collections.Counter[str] = collections.Counter()
        self.h2d: collections.Counter[str] = collections.Counter()
        self._patches = ExitStack()

    # -- entering / leaving: torch.cuda reads as available -------------------------------------------------
    def __enter__(self):
        cuda = torch.cuda
        for name, value in {"is_available": lambda: True, "device_count": lambda: 1,
                            "mem_get_info": lambda device=None: (self.free_bytes, self.total_bytes),
                            "synchronize": lambda device=None: self._count(self.syncs, "synchronize"),
                            "empty_cache": lambda: None, "current_device": lambda: 0,
                            "reset_peak_memory_stats": lambda device=None: None,
                            "max_memory_allocated": lambda device=None: 0, "memory_allocated": lambda device=None: 0,
                            "get_device_name": lambda device=None: "emulated CUDA (msbd.devcheck)",
                            "get_device_capability": lambda device=None: (9, 0),
                            "is_bf16_supported": lambda including_emulation=True: True}.items():
            self._patches.enter_context(mock.patch.object(cuda, name, value))
        stream = mock.Mock(is_capturing=lambda: False, synchronize=lambda: None, wait_stream=lambda other: None)
        self._patches.enter_context(mock.patch.object(torch.accelerator, "current_stream", lambda device=None: stream))
        self._patches.enter_context(mock.patch.object(cuda, "current_stream", lambda device=None: stream))
        self._patches.enter_context(mock.patch.object(cuda, "is_current_stream_capturing", lambda: False))
        self._patches.enter_context(mock.patch.object(cuda, "Event", _Event))
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._patches.close()

    # -- bookkeeping -----------------------------------------------------------------------------------------
    def _count(self, counter: collections.Counter, what: str) -> None:
        counter[f"{what} at {_call_site()}"] += 1

    def _mismatch(self, message: str) -> None:
        site = _call_site()
        self.mismatches[f"{message} at {site}"] += 1
        if self.strict:
            raise DeviceMismatch(f"{message} at {site}")

    @property
    def n_syncs(self) -> int:
        return sum(self.syncs.values())

    @property
    def n_h2d(self) -> int:
        return sum(self.h2d.values())

    def report(self) -> str:
        lines = [f"emulated CUDA: {sum(self.mismatches.values())} mismatches, {self.n_syncs} host syncs, "
                 f"{self.n_h2d} host-to-device copies"]
        for title, counter in (("mismatch", self.mismatches), ("sync", self.syncs), ("h2d", self.h2d)):
            lines += [f"  {title}: {n} x {where}" for where, n in counter.most_common(12)]
        return "\n".join(lines)

    # -- the mode --------------------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = _name(func)
        owner = getattr(func, "__self__", None)
        # property access: .device / .is_cuda / .grad of tagged tensors
        if name == "__get__" and args:
            attr = getattr(owner, "__name__", "")
            tensor = args[0]
            if attr == "device" and is_tagged(tensor):
                return _DEVICE
            if attr == "is_cuda" and is_tagged(tensor):
                return True
            out = func(*args, **kwargs)
            if attr in ("grad", "data", "real", "imag", "T", "mT", "H", "mH") and is_tagged(tensor):
                _tag(out)
            return out
        if name == "__set__" and len(args) >= 2:
            out = func(*args, **kwargs)
            if getattr(owner, "__name__", "") == "data":
                (_tag if is_tagged(args[1]) else _untag)(args[0])
            return out
        if name in ("to", "cuda", "cpu", "pin_memory", "is_pinned") and args and isinstance(args[0], torch.Tensor):
            return self._move(func, name, args, kwargs)
        if name == "numpy" and args and is_tagged(args[0]):
            self._mismatch("numpy() of a CUDA tensor (copy it to the CPU first)")
        if name in _SYNCS and args and is_tagged(args[0]):
            self._count(self.syncs, name)
        # factories with device="cuda"
        to_device = _is_cuda(kwargs.get(_FACTORY_DEVICE_KW))
        if to_device:
            kwargs[_FACTORY_DEVICE_KW] = "cpu"
            gen = kwargs.get("generator")
            if isinstance(gen, torch.Generator) and gen.device.type == "cpu":
                self._mismatch(f"{name}(device='cuda') with a CPU generator")
        flat, _ = tree_flatten((args, kwargs))
        tensors = [t for t in flat if isinstance(t, torch.Tensor)]
        tagged = any(is_tagged(t) for t in tensors)
        if tagged and name not in _MIXING_ALLOWED:
            plain = [t for t in tensors if not is_tagged(t) and t.dim() > 0]
            if plain:
                shapes = ", ".join(str(tuple(t.shape)) for t in plain[:3])
                self._mismatch(f"{name}: CUDA and CPU tensors mixed (CPU: {shapes})")
        if name == "__setitem__" and len(args) >= 3:
            target, value = args[0], args[2]
            if is_tagged(target) and isinstance(value, torch.Tensor) and not is_tagged(value) and value.dim() > 0:
                self._count(self.h2d, "slice assignment from the CPU")
            if not is_tagged(target) and is_tagged(value):
                self._count(self.syncs, "slice assignment to the CPU")
        if name == "copy_" and len(args) >= 2:
            if is_tagged(args[0]) and not is_tagged(args[1]) and args[1].dim() > 0:
                self._count(self.h2d, "copy_ from the CPU")
            if not is_tagged(args[0]) and is_tagged(args[1]):
                self._count(self.syncs, "copy_ to the CPU")
        out = func(*args, **kwargs)
        if (tagged or to_device) and name not in _SYNCS and name != "numpy":
            if name in ("__setitem__", "copy_") and not is_tagged(args[0]):
                return out     # a device-to-host copy into a CPU tensor: the target stays on the CPU
            for t in tree_flatten(out)[0]:
                _tag(t)
        return out

    def _move(self, func, name: str, args, kwargs):
        tensor = args[0]
        if name == "pin_memory":
            return tensor.clone()       # pinned host memory needs a driver; a CPU copy stands in
        if name == "is_pinned":
            return False
        if name == "cpu":
            if is_tagged(tensor):
                self._count(self.syncs, "cpu()")
                return _untag(func(*args, **kwargs).clone())
            return func(*args, **kwargs)
        if name == "cuda":
            out = tensor.clone()
            if not is_tagged(tensor) and tensor.dim() > 0:
                self._count(self.h2d, "cuda()")
            return _tag(out)
        # Tensor.to(device?, dtype?, non_blocking?, copy?, memory_format?) or .to(other_tensor, ...)
        rest, kwargs = list(args[1:]), dict(kwargs)
        copy = bool(kwargs.pop("copy", False))
        if rest and isinstance(rest[0], torch.Tensor) or isinstance(kwargs.get("other"), torch.Tensor):
            other = rest.pop(0) if rest else kwargs.pop("other")
            target, dtype = (_DEVICE if is_tagged(other) else torch.device("cpu")), other.dtype
            non_blocking = bool(rest[0]) if rest else bool(kwargs.get("non_blocking", False))
            memory_format = None
        else:
            with torch._C.DisableTorchFunction():
                target, dtype, non_blocking, memory_format = torch._C._nn._parse_to(*rest, **kwargs)
        cpu_kwargs = {"dtype": dtype, "copy": copy}
        if memory_format is not None:
            cpu_kwargs["memory_format"] = memory_format
        out = func(tensor, **cpu_kwargs)
        if target is None:
            return _tag(out) if is_tagged(tensor) and out is not tensor else out
        if target.type == "cuda":
            if is_tagged(tensor):
                return _tag(out)
            if tensor.dim() > 0:
                self._count(self.h2d, "to(cuda)")
            return _tag(out.clone() if out is tensor else out)
        if is_tagged(tensor):                      # to the CPU
            self._count(self.syncs, "to(cpu)")
            return _untag(out.clone() if out is tensor else out)
        return out


def main(argv: list[str] | None = None) -> int:
    """python -m msbd.devcheck SCRIPT ARGS...: run a script under EmulatedCUDA(strict) and print the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m msbd.devcheck SCRIPT [ARGS...]", file=sys.stderr)
        return 2
    sys.argv = argv
    emu = EmulatedCUDA(strict=os.environ.get("MSBD_DEVCHECK_STRICT", "1") != "0")
    code = 0
    try:
        with emu:
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        print(emu.report(), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
