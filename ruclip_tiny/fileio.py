"""Writing files and whole directories so that a reader never sees half of one, and hashing them (torch-free).

Every artifact is written to a temporary name in the same directory and renamed into place: a crash or a kill
leaves either the old file or a temporary one that no reader looks for, never a truncated file under the real name.
A directory (a bundle, a Triton repository) is built in a staging directory beside its target and renamed into
place; an existing target is replaced only when the command that is writing it wrote it too.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on failure delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        # mkstemp (or a writer that recreates the file) leaves 0600; artifacts are read by other users, e.g. a
        # serving container, so they get the usual 0644 before they appear under their real name.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        # write() and close() name no file: say which one a full disk stopped. Only for an error of the operating
        # system (errno set): filling in a filename rewrites str() of an OSError raised with a message of its own.
        if exc.filename is None and exc.errno is not None:
            exc.filename = str(path)
        raise
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def atomic_write_json(path: str | os.PathLike, obj: object) -> None:
    """JSON with sorted keys and a trailing newline, written atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


# --- directories written whole: staged beside the target, renamed into place ----------------------------------------
#
# A command that writes a directory (a bundle, a Triton repository) builds it in a hidden staging directory beside
# the target and renames it into place when it is complete. The staging directory records its owner (pid, process
# start time, host), so that the next run can remove what a killed run left behind, and never a live run's.

STAGING_INFIX = ".partial-"
RETIRED_INFIX = ".old-"
STAGING_OWNER = ".staging-owner.json"
# atomic_path's temporary names: what a killed writer leaves inside a directory it was filling.
_ATOMIC_LEFTOVER = re.compile(r"\..+\.partial")
_LISTED = 5


@dataclass(frozen=True)
class Ownership:
    """How to tell a directory that a command wrote (and so may replace) from anything else.

    ``listed_files(root)`` returns the relative posix paths that the directory's marker file names as its own, or
    raises ValueError saying why ``root`` was not written by the command. ``generated(path)`` is True for relative
    paths the command's tools add later (parity reports, engines, Triton's ``__pycache__``). ``error`` is the
    exception type raised on refusal.
    """

    noun: str
    command: str
    listed_files: Callable[[Path], set[str]]
    generated: Callable[[PurePosixPath], bool]
    error: type[Exception]


@dataclass(frozen=True)
class RemovedStaging:
    """A staging or retired directory of a writer that no longer runs, removed: its path, owner pid and size."""

    path: Path
    pid: int
    size_bytes: int

    def describe(self) -> str:
        return (f"removed {self.path} ({self.size_bytes / 1e6:.0f} MB), left by a run (pid {self.pid}) that no "
                "longer runs")


def foreign_entries(root: Path, ownership: Ownership) -> list[str]:
    """Relative paths under ``root`` that are not ``ownership``'s own files (all of them when ``root`` holds no
    marker of its own); ``root`` must be a directory. Symlinks are entries, never followed."""
    try:
        listed = {str(PurePosixPath(p)) for p in ownership.listed_files(root)}
    except ValueError:
        return sorted(p.name for p in root.iterdir())
    parents = {str(parent) for path in listed for parent in PurePosixPath(path).parents}
    foreign = []

    def unreadable(error: OSError) -> None:
        foreign.append(f"{Path(error.filename).relative_to(root).as_posix()}/ (unreadable)")

    for directory, subdirectories, files in os.walk(root, onerror=unreadable):
        base = PurePosixPath(Path(directory).relative_to(root).as_posix())
        for name in sorted(subdirectories):
            relative = base / name
            if ownership.generated(relative):
                subdirectories.remove(name)  # everything under a generated directory is the command's
            elif str(relative) not in parents and str(relative) not in listed:
                foreign.append(f"{relative}/")
                subdirectories.remove(name)
        for name in sorted(files):
            relative = base / name
            own = str(relative) in listed or ownership.generated(relative) or _ATOMIC_LEFTOVER.fullmatch(name)
            if not own:
                foreign.append(str(relative))
    return foreign


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def check_target(out: Path, force: bool, ownership: Ownership) -> None:
    """Raise ``ownership.error`` unless ``out`` can be written: absent, an empty directory, or (with ``force``) a
    directory ``ownership`` says the command wrote and that holds nothing else. Touches nothing."""
    for ancestor in (out, *out.parents):
        if os.path.lexists(ancestor):
            break
    if ancestor != out and not ancestor.is_dir():
        raise ownership.error(f"{ancestor} is a file, so {out} cannot be created inside it; choose another --out")
    if not os.path.lexists(out):
        return
    if out.is_symlink():
        raise ownership.error(f"{out} is a symbolic link; pass the directory it points to ({out.resolve()}) as --out")
    if not out.is_dir():
        raise ownership.error(f"{out} exists and is not a directory; choose another --out")
    if not any(out.iterdir()):
        return
    if not force:
        raise ownership.error(f"{out} already exists; pass --force to replace it (only a {ownership.noun} written by "
                              f"{ownership.command} is replaced), or choose another --out")
    try:
        ownership.listed_files(out)
    except ValueError as exc:
        raise ownership.error(f"{out} is not a {ownership.noun} written by {ownership.command} ({exc}); --force "
                              "replaces only such a directory, so nothing was changed: choose another --out, or move "
                              "its contents away yourself") from None
    foreign = foreign_entries(out, ownership)
    if foreign:
        raise ownership.error(f"{out} holds files that are not its {ownership.noun}'s own ({_listing(foreign)}); "
                              "--force replaces only a directory holding nothing else, so nothing was changed: move "
                              "those files away, or choose another --out")


