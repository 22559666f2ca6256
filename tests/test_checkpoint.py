"""Checkpoints: round trip, atomicity under simulated crashes, refusal of code-running pickles,
clear errors, and exact RNG replay."""

from __future__ import annotations

import collections
import errno
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl import checkpoint as C
from metarl.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    generator_state,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_generator_state,
    set_rng_state,
    to_weights_only,
)


def _state() -> dict:
    return {
        "iteration": 7,
        "learner": {"policy": collections.OrderedDict(w=torch.randn(3, 2), b=torch.zeros(2))},
        "param": torch.nn.Parameter(torch.ones(2)),
        "config": {"lr": 0.1, "hidden": (64, 64), "name": "maml-rl", "device": None, "flag": True},
        "history": [1.0, float("inf"), -2],
        "big": 2**100 + 1,  # beyond int64
        "meta": (torch.float32, torch.Size([2, 3]), b"raw"),
    }


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _assert_same(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b and type(a) is type(b)


def test_round_trip(tmp_path: Path) -> None:
    state = _state()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state)
    back = load_checkpoint(path)
    _assert_same(state, back)
    assert back["big"] == 2**100 + 1
    assert _temps(tmp_path) == []
    save_checkpoint(str(path), {"iteration": 8})  # overwrite, str path
    assert load_checkpoint(str(path)) == {"iteration": 8}


def test_saved_file_gets_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "c.pt", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "c.pt").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0o600


def test_numpy_values_are_refused_with_the_fix_and_converted_by_helper(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    bad = {"rng": {"numpy": [1, np.arange(3)]}}
    with pytest.raises(TypeError, match=r"state\['rng'\]\['numpy'\]\[1\] is a numpy.ndarray.*to_weights_only"):
        save_checkpoint(path, bad)
    with pytest.raises(TypeError, match=r"state\['x'\] is a numpy.float64"):
        save_checkpoint(path, {"x": np.float64(1.0)})
    with pytest.raises(TypeError, match=r"state\['out'\] is a pathlib.*str\(path\)"):
        save_checkpoint(path, {"out": tmp_path})
    with pytest.raises(TypeError, match="must be a dict"):
        save_checkpoint(path, [1, 2])  # type: ignore[arg-type]
    assert not path.exists() and _temps(tmp_path) == []
    good = to_weights_only({"a": np.arange(3, dtype=np.int32), "s": np.float32(0.5), "t": (np.int64(2), [np.ones(2)])})
    save_checkpoint(path, good)
    back = load_checkpoint(path)
    assert torch.equal(back["a"], torch.tensor([0, 1, 2], dtype=torch.int32))
    assert back["s"] == 0.5 and type(back["s"]) is float and back["t"][0] == 2
    assert torch.equal(back["t"][1][0], torch.ones(2, dtype=torch.float64))


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"iteration": 1, "w": torch.ones(4)})
    real_save = torch.save

    def crash(exc: BaseException):
        def partial_save(obj: object, f: object) -> None:
            real_save(obj, f)
            f.seek(0)  # type: ignore[attr-defined]
            f.truncate(100)  # type: ignore[attr-defined]  # half-written file
            raise exc
        return partial_save

    # Ctrl-C / an exception mid-write: propagates unchanged, old file intact, temp removed
    monkeypatch.setattr(C.torch, "save", crash(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"iteration": 2, "w": torch.zeros(4)})
    assert load_checkpoint(path)["iteration"] == 1 and _temps(tmp_path) == []

    # disk full while writing: a CheckpointError naming the path and the cause
    monkeypatch.setattr(C.torch, "save", crash(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    with pytest.raises(CheckpointError, match=rf"{path}.*No space left on device.*previous checkpoint"):
        save_checkpoint(path, {"iteration": 2})
    assert load_checkpoint(path)["iteration"] == 1 and _temps(tmp_path) == []

    # torch's zip writer reports failed writes as RuntimeError
    monkeypatch.setattr(C.torch, "save", crash(RuntimeError("PytorchStreamWriter failed writing file")))
    with pytest.raises(CheckpointError, match="PytorchStreamWriter"):
        save_checkpoint(path, {"iteration": 2})
    assert load_checkpoint(path)["iteration"] == 1 and _temps(tmp_path) == []


def test_fsync_or_rename_failure_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"iteration": 1})

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with monkeypatch.context() as m:
        m.setattr(C.os, "fsync", fail)
        with pytest.raises(CheckpointError, match="Input/output error"):
            save_checkpoint(path, {"iteration": 2})
    assert load_checkpoint(path)["iteration"] == 1 and _temps(tmp_path) == []
    with monkeypatch.context() as m:
        m.setattr(C.os, "replace", fail)
        with pytest.raises(CheckpointError, match=str(path)):
            save_checkpoint(path, {"iteration": 2})
    assert load_checkpoint(path)["iteration"] == 1 and _temps(tmp_path) == []


def _chmod_is_enforced(folder: Path) -> bool:
    """Root (and some filesystems) ignore directory permissions: detect it instead of guessing."""
    probe = folder / "probe"
    try:
        probe.write_bytes(b"")
    except PermissionError:
        return True
    probe.unlink()
    return False


