"""Atomic checkpoints, safe loading and RNG state.

Saving is atomic: the state is written to a temporary file next to the target, flushed and
``fsync``-ed, then moved over the target with ``os.replace`` (atomic on POSIX and Windows), and the
directory is ``fsync``-ed so the rename itself survives a power loss. A crash or a full disk at any
point leaves the previous checkpoint intact.

Loading uses ``torch.load(..., weights_only=True)`` only, so a checkpoint can hold tensors, numbers,
strings, bytes, ``None``, lists, tuples, dicts and sets, and nothing else: a file that would build
other objects (and could therefore run code while loading) is refused before anything runs. Because
of that, :func:`save_checkpoint` checks the state first and names any value ``torch.load`` would
later refuse (numpy arrays: :func:`to_weights_only` converts them).

RNG state: :func:`rng_state` / :func:`set_rng_state` capture Python's ``random``, NumPy's global
(legacy) generator and torch's CPU and CUDA generators; :func:`generator_state` /
:func:`set_generator_state` do the same for an explicit ``numpy.random.Generator``. All of it is
plain values (NumPy arrays become tagged lists of Python ints, which keep 64-bit unsigned words and
PCG64's 128-bit integers exact).
"""

from __future__ import annotations

import collections
import errno
import os
import pickle
import pickletools
import random
import re
import secrets
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "CheckpointNotFoundError",
    "check_weights_only",
    "generator_state",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_generator_state",
    "set_rng_state",
    "to_weights_only",
]


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file and the cause."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint at the given path (also a ``FileNotFoundError``)."""


# --------------------------------------------------------------------------------------------------
# what torch.load(weights_only=True) accepts

# Exact types only: numpy.float64 is a float subclass but pickles as a numpy object, which the
# weights-only unpickler refuses.
_SCALARS = (type(None), bool, int, float, complex, str, bytes, bytearray, torch.dtype, torch.device, torch.Size)
_TENSORS = (torch.Tensor, torch.nn.Parameter)
_SEQUENCES = (list, tuple, set)
_MAPPINGS = (dict, collections.OrderedDict)


def _describe(path: str, value: Any) -> str:
    cls = type(value)
    name = cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    if isinstance(value, (np.ndarray, np.generic)):
        fix = "convert it with metarl.checkpoint.to_weights_only(state) (arrays become tensors, numpy scalars numbers)"
    elif isinstance(value, os.PathLike):
        fix = "store str(path) instead"
    elif isinstance(value, torch.Tensor):
        fix = "store a plain tensor (tensor.as_subclass(torch.Tensor)) instead"
    else:
        fix = "store plain values instead (e.g. dataclasses.asdict(x), x.state_dict(), or a str)"
    return (f"checkpoint {path} is a {name}, which torch.load(weights_only=True) refuses to load; {fix}. "
            "Allowed: tensors, bool/int/float/complex/str/bytes/None, lists, tuples, sets, dicts.")


def check_weights_only(obj: Any, where: str = "state") -> None:
    """Raise ``TypeError`` naming the first value (e.g. ``state['rng']['numpy']``) that
    ``torch.load(weights_only=True)`` would refuse."""
    stack: list[tuple[str, Any]] = [(where, obj)]
    seen: set[int] = set()
    while stack:
        path, value = stack.pop()
        cls = type(value)
        if cls in _SCALARS or cls in _TENSORS:
            continue
        if cls in _SEQUENCES or cls in _MAPPINGS:
            if id(value) in seen:
                continue
            seen.add(id(value))
            if cls in _MAPPINGS:
                for k, v in value.items():
                    stack.append((f"{path} key {k!r}", k))
                    stack.append((f"{path}[{k!r}]", v))
            else:
                stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
            continue
        raise TypeError(_describe(path, value))


