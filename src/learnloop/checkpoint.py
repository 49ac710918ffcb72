"""Saving and loading weights safely: atomic writes, and loads through torch's weights-only unpickler.

Every file learnloop writes (``learn.save``, ``learn.export``, training checkpoints) goes through
:func:`atomic_write`: a temporary file in the same folder, fsync, then ``os.replace``, so a save that
is interrupted (kill -9, a full disk, a read-only folder) leaves the previous file as it was.
Every file it reads goes through :func:`safe_load` (``torch.load(weights_only=True)``), which refuses
pickled code and says what is wrong with a corrupt file. Files that learnloop describes itself
(training checkpoints, exports) carry a ``format`` name and version, checked by :func:`check_format`.
"""

from __future__ import annotations

import errno
import importlib.metadata
import numbers
import os
import pickle
import secrets
import stat
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import torch
from torch import nn

from .distributed import is_rank_zero, unwrap_model
from .errors import as_scalar
from .finite import all_finite, first_non_finite
from .warn import NON_FINITE_ADVICE, NonFiniteLossWarning, warn_caller

__all__ = [
    "CheckpointError",
    "CheckpointIsADirectoryError",
    "CorruptFileError",
    "atomic_save",
    "atomic_write",
    "check_format",
    "check_loadable",
    "check_state_dict",
    "is_checkpoint_writer",
    "learnloop_version",
    "safe_load",
    "save_model",
    "load_model",
    "to_plain",
]

