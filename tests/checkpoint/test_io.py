"""detforge's checkpoint format: round trip, weights_only loading, atomic writes, refusals."""

from __future__ import annotations

import os
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from detforge.checkpoint import io as ckio
from detforge.checkpoint.io import atomic_write, load_checkpoint, save_checkpoint
from detforge.checkpoint.pickle_safe import RestrictedUnpickler, UnsafePickleError, load_pickle


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))


def test_roundtrip_with_config_metadata_extra(tmp_path: Path) -> None:
    model = _model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(1, 3, 6, 6)).sum().backward()
    opt.step()
    config = {"model": {"num_classes": 3, "names": ["a", "b"]}, "lr": 0.1}
    meta = {"class_names": ["cat", "dog", "eel"], "iteration": 7, "ok": True, "t": (1, 2.5)}
    path = tmp_path / "ckpt.pth"
    save_checkpoint(
        path, model, config=config, metadata=meta, extra={"optimizer": opt.state_dict()}
    )

    raw = torch.load(path, weights_only=True)  # the format needs no unrestricted pickle
    assert raw["format"] == "detforge" and isinstance(raw["config"], str)
    ckpt = load_checkpoint(path)
    assert ckpt["config"] == config
    assert ckpt["metadata"]["class_names"] == ["cat", "dog", "eel"]
    assert ckpt["metadata"]["torch_version"] == str(torch.__version__)
    assert ckpt["metadata"]["t"] == (1, 2.5)
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt["model"][k], v)
    restored = torch.optim.SGD(_model(1).parameters(), lr=0.0, momentum=0.9)
    restored.load_state_dict(ckpt["extra"]["optimizer"])
    assert restored.param_groups[0]["lr"] == 0.1
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # umask, not 0600


def test_crash_mid_write_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt.pth"
    old = _model(0)
    save_checkpoint(path, old, metadata={"version": "old"})
    before = path.read_bytes()

    def crashing_save(obj: object, f: Any) -> None:
        half = before[: len(before) // 2]  # half a file, then the process "dies"
        if isinstance(f, str | os.PathLike):
            Path(f).write_bytes(half)
        else:
            f.write(half)
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(ckio.torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _model(1), metadata={"version": "new"})
    assert path.read_bytes() == before
    assert load_checkpoint(path)["metadata"]["version"] == "old"
    assert os.listdir(tmp_path) == ["ckpt.pth"]  # the temporary file is gone


def test_atomic_write_crash_in_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def fail(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ckio.os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(b"new"))
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


class _Marker:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, where: str) -> None:
        self.where = where

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.where),))


def test_load_refuses_unrestricted_pickle(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"format": "detforge", "format_version": 1, "x": _Marker(str(marker))}, path)
    with pytest.raises(UnsafePickleError, match=r"evil\.pth.*unrestricted pickle"):
        load_checkpoint(path)
    assert not marker.exists()