def to_weights_only(obj: Any) -> Any:
    """A copy of ``obj`` with numpy arrays turned into tensors and numpy scalars into Python numbers,
    recursing through dicts, lists and tuples (namedtuples become tuples)."""
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            return [to_weights_only(v) for v in obj.tolist()]
        try:
            return torch.from_numpy(np.ascontiguousarray(obj).copy())
        except TypeError:
            raise TypeError(
                f"cannot convert a numpy array of dtype {obj.dtype} to a tensor; store obj.tolist() instead"
            ) from None
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {to_weights_only(k): to_weights_only(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [to_weights_only(v) for v in obj]
        return out if isinstance(obj, list) else tuple(out)
    return obj


# --------------------------------------------------------------------------------------------------
# save / load


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable. Windows cannot open a directory; some filesystems refuse the fsync."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _open_temp(path: Path) -> tuple[int, Path]:
    # O_EXCL + a random name like tempfile.mkstemp, but with mode 0o666 so the umask applies and the
    # checkpoint gets the same permissions as a plain torch.save would give it (mkstemp: 0o600).
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path.parent))


def _cause(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror} (errno {e.errno})" if e.errno else e.strerror
    return f"{type(e).__name__}: {e}"


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``).

    ``state`` may hold only what ``torch.load(weights_only=True)`` accepts (see
    :func:`check_weights_only`; :func:`to_weights_only` converts numpy values).

    Raises:
        TypeError: ``state`` holds a value that could not be loaded back safely (named in the message).
        CheckpointError: the file could not be written (disk full, no permission, missing folder);
            the previous checkpoint at ``path`` is left untouched and no temporary file remains.
    """
    if not isinstance(state, dict):
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    check_weights_only(state)
    path = Path(path)
    directory = path.parent
    try:
        fd, tmp = _open_temp(path)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {_cause(e)} creating a temporary file in "
                              f"{directory}; check that the folder exists and is writable") from e
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        # torch's zip writer reports a failed write (e.g. ENOSPC) as a RuntimeError
        if isinstance(e, (OSError, RuntimeError)):
            fix = " Free disk space or fix permissions and retry." if isinstance(e, OSError) else ""
            raise CheckpointError(f"cannot write checkpoint {path}: {_cause(e)}; the previous checkpoint "
                                  f"(if any) is unchanged.{fix}") from e
        raise
    try:
        _fsync_dir(directory)
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} was written but its folder could not be synced to disk: "
                              f"{_cause(e)}") from e


_WO_BOILERPLATE = re.compile(
    r"^(Weights only load failed|In PyTorch 2\.6|Re-running `torch\.load`|Please file an issue|Check the "
    r"documentation|\(\d\)|WeightsUnpickler error:\s*$|This file can still be loaded|Do it only if)"
)


def _refusal_detail(message: str) -> str:
    lines = [ln.strip() for ln in message.splitlines()]
    keep = [ln for ln in lines if ln and not _WO_BOILERPLATE.match(ln)]
    detail = " ".join(keep) or message.strip().splitlines()[0]
    return re.split(r"(?<=\.)\s", detail, maxsplit=1)[0][:300]  # the first sentence names the culprit


_CODE_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "REDUCE", "BUILD"})


def _looks_like_pickle(path: Path) -> bool:
    """Whether an unpickling refusal is about a real pickle (refuse: it could run code) rather than a
    damaged file: a torch zip archive, a pickle with a protocol header, or a headerless (protocol 0/1)
    pickle that imports or calls something. ``pickletools.genops`` only parses; nothing is executed."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            if head == b"PK" or head[:1] == b"\x80":
                return True
            f.seek(0)
            return any(op.name in _CODE_OPCODES for op, _, _ in pickletools.genops(f))
    except Exception:  # unreadable or not parseable as a pickle: damaged
        return False


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``torch.load(weights_only=True)``.

    Args:
        path: the checkpoint file.
        map_location: where tensors go (``"cpu"``, ``"cuda"``, a ``torch.device``, ...), as ``torch.load``.

    Raises:
        CheckpointNotFoundError: no file at ``path`` (also a ``FileNotFoundError``).
        CheckpointError: the file is not a weights-only checkpoint (refused: nothing in it was run),
            is truncated or corrupt, or cannot be read; the message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"no checkpoint at {path}: the file does not exist; check the path")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; pass the file (e.g. {path}/checkpoint.pt)")
    try:
        with warnings.catch_warnings():
            # a foreign pickle with a newer protocol warns before it is refused; the refusal says it all
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        detail = _refusal_detail(str(e))
        if not _looks_like_pickle(path) and "global" not in detail.lower():
            raise CheckpointError(
                f"cannot load checkpoint {path}: the file is truncated or corrupt, or not a PyTorch checkpoint "
                f"({detail}); use an earlier checkpoint or restart the run"
            ) from None
        raise CheckpointError(
            f"refusing to load {path}: not a weights-only checkpoint ({detail}). Loading it "
            "could run arbitrary code, so nothing in it was executed. metarl checkpoints hold only tensors "
            "and plain values; if you trust the file, convert it yourself with torch.load(weights_only=False)"
        ) from None
    except (EOFError, KeyError, IndexError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(
            f"cannot load checkpoint {path}: the file is truncated or corrupt ({_cause(e)}); "
            "use an earlier checkpoint or restart the run"
        ) from e
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {_cause(e)}") from e
    except RuntimeError as e:
        msg = str(e)
        if "PytorchStreamReader" in msg or "zip archive" in msg or "corrupt" in msg:
            raise CheckpointError(
                f"cannot load checkpoint {path}: the file is truncated or corrupt ({msg.split('. ')[0]}); "
                "use an earlier checkpoint or restart the run"
            ) from e
        raise CheckpointError(f"cannot load checkpoint {path} (map_location={map_location!r}): {msg}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a checkpoint dict")
    return state


# --------------------------------------------------------------------------------------------------
# RNG state

_ND = "__ndarray__"


def _encode(value: Any) -> Any:
    """numpy arrays -> ``{"__ndarray__": nested lists of Python ints/floats, "dtype": str}``; numpy
    scalars -> Python numbers; dicts/lists/tuples recursively."""
    if isinstance(value, np.ndarray):
        return {_ND: value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_encode(v) for v in value)
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if _ND in value:
            return np.asarray(value[_ND], dtype=np.dtype(value["dtype"]))
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_decode(v) for v in value)
    return value


