"""The restricted unpickler: checkpoints that try to run code are refused before anything runs; checkpoints that
merely pickle foreign objects (a pytorch-lightning callback, numpy scalars) load, with the tensors intact.

Each malicious file, when loaded with plain pickle / torch.load(weights_only=False), would create a marker file.
Both torch formats are tested (zip and legacy), and a bare pickle (not written by torch) too.
"""
import io
import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from ldm.checkpoint import CheckpointError, detect_format, load_pickled, read_state_dict
from ldm.checkpoint import unpickle
from ldm.checkpoint.unpickle import Placeholder

FORMATS = {"zip": True, "legacy": False}   # _use_new_zipfile_serialization


def _save(obj, path, fmt: str) -> None:
    torch.save(obj, path, _use_new_zipfile_serialization=FORMATS[fmt])


def _weights() -> dict[str, torch.Tensor]:
    return {"model.diffusion_model.out.2.bias": torch.arange(4.0),
            "first_stage_model.quant_conv.weight": torch.linspace(-2, 2, 64).reshape(8, 8, 1, 1).half()}


class _CallsSystem:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _CallsExec:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


class _CallsPopen:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return subprocess.Popen, (["touch", str(self.marker)],)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("payload", [_CallsSystem, _CallsExec, _CallsPopen])
def test_code_in_pickle_is_refused_and_never_runs(tmp_path, fmt, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    _save({"state_dict": {**_weights(), "evil": payload(marker)}}, path, fmt)
    # Control: the payload really runs under an unrestricted load (so the test below can fail).
    if payload is _CallsExec and fmt == "zip":
        torch.load(path, weights_only=False)
        assert marker.exists()
        marker.unlink()
    with pytest.raises(CheckpointError, match="refusing to load") as info:
        read_state_dict(path)
    assert not marker.exists()
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_bare_pickle_with_code_is_refused(tmp_path):
    """A pickle not written by torch (protocol 4): refused while torch reads the legacy header."""
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_CallsSystem(marker), protocol=4))
    assert detect_format(path) == "ckpt-legacy"
    with pytest.raises(CheckpointError, match="posix.system|os.system|nt.system"):
        read_state_dict(path)
    assert not marker.exists()


@pytest.fixture
def fake_lightning(monkeypatch):
    """Stand-ins for pytorch_lightning modules, so that the saved pickle names them (without importing PL)."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    modules = {n: types.ModuleType(n) for n in names}

    class ModelCheckpoint:   # pickled by protocol 2 as NEWOBJ + BUILD, as a PL callback is
        def __init__(self):
            self.monitor, self.best_model_path = None, "/logs/last.ckpt"

    ModelCheckpoint.__module__ = names[-1]
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    modules[names[-1]].ModelCheckpoint = ModelCheckpoint
    for n, m in modules.items():
        monkeypatch.setitem(sys.modules, n, m)
    return ModelCheckpoint


def _lightning_checkpoint(ModelCheckpoint) -> dict:
    """The structure of a CompVis/PL checkpoint: callbacks keyed by class, a callback instance, numpy values."""
    return {
        "epoch": 6, "global_step": 470000, "pytorch-lightning_version": "1.4.2",
        "state_dict": _weights(),
        "callbacks": {ModelCheckpoint: {"best_model_score": None, "dirpath": "/logs"}},
        "loops": {"callback": ModelCheckpoint(), "score": np.float64(0.25), "hist": np.arange(3)},
        "optimizer_states": [], "lr_schedulers": [],
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_lightning_objects_become_inert_placeholders(tmp_path, fake_lightning, fmt):
    path = tmp_path / "sd.ckpt"
    _save(_lightning_checkpoint(fake_lightning), path, fmt)
    obj = load_pickled(path)
    for k, v in _weights().items():
        assert obj["state_dict"][k].dtype == v.dtype
        torch.testing.assert_close(obj["state_dict"][k], v, rtol=0, atol=0)
    (cls,) = obj["callbacks"]
    assert issubclass(cls, Placeholder) and cls is not fake_lightning
    assert f"{cls.__module__}.{cls.__qualname__}" == "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
    callback = obj["loops"]["callback"]
    assert isinstance(callback, cls)
    assert callback._pickle_state == {"monitor": None, "best_model_path": "/logs/last.ckpt"}
    assert not hasattr(callback, "best_model_path")       # state kept as data, never set as attributes
    with pytest.raises(CheckpointError):
        cls()                                              # placeholders cannot be called
    assert obj["loops"]["score"] == 0.25 and obj["loops"]["hist"].tolist() == [0, 1, 2]
    state_dict, found = read_state_dict(path)
    assert found == f"ckpt-{fmt}" and set(state_dict) == set(_weights())


def test_loading_does_not_import_lightning(tmp_path, fake_lightning):
    """In a fresh interpreter: loading a checkpoint that names PL classes leaves sys.modules without PL."""
    path = tmp_path / "sd.ckpt"
    _save(_lightning_checkpoint(fake_lightning), path, "zip")
    code = ("import sys; from ldm.checkpoint import read_state_dict; sd, _ = read_state_dict(sys.argv[1]); "
            "print(len(sd), sorted(m for m in sys.modules if 'lightning' in m))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.stdout.split() == ["2", "[]"]


def test_protocol0_inst_with_args_is_refused(tmp_path):
    """Protocol 0 `INST` with arguments calls the named class or function: refused like REDUCE."""
    marker = tmp_path / "pwned"
    data = b"(S'touch " + str(marker).encode() + b"'\nios\nsystem\n."
    with pytest.raises(CheckpointError, match="refusing"):
        unpickle.loads(data)
    assert not marker.exists()


def test_allow_list_does_not_resolve_dangerous_builtins():
    for module, name in [("builtins", "getattr"), ("builtins", "eval"), ("__builtin__", "exec"), ("torch", "load"),
                         ("torch._utils", "_rebuild_device_tensor_from_numpy"), ("numpy", "load")]:
        obj = unpickle.RestrictedUnpickler(io.BytesIO(b"")).find_class(module, name)
        assert isinstance(obj, type) and issubclass(obj, Placeholder), (module, name)
    assert unpickle.RestrictedUnpickler(io.BytesIO(b"")).find_class("torch._utils", "_rebuild_tensor_v2") \
        is torch._utils._rebuild_tensor_v2


@pytest.mark.filterwarnings("ignore::FutureWarning")   # torch.jit.script/save are deprecated
def test_torchscript_archive_is_refused(tmp_path):
    """torch.load would pass a TorchScript zip on to torch.jit.load, which runs the archive's code."""
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    with pytest.raises(CheckpointError, match="TorchScript archive"):
        read_state_dict(path)