def _process_start(pid: int) -> tuple[int, str] | None:
    """(start time in clock ticks since boot, state letter) of a running process from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; the fields after its last ")" are plain.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19]), fields[0]


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _this_host() -> dict:
    """What makes a pid meaningful: the host, its boot, and the pid namespace (containers share hosts)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = None
    return {
        "host": socket.gethostname(),
        "boot_id": _read_text("/proc/sys/kernel/random/boot_id"),
        "pid_namespace": namespace,
    }


def _owner_record() -> dict:
    start = _process_start(os.getpid())
    return {"pid": os.getpid(), "start_ticks": start[0] if start else None, **_this_host()}


def _owner_is_gone(record: dict) -> bool:
    """True only when the process that wrote ``record`` has certainly ended; unknown owners count as alive."""
    here = _this_host()
    pid = record.get("pid")
    if not isinstance(pid, int) or record.get("host") != here["host"]:
        return False
    if record.get("pid_namespace") != here["pid_namespace"]:
        return False
    if record.get("boot_id") and here["boot_id"] and record["boot_id"] != here["boot_id"]:
        return True  # the machine rebooted since: every process of that boot has ended
    running = _process_start(pid)
    if running is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False
    start, state = running
    if state in ("Z", "X"):
        return True  # killed, not yet reaped by its parent
    # Another start time means the pid was reused; without a recorded one, a process with this pid may be the owner.
    return record.get("start_ticks") is not None and start != record["start_ticks"]


def _mark_owned(directory: Path) -> None:
    atomic_write_json(directory / STAGING_OWNER, _owner_record())


def make_staging_directory(out: Path) -> Path:
    """Create ``.NAME.partial-XXXXXXXX`` beside ``out`` (parents too), marked with this process as its owner."""
    out.parent.mkdir(parents=True, exist_ok=True)
    while True:
        staging = out.parent / f".{out.name}{STAGING_INFIX}{uuid.uuid4().hex[:8]}"
        try:
            staging.mkdir()
            break
        except FileExistsError:
            continue
    _mark_owned(staging)
    return staging


def _size(path: Path) -> int:
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                pass
    return total


def remove_stale_staging(out: Path) -> list[RemovedStaging]:
    """Remove the staging (and retired) directories beside ``out`` whose owner has ended; returns what went.

    A directory whose owner still runs, or whose owner cannot be told (no readable owner record, another host or
    pid namespace), is left alone.
    """
    removed = []
    if not out.parent.is_dir():
        return removed
    for infix in (STAGING_INFIX, RETIRED_INFIX):
        for candidate in sorted(out.parent.glob(f".{glob.escape(out.name)}{infix}*")):
            try:
                record = json.loads((candidate / STAGING_OWNER).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if candidate.is_symlink() or not isinstance(record, dict) or not _owner_is_gone(record):
                continue
            size = _size(candidate)
            shutil.rmtree(candidate, ignore_errors=True)
            if not candidate.exists():
                removed.append(RemovedStaging(candidate, record["pid"], size))
    return removed


def replace_directory(staging: Path, out: Path, ownership: Ownership, force: bool) -> None:
    """Rename the finished ``staging`` onto ``out``.

    ``out`` is checked again (``check_target``: it may have changed while ``staging`` was filled). An existing
    ``out`` is moved aside first and removed only once the new one is in place; if the new one cannot be renamed
    in, the old one is put back.
    """
    check_target(out, force, ownership)
    (staging / STAGING_OWNER).unlink(missing_ok=True)
    if not out.exists():
        os.replace(staging, out)
        return
    if not any(out.iterdir()):
        out.rmdir()
        os.replace(staging, out)
        return
    retired = out.parent / f".{out.name}{RETIRED_INFIX}{uuid.uuid4().hex[:8]}"
    os.replace(out, retired)
    try:
        _mark_owned(retired)  # a kill during the removal below leaves it for the next run to clean
    except OSError:
        pass  # (a full disk) it is removed below all the same; only a kill would leave it unmarked
    try:
        os.replace(staging, out)
    except OSError:
        (retired / STAGING_OWNER).unlink(missing_ok=True)
        os.replace(retired, out)
        raise
    shutil.rmtree(retired, ignore_errors=True)
