"""Atomic file writes (a reader never sees a half-written file) and output-folder checks."""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from .errors import OutputError

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "ensure_writable_dir",
           "describe_os_error", "remove_stale_temps", "is_stale_temp"]


def describe_os_error(err: OSError, path: "str | Path | None" = None) -> str:
    """One line naming the path and the cause, e.g. ``out/x.json: cannot write (Permission denied)``."""
    where = path if path is not None else (err.filename or "")
    why = err.strerror or err.__class__.__name__
    if isinstance(err, (NotADirectoryError, FileExistsError)) and path is None:
        why += "; a file is in the way of a folder"
    return f"{where}: cannot write ({why})" if where else f"cannot write ({why})"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def atomic_write_bytes(path: "str | Path", data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename over ``path``.

    An error is re-raised as an ``OSError`` whose ``filename`` is ``path`` (not the temporary
    file), so the message names the file the user asked for.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from e
    try:
        os.fchmod(fd, _FILE_MODE)   # mkstemp makes 0600; written files get the user's umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


#: the temporary names posesynth makes: ``.NAME.XXXXXXXX.tmp`` (atomic writes; ``XXXXXXXX`` is
#: mkstemp's random suffix), ``.NAME.link.tmp`` (checkpoint.py's ``previous`` links) and
#: ``.posesynth-write-test.XXXXXXXX`` (ensure_writable_dir)
_TEMP_NAME = re.compile(r"^\.(?:.+\.[A-Za-z0-9_]+\.tmp|posesynth-write-test\.[A-Za-z0-9_]+)$")


def is_stale_temp(name: str) -> bool:
    """Whether a file name is one of this module's temporary files."""
    return bool(_TEMP_NAME.match(name))


def remove_stale_temps(folder: "str | Path", recursive: bool = True) -> int:
    """Delete the temporary files an interrupted write left in ``folder`` (and, with
    ``recursive``, in every folder below it); only names this module makes (see
    :func:`is_stale_temp`) are touched.  Returns how many were removed.  Call it at a command's
    start, before anything of this run writes there."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in (folder.rglob(".*") if recursive else folder.glob(".*")):
        if is_stale_temp(p.name) and p.is_file() and not p.is_symlink():
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
    return n


def atomic_write_text(path: "str | Path", text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: "str | Path", obj: Any, indent: "int | None" = None) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent))


def ensure_writable_dir(path: "str | Path", what: str = "output folder") -> Path:
    """Create folder ``path`` if needed and check that a file can be written in it.

    Raises :class:`~posesynth.errors.OutputError` naming the path when it cannot be (a file
    is in the way, the folder or a parent is read-only, ...).  Call it before long work.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: cannot use as {what}: it is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".posesynth-write-test.", dir=path)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        where = Path(e.filename) if e.filename and not str(e.filename).startswith(str(path / ".posesynth")) else path
        raise OutputError(f"{where}: cannot use as {what} ({e.strerror or e.__class__.__name__})") from None
    return path


def record_settings(out: "str | Path", name: str, settings: dict, what: str, foreign: "str | None" = None,
                    defaults: "dict | None" = None, fillable: "tuple[str, ...]" = ()) -> None:
    """An output folder made by one command with one set of settings (``out/name``, JSON): a
    rerun with the same settings continues it; other settings are refused, naming every
    difference; a folder that holds ``foreign`` (a glob) but no settings file is refused; a new
    folder gets the settings recorded.  ``what`` names the output in the messages; a setting
    the file lacks (an option added since) counts as its value in ``defaults``.  A ``fillable``
    setting recorded empty (no run used it) may be given a value by a rerun, which is then
    recorded; once recorded, it is compared like any other."""
    from .errors import ConfigError

    out = Path(out)
    path = out / name
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if isinstance(old, dict):
            defaults = defaults or {}
            filled = {k: settings[k] for k in fillable if k in settings and not old.get(k, defaults.get(k))}
            diff = [f"{k}: {old.get(k, defaults.get(k))!r} there, {v!r} now" for k, v in settings.items()
                    if old.get(k, defaults.get(k)) != v and k not in filled]
            if diff:
                raise ConfigError(f"{out} holds {what} made with other settings ({'; '.join(diff)}); choose another "
                                  "--out, or rerun with the same settings to continue it")
            if any(v for v in filled.values()):
                atomic_write_json(path, {**old, **filled}, indent=1)
            return
    elif foreign and any(out.glob(foreign)):
        raise ConfigError(f"{out} already holds {what} that recorded no settings; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, settings, indent=1)