#: The ``format`` of a training checkpoint (``CheckpointCallback``), and the version this learnloop writes.
CHECKPOINT_FORMAT = "learnloop.checkpoint"
#: The ``format`` of ``learn.export`` files.
EXPORT_FORMAT = "learnloop.export"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: missing, corrupt, foreign or unsafe."""


class CorruptFileError(CheckpointError):
    """A file that cannot be read at all: truncated, garbage, or not written by torch.save."""


class CheckpointIsADirectoryError(IsADirectoryError, FileNotFoundError):
    """A directory where a file to load was expected: the IsADirectoryError fastai's `learn.load` (torch.load) raises,
    and the FileNotFoundError learnloop raised before it said so."""


def is_checkpoint_writer() -> bool:
    """Whether this process writes training checkpoints: every process but rank 0 of a torch.distributed run skips.

    The single gate of ``CheckpointCallback``'s saves; ``learn.save`` uses the same rule
    (:func:`learnloop.distributed.is_rank_zero`), which also knows the rank torchrun gave before the
    process group is up.
    """
    return is_rank_zero()


def learnloop_version() -> str:
    """The installed learnloop's version (recorded in checkpoints)."""
    try:
        return importlib.metadata.version("learnloop")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def to_plain(obj: Any) -> Any:
    """`obj` with numpy scalars and arrays turned into Python numbers and lists, for the weights-only loader.

    A state dict (`model.state_dict()`, an OrderedDict) stays one, with its `_metadata` (each module's version),
    as `torch.save(model.state_dict())` and fastai write it."""
    if isinstance(obj, OrderedDict):
        plain: OrderedDict[Any, Any] = OrderedDict((k, to_plain(v)) for k, v in obj.items())
        metadata = getattr(obj, "_metadata", None)
        if metadata is not None:
            plain._metadata = metadata  # type: ignore[attr-defined]
        return plain
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [to_plain(v) for v in obj]
        # A namedtuple takes its fields as arguments (then the weights-only check refuses its class, naming it).
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def atomic_write(
    path: str | Path,
    write: Callable[[IO[bytes]], object],
    check: Callable[[Path], object] | None = None,
    *,
    sync: bool = True,
) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then rename it to ``path``.

    ``path`` is never half-written: if anything fails or the process dies before the rename, the file
    that was at ``path`` (if any) is untouched. Missing folders are created; the file gets the permissions and the
    place (a symlink's target) that ``open(path, 'wb')`` would give it. ``check(tmp)``, when given, is called
    on the complete temporary file before the rename: an exception it raises leaves ``path`` untouched too.
    ``sync=False`` skips the two fsyncs (the file's and its folder's): a write that fails still leaves ``path`` as it
    was, but a power cut may lose the file; for files written at every batch, where a fsync costs more than the write.
    """
    path = Path(path)
    # What open(path, 'wb') (torch.save, fastai) would write to: a symlink's target, not the link.
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temporary(target)
    except OSError as e:
        cause = (
            f"its name is longer than the file system takes ({len(target.name.encode())} bytes)"
            if e.errno == errno.ENAMETOOLONG and len(target.name.encode()) > 255
            else f"the folder {target.parent} cannot be created or written to"
        )
        raise type(e)(e.errno, f"Cannot save {path}: {cause} ({e.strerror})") from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, target)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, Exception):  # a full disk, or state pickle cannot write (a lambda): nothing saved is lost
            e.add_note(f"learnloop: saving {path} failed; the file that was there (if any) is unchanged.")
        raise
    if not sync:
        return path
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)
    return path


def _create_temporary(path: Path) -> tuple[int, str]:
    """Create ``.<name>.<random>.tmp`` beside `path` with the permissions open(path, 'wb') would give the file: those
    of the file that is there, else the umask's (mkstemp's are 0600: no one else could read a saved model)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = None
    # As much of the name as fits in a file system's 255 bytes with the 14 the temporary adds: a name torch.save takes
    # (up to 255 bytes) must not fail here as "File name too long".
    start = path.name.encode()[:241].decode(errors="ignore")
    for _ in range(100):
        tmp = str(path.parent / f".{start}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        if mode is not None:
            try:
                os.chmod(tmp, mode)
            except BaseException:
                os.close(fd)
                Path(tmp).unlink(missing_ok=True)
                raise
        return fd, tmp
    raise FileExistsError(errno.EEXIST, f"No free temporary file name beside {path}")


def atomic_save(obj: Any, path: str | Path) -> Path:
    """`torch.save` to a temporary file beside `path`, fsync, then rename: `path` is never half-written.

    A file that `safe_load` would refuse (`obj` holds objects other than tensors, numbers, strings and plain
    containers) is not written: a CheckpointError says where in `obj` the object is, and `path` is left as it was.
    """
    plain = to_plain(obj)
    return atomic_write(path, lambda f: torch.save(plain, f), check=lambda tmp: check_loadable(tmp, plain, path))


def check_loadable(file: str | Path | IO[bytes], state: Any, dest: Any) -> None:
    """Raise a CheckpointError if `file`, just written from `state` by `torch.save` for `dest`, holds objects that
    torch's weights-only loader, the one `safe_load` reads with, would refuse.

    Asks torch which of the file's pickled classes and functions its weights-only loader does not allow (the
    loader's own list, including what `torch.serialization.add_safe_globals` added): this reads only the file's
    small pickle, not its tensors. Only when one is found is `state` walked, to say where it is.
    """
    ask = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5
    unsafe = ask(file) if ask is not None else None
    if not unsafe:
        return
    found = _find_global(state, set(unsafe))
    if found is None:
        what = f"objects of {sorted(unsafe)}"
        where, in_opt = "", False
    else:
        what, where = found[1], found[0]
        in_opt = where.startswith("['opt']")
        where = f" at {where}"
    if is_buffer(dest):
        kept = "the buffer already holds what was written: discard it"
    else:
        kept = "the file that was there is unchanged" if Path(dest).exists() else "nothing was written"
    opt_fix = ""
    if in_opt:
        opt_fix = (
            " It is in the optimizer's state: an optimizer (a port of fastai's Lookahead, say) should keep it as "
            "tensors (a fastcore L as list(...)); or leave the optimizer out: learn.save(..., with_opt=False)."
        )
    elif "UninitializedParameter" in what or "UninitializedBuffer" in what:
        opt_fix = (
            " It is a lazy module's (nn.LazyLinear, ...) not initialized yet: run one batch through the model "
            "first (learn.summary() runs one)."
        )
    raise CheckpointError(
        f"Cannot save {dest}: the state holds {what}{where}, which torch's weights-only loader refuses, so the "
        f"file could not be loaded back as it is (learn.load, load_model, load_learner and resuming read with it; "
        f"learn.load(..., weights_only=False) would, for a file you trust); {kept}. "
        f"Keep the state as tensors, numbers, strings, None, and lists, tuples and dicts of them.{opt_fix}"
    )


def _find_global(obj: Any, names: set[str], where: str = "") -> tuple[str, str] | None:
    """Where in `obj` (``['opt']['state'][0]['slow_p']``) the first object of a class (or a class or function)
    named in `names` is, and what it is; None when there is none."""
    for thing in (type(obj), obj):
        name = f"{getattr(thing, '__module__', '')}.{getattr(thing, '__qualname__', '')}"
        if name in names:
            return where or "the top level", f"a {name}" if thing is type(obj) else name
    if isinstance(obj, Mapping):
        items: Any = obj.items()
    elif isinstance(obj, (list, tuple, set, frozenset)):
        items = enumerate(obj)
    else:
        return None
    for key, value in items:
        found = _find_global(value, names, f"{where}[{key!r}]")
        if found is not None:
            return found
    return None


def is_buffer(file: Any) -> bool:
    """Whether `file` is an open binary file or buffer (io.BytesIO, say) rather than a path."""
    return not isinstance(file, (str, os.PathLike)) and (hasattr(file, "write") or hasattr(file, "read"))


def safe_load(
    path: str | Path | IO[bytes], map_location: Any = None, weights_only: bool = True, refused_advice: str = ""
) -> Any:
    """`torch.load(weights_only=True)` of a file (or a buffer, read from where it stands), with errors that say
    what is wrong with the file. `weights_only=False` unpickles anything: only for a file the caller trusts.
    `refused_advice` replaces the advice given for a file of pickled objects (load it with `learn.load(name,
    weights_only=False)` if you trust it), for a reader that cannot take it that way."""
    if not is_buffer(path):
        path = Path(path)  # type: ignore[arg-type]
        if path.is_dir():
            raise CheckpointIsADirectoryError(
                f"{path} is a directory, not a file written by torch.save: give the name of a file (learn.load(name) "
                "reads path/model_dir/name.pth)."
            )
        if not path.is_file():
            raise FileNotFoundError(f"No checkpoint at {path}: check the name and the learner's path/model_dir.")
    elif _read_to_its_end(path):  # fastai: the unpickler's EOFError, without a word of the buffer's position
        raise CheckpointError(
            f"{path!r} has been read to its end (as learn.save(buffer) leaves it), so there is nothing left to load: "
            "seek back to its start first, buffer.seek(0)."
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as e:
        # The weights-only unpickler names the GLOBAL (class, function) it refused; anything else is garbage.
        if "GLOBAL" not in str(e):
            raise CorruptFileError(
                f"{path} is corrupt or truncated, or was not written by torch.save, and cannot be read "
                f"({_unpickler_reason(e)})."
            ) from e
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain containers, so it is refused: loading it could "
            f"run arbitrary code. {refused_advice or _TRUSTED_LOAD} ({_unpickler_reason(e)})"
        ) from e
    except (MemoryError, KeyboardInterrupt):
        raise
    except RuntimeError as e:
        if "device" not in str(e).lower() and "data location" not in str(e):  # torch's words for where tensors go
            raise CorruptFileError(f"{path} is corrupt or truncated and cannot be read (RuntimeError: {e}).") from e
        raise CheckpointError(
            f"{path} cannot be read onto a device this machine does not have (map_location={map_location!r}; "
            f"with None its tensors go back to the device they were saved from): pass device='cpu' or a device "
            f"this machine has. ({e})"
        ) from e
    except Exception as e:  # noqa: BLE001 - garbage makes the unpickler fail in many ways (KeyError, EOFError, ...)
        if not weights_only and isinstance(e, (ModuleNotFoundError, AttributeError)):  # a class it names is missing
            raise CheckpointError(
                f"{path} needs code that is not installed to be unpickled ({type(e).__name__}: {e}): install it (a "
                "file fastai saved with its optimizer state needs fastcore), or save it again without those objects "
                "(with_opt=False)."
            ) from e
        raise CorruptFileError(f"{path} is corrupt or truncated and cannot be read ({type(e).__name__}: {e}).") from e


_TRUSTED_LOAD = (
    "Only load files you trust, with learn.load(name, weights_only=False) (or torch.load(..., weights_only=False))."
)


def _read_to_its_end(buffer: Any) -> bool:
    """Whether `buffer`, a seekable non-empty buffer, stands at its end."""
    try:
        if not buffer.seekable():
            return False
        position = buffer.tell()
        end = buffer.seek(0, os.SEEK_END)
        buffer.seek(position)
    except (AttributeError, OSError, ValueError):
        return False
    return bool(end) and position == end


def _unpickler_reason(e: Exception) -> str:
    """The line of torch's long weights-only error that names what was refused."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    refused = [line for line in lines if "GLOBAL" in line]
    if refused:
        return refused[0].split("WeightsUnpickler error:", 1)[-1].strip()
    for i, line in enumerate(lines):
        if "WeightsUnpickler error" in line:  # the reason is on this line, or alone on the next one
            reason = line.split("WeightsUnpickler error:", 1)[-1].strip()
            return reason or (lines[i + 1] if i + 1 < len(lines) else "")
    return lines[0] if lines else str(e)


def check_format(obj: Any, path: str | Path | IO[bytes], expected: str, hint: str = "") -> None:
    """Check that ``obj`` (a loaded file) is a learnloop file of format ``expected`` that this version can read."""
    found = obj.get("format") if isinstance(obj, Mapping) else None
    if found != expected:
        what = f"a {found!r} file" if isinstance(found, str) else f"a {type(obj).__name__}"
        raise CheckpointError(f"{path} is not a {expected} file (it holds {what}).{hint}")
    version = obj.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path} has no valid format version ({version!r}): it was not written by learnloop.")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by learnloop {obj.get('learnloop_version', '?')} in {expected} format version "
            f"{version}, but this learnloop ({learnloop_version()}) reads versions up to {FORMAT_VERSION}: "
            "upgrade learnloop to load it."
        )


def check_state_dict(model: nn.Module, state: Mapping[str, Any], path: str | Path) -> None:
    """Raise a CheckpointError listing missing and unexpected keys and shape mismatches, before loading anything."""
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(state).__name__}).")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {list(v.shape)}, model {list(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and isinstance(v, torch.Tensor) and v.shape != expected[k].shape
    ]
    if not (missing or unexpected or shapes):
        return
    lines = [f"{path} was saved from a different model than this {type(model).__name__}:"]
    if missing:
        lines.append(f"  missing keys (in the model, not in the checkpoint): {_few(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys (in the checkpoint, not in the model): {_few(unexpected)}")
    if shapes:
        lines.append(f"  size mismatch for {_few(shapes, sep='; ')}")
    lines.append("Build the model exactly as in the run that saved it (same architecture and sizes).")
    raise CheckpointError("\n".join(lines))


def _few(items: list[str], n: int = 10, sep: str = ", ") -> str:
    more = f"{sep}... ({len(items) - n} more)" if len(items) > n else ""
    return sep.join(items[:n]) + more


def check_pickle_protocol(pickle_protocol: int, reader: str) -> None:
    """Refuse a pickle protocol other than 2: torch's weights-only loader, which `reader` reads with, refuses
    protocols 0, 1, 4 and 5 and warns at every load of 3. One that is not a number (``'2'``) is a TypeError, as
    fastai's (torch's pickler refuses it)."""
    if pickle_protocol is not None and not isinstance(as_scalar(pickle_protocol), numbers.Real):
        raise TypeError(f"pickle_protocol must be an int, 2 (what {reader} reads), got {pickle_protocol!r}.")
    if pickle_protocol != 2:
        raise ValueError(
            f"pickle_protocol={pickle_protocol!r} would write a file that torch's weights-only loader, which "
            f"{reader} reads with, cannot read cleanly (it refuses protocols 0, 1, 4 and 5 and warns at every "
            "load of 3); leave it at 2, torch's default."
        )


def save_model(
    path: str | Path | IO[bytes], model: nn.Module, opt: Any = None, with_opt: bool = True, pickle_protocol: int = 2
) -> Any:
    """Save the model's state (and the optimizer's, when `with_opt`) to `path`, atomically, or into an open
    buffer; returns where it went. A model in a DistributedDataParallel or nn.DataParallel wrapper is saved without
    it (`load_model` loads into the module inside), as in fastai. `pickle_protocol` is fastai's argument: only 2,
    what `load_model` reads cleanly."""
    check_pickle_protocol(pickle_protocol, "load_model")
    _warn_non_finite(model, path)
    state = unwrap_model(model).state_dict()  # without a (Distributed)DataParallel wrapper's "module." prefix
    if with_opt and opt is not None:
        state = {"model": state, "opt": opt.state_dict()}
    if is_buffer(path):  # written as it is: a buffer is no file that a crash could leave half-written
        return _save_to_buffer(state, cast(IO[bytes], path))
    return atomic_save(state, cast(str | Path, path))


def _load_weights(model: nn.Module, state: Any, path: Any, strict: bool) -> None:
    """`model.load_state_dict(state, strict=strict)`, all or nothing: torch copies the tensors that fit before it
    raises for the others, so when `state` does not match the model key for key and shape for shape, the model's
    tensors are copied first (onto the CPU) and put back if torch refuses it."""
    current = model.state_dict()
    matches = isinstance(state, Mapping) and state.keys() == current.keys() and all(
        not isinstance(c, torch.Tensor) or (isinstance(state[k], torch.Tensor) and state[k].shape == c.shape)
        for k, c in current.items()
    )
    tensors = {k: v for k, v in current.items() if isinstance(v, torch.Tensor)}
    kept = None if matches else {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()}
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        if kept is not None:
            with torch.no_grad():
                for k, v in tensors.items():
                    v.copy_(kept[k])
        raise CheckpointError(f"{path} was saved from a different model (nothing was loaded): {e}") from e


def _warn_non_finite(model: nn.Module, path: Any) -> None:
    """Warn when the weights about to be saved hold NaN or infinite values (as CheckpointCallback judges them): they
    are saved all the same, as fastai saves them (`SaveModelCallback(at_end=True)` saves whatever the fit ended
    with), but the file they replace may have been the good one."""

    if all_finite(model):
        return
    if is_buffer(path):
        where = "into the buffer"
    else:
        replaced = ", replacing the file that was there" if Path(path).exists() else ""
        where = f"to {path}{replaced} (save under another name to keep a good file)"
    warn_caller(
        NonFiniteLossWarning(
            f"Saving weights that hold NaN or infinite values (the model's {first_non_finite(model)}: training has "
            f"diverged) {where}.",
            NON_FINITE_ADVICE,
        )
    )


def _save_to_buffer(state: Any, buffer: IO[bytes]) -> IO[bytes]:
    """`torch.save` into an open buffer from where it stands; then, if it can be read back, the check of
    `check_loadable` (after the writing: a buffer has no previous content to keep, and no temporary file)."""
    plain = to_plain(state)
    checkable = getattr(buffer, "seekable", bool)() and getattr(buffer, "readable", bool)()
    start = buffer.tell() if checkable else 0
    torch.save(plain, buffer)
    if checkable:
        end = buffer.tell()
        buffer.seek(start)
        try:
            check_loadable(buffer, plain, buffer)
        finally:
            buffer.seek(end)
    return buffer


def load_model(
    path: str | Path | IO[bytes],
    model: nn.Module,
    opt: Any = None,
    with_opt: bool = True,
    device: Any = None,
    strict: bool = True,
    weights_only: bool | None = None,
) -> None:
    """Load what `save_model` wrote into `model` (and `opt`), with clear errors for a foreign file. Only tensors and
    plain containers are read, unless `weights_only=False` (torch.load's argument, as fastai passes it on): then
    anything is unpickled, for a file you trust. With `with_opt` (the default), a file without an optimizer state, or
    with one and no `opt` to load it into, is warned of, as in fastai. The tensors are read onto `device`: None is the
    CPU and a number that GPU, as in fastai (the model's own tensors stay where they are: they are copied into)."""
    if device is None:
        device = "cpu"
    elif isinstance(device, int) and not isinstance(device, bool):
        device = torch.device("cuda", device)
    state = safe_load(path, map_location=device, weights_only=weights_only is not False)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(state).__name__}).")
    if state.get("format") == CHECKPOINT_FORMAT:  # a training checkpoint: its model and optimizer
        check_format(state, path, CHECKPOINT_FORMAT)
        state = {"model": state["model"], "opt": state["opt"]} if state.get("opt") is not None else state["model"]
    elif state.get("format") == EXPORT_FORMAT:
        raise CheckpointError(
            f"{path} was written by learn.export, not learn.save: load it with load_learner(path, model=...) (see "
            "learnloop.export), or save the weights with learn.save(name) to load them with learn.load(name)."
        )
    has_opt = set(state) == {"model", "opt"}
    model_state = state["model"] if has_opt else state
    _load_weights(unwrap_model(model), model_state, path, strict)
    if with_opt:
        if not has_opt:
            warn_caller(f"Saved file doesn't contain an optimizer state: {path} holds the model alone, now loaded.")
            return
        if opt is None:  # fastai's warns too (its opt.load_state_dict fails on None)
            warn_caller(
                f"Could not load the optimizer state from {path}: no optimizer was given (opt=None), so only the "
                "weights were loaded. Create the optimizer first (learn.create_opt()) and pass it, or pass "
                "with_opt=False to load the weights alone without this warning."
            )
            return
        try:
            opt.load_state_dict(state["opt"])
        except Exception as e:  # noqa: BLE001 - as fastai's: a state this optimizer cannot take is warned of
            warn_caller(
                f"Could not load the optimizer state from {path} ({type(e).__name__}: {e}); it was left as it was."
            )