def test_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    path = ro / "checkpoint.pt"
    save_checkpoint(path, {"iteration": 1})
    ro.chmod(0o500)
    try:
        if _chmod_is_enforced(ro):
            with pytest.raises(CheckpointError, match=rf"{path}.*Permission denied"):
                save_checkpoint(path, {"iteration": 2})
        else:  # running as root: simulate the refusal at the same place
            def deny(*args: object, **kwargs: object) -> int:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

            with monkeypatch.context() as m:
                m.setattr(C.os, "open", deny)
                with pytest.raises(CheckpointError, match=rf"{path}.*Permission denied.*writable"):
                    save_checkpoint(path, {"iteration": 2})
        assert load_checkpoint(path)["iteration"] == 1 and _temps(ro) == []
    finally:
        ro.chmod(0o700)
    with pytest.raises(CheckpointError, match="does not exist|No such file"):
        save_checkpoint(tmp_path / "missing" / "c.pt", {"iteration": 1})


class _Marker:
    """Unpickling this object creates a file (a stand-in for arbitrary code)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("kind", ["torch_zip", "pickle_protocol_0", "pickle_protocol_2", "pickle_protocol_4"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"iteration": 1, "learner": _Marker(marker)}
    if kind == "torch_zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(kind[-1])))
    if kind == "pickle_protocol_2":  # the payload is real: a plain unpickler runs it
        pickle.loads(path.read_bytes())
        assert marker.exists()
        marker.unlink()
    with pytest.raises(CheckpointError, match=rf"refusing to load {path}: not a weights-only checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_missing_truncated_corrupt_files_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointNotFoundError, match=f"no checkpoint at {missing}"):
        load_checkpoint(missing)
    with pytest.raises(FileNotFoundError):  # also catchable as the builtin
        load_checkpoint(missing)
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"w": torch.randn(100)})
    data = good.read_bytes()
    cases = {"truncated.pt": data[: len(data) // 2], "empty.pt": b"", "garbage.pt": b"not a checkpoint at all"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=rf"{tmp_path / name}: the file is truncated or corrupt"):
            load_checkpoint(tmp_path / name)
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)
    (tmp_path / "list.pt").write_bytes(b"")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint dict"):
        load_checkpoint(tmp_path / "list.pt")


def _draws() -> tuple:
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.standard_normal(),
            torch.rand(3).tolist(), torch.randn(2).tolist())


def test_rng_state_round_trip_reproduces_draws(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leave cached Gaussians in both Python's and NumPy's legacy generator
    np.random.standard_normal()
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    expected = _draws()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert _draws() != expected
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert _draws() == expected
    with pytest.raises(ValueError, match="lacks"):
        set_rng_state({"python": random.getstate()})


@pytest.mark.parametrize("bitgen", [np.random.PCG64, np.random.MT19937, np.random.Philox, np.random.SFC64,
                                    np.random.PCG64DXSM])
def test_generator_state_round_trip(tmp_path: Path, bitgen: type) -> None:
    g = np.random.Generator(bitgen(12345))
    g.random(7)
    g.integers(0, 10, size=3, dtype=np.uint32)  # leaves a buffered 32-bit half where the generator has one
    save_checkpoint(tmp_path / "g.pt", {"g": generator_state(g)})
    expected = (g.random(5).tolist(), g.integers(0, 2**63, size=3).tolist(), g.standard_normal(2).tolist())
    h = np.random.Generator(bitgen(0))
    set_generator_state(h, load_checkpoint(tmp_path / "g.pt")["g"])
    assert (h.random(5).tolist(), h.integers(0, 2**63, size=3).tolist(), h.standard_normal(2).tolist()) == expected


def test_generator_state_big_ints_survive_weights_only_load(tmp_path: Path) -> None:
    g = np.random.default_rng(2**120 + 5)
    raw = g.bit_generator.state
    assert raw["state"]["state"] > 2**64  # PCG64's 128-bit state really is beyond int64
    save_checkpoint(tmp_path / "g.pt", {"g": generator_state(g)})
    back = load_checkpoint(tmp_path / "g.pt")["g"]
    assert back["state"]["state"] == raw["state"]["state"] and back["state"]["inc"] == raw["state"]["inc"]
    with pytest.raises(ValueError, match="PCG64 bit generator but this Generator uses MT19937"):
        set_generator_state(np.random.Generator(np.random.MT19937(0)), back)
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        generator_state(np.random.RandomState(0))  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_and_map_location(tmp_path: Path) -> None:
    torch.cuda.manual_seed_all(5)
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state(), "w": torch.ones(2, device="cuda")})
    expected = torch.rand(3, device="cuda").tolist()
    torch.cuda.manual_seed_all(6)
    state = load_checkpoint(tmp_path / "c.pt", map_location="cuda")
    assert state["w"].is_cuda
    set_rng_state(state["rng"])  # state tensors landed on CUDA; set_rng_state moves them back
    assert torch.rand(3, device="cuda").tolist() == expected
    assert not load_checkpoint(tmp_path / "c.pt")["w"].is_cuda