def generator_state(g: np.random.Generator) -> dict[str, Any]:
    """The state of ``g``'s bit generator as plain, weights-only-loadable values."""
    if not isinstance(g, np.random.Generator):
        raise TypeError(f"expected a numpy.random.Generator, got {type(g).__name__}")
    return _encode(g.bit_generator.state)


def set_generator_state(g: np.random.Generator, state: dict[str, Any]) -> None:
    """Restore a state from :func:`generator_state` into ``g`` (same bit generator type)."""
    if not isinstance(g, np.random.Generator):
        raise TypeError(f"expected a numpy.random.Generator, got {type(g).__name__}")
    want = type(g.bit_generator).__name__
    have = state.get("bit_generator") if isinstance(state, dict) else None
    if have != want:
        raise ValueError(
            f"the saved state is for a {have} bit generator but this Generator uses {want}; "
            f"create it as numpy.random.Generator(numpy.random.{have}()) before restoring"
        )
    g.bit_generator.state = _decode(state)


def rng_state() -> dict[str, Any]:
    """Python ``random``, NumPy's global generator, torch CPU and (when CUDA is available) every CUDA
    device's generator, as weights-only-loadable values. Restore with :func:`set_rng_state`."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _encode(np.random.get_state(legacy=False)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators captured by :func:`rng_state` (works after a ``map_location`` load too).

    Warns when the state holds CUDA generators that cannot be restored here (no CUDA, fewer devices).
    """
    missing = {"python", "numpy", "torch"} - set(state)
    if missing:
        raise ValueError(f"RNG state lacks {sorted(missing)}; expected the dict returned by rng_state()")
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    np.random.set_state(_decode(state["numpy"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda")
    if cuda_states:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n < len(cuda_states):
            warnings.warn(
                f"the RNG state holds {len(cuda_states)} CUDA generator(s) but {n} CUDA device(s) are visible "
                f"here; only the first {n} are restored, so CUDA sampling will not replay exactly",
                stacklevel=2,
            )
        for i, s in enumerate(cuda_states[:n]):
            torch.cuda.set_rng_state(s.cpu(), device=i)