def test_load_rejects_foreign_and_broken_files(tmp_path: Path) -> None:
    torch.save({"weight": torch.zeros(2)}, tmp_path / "plain.pth")
    with pytest.raises(ValueError, match=r"plain\.pth is not a detforge checkpoint"):
        load_checkpoint(tmp_path / "plain.pth")
    bad = {"format": "detforge", "format_version": 1, "model": {"w": [1, 2]}}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth: field 'model' entry 'w'"):
        load_checkpoint(tmp_path / "bad.pth")
    future = {"format": "detforge", "format_version": 99, "model": {}}
    torch.save(future, tmp_path / "future.pth")
    with pytest.raises(ValueError, match="format_version"):
        load_checkpoint(tmp_path / "future.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"junk\.pth"):
        load_checkpoint(tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pth")


def test_save_rejects_unstorable_entries(tmp_path: Path) -> None:
    model = _model(0)
    with pytest.raises(TypeError, match=r"`metadata\['info'\]\[1\]` is a float64"):
        save_checkpoint(tmp_path / "a.pth", model, metadata={"info": [1, np.float64(2.0)]})
    with pytest.raises(TypeError, match=r"`extra\['fn'\]` is a builtin_function"):
        save_checkpoint(tmp_path / "a.pth", model, extra={"fn": print})
    with pytest.raises(TypeError, match="`config` must be a mapping"):
        save_checkpoint(tmp_path / "a.pth", model, config=[1, 2])  # type: ignore[arg-type]
    assert not (tmp_path / "a.pth").exists()


def test_safetensors_is_optional(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the package: a clear ImportError. With a stand-in module: the round trip."""
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match="optional `safetensors` package"):
        save_checkpoint(tmp_path / "m.safetensors", _model(0))

    store: dict[str, tuple[dict, dict]] = {}

    def save_file(tensors: dict, filename: str, metadata: dict) -> None:
        assert all(isinstance(v, str) for v in metadata.values())
        Path(filename).write_bytes(b"x")
        store[os.path.basename(filename)] = (dict(tensors), dict(metadata))

    def entry(path: str) -> tuple[dict, dict]:
        return store[os.path.basename(path)] if path in store else next(iter(store.values()))

    class SafeOpen:
        def __init__(self, path: str, framework: str) -> None:
            self.path = path

        def __enter__(self) -> SafeOpen:
            return self

        def __exit__(self, *args: object) -> None:
            return None

        def metadata(self) -> dict:
            return entry(self.path)[1]

    fake = types.ModuleType("safetensors")
    fake_torch = types.ModuleType("safetensors.torch")
    fake.safe_open = SafeOpen  # type: ignore[attr-defined]
    fake_torch.save_file = save_file  # type: ignore[attr-defined]
    fake_torch.load_file = lambda path: entry(path)[0]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "safetensors", fake)
    monkeypatch.setitem(sys.modules, "safetensors.torch", fake_torch)
    model = _model(0)
    step = torch.tensor(5)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, config={"a": 1}, metadata={"names": ["x"]}, extra={"step": step})
    ckpt = load_checkpoint(path)
    assert ckpt["config"] == {"a": 1} and ckpt["metadata"]["names"] == ["x"]
    assert torch.equal(ckpt["extra"]["step"], step)
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt["model"][k], v)


# ------------------------------------------------------------------ restricted unpickling
def test_restricted_unpickler_reads_numpy_py2_style(tmp_path: Path) -> None:
    arrays = {"conv1_w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.int64(3)}
    path = tmp_path / "blobs.pkl"
    path.write_bytes(pickle.dumps({"blobs": arrays, "cfg": "x"}, protocol=2))
    data = load_pickle(path)
    np.testing.assert_array_equal(data["blobs"]["conv1_w"], arrays["conv1_w"])
    assert data["blobs"]["n"] == 3 and data["cfg"] == "x"


@pytest.mark.parametrize(
    "payload",
    [
        b"cos\nsystem\n(S'touch pwned'\ntR.",  # os.system('touch pwned'), protocol 0
        b"cbuiltins\neval\n(S'1+1'\ntR.",
        b"cnumpy\nload\n(S'x.npy'\ntR.",  # a numpy global, but not an allowed one
    ],
)
def test_restricted_unpickler_refuses_other_globals(
    payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl: refusing to unpickle global"):
        load_pickle(path)
    with pytest.raises(pickle.UnpicklingError):  # also a plain UnpicklingError
        RestrictedUnpickler(open(path, "rb"), source="s").load()  # noqa: SIM115
    assert not (tmp_path / "pwned").exists()


def test_load_pickle_on_garbage(tmp_path: Path) -> None:
    (tmp_path / "g.pkl").write_bytes(b"\x00garbage")
    with pytest.raises(UnsafePickleError, match=r"g\.pkl: not a readable pickle"):
        load_pickle(tmp_path / "g.pkl")
