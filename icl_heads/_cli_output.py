"""The command's output: the one writer of the report's sections, and the output folder.

A run writes into ``OUT.incomplete`` (created atomically, with a locked ``INCOMPLETE`` marker: the lock on ``--out``)
and moves its files into ``OUT`` with ``manifest.json`` only when it succeeds (the README's "Output" describes it all).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icl_heads._version import __version__

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: the marker's process id is checked instead
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from icl_heads.report import Report, Section

MANIFEST = "manifest.json"
MARKER = "INCOMPLETE"
#: the first words after the process id in every marker, so that a file of the user's is never taken for one
_SIGNATURE = "An icl-heads run"
#: files at the top of ``OUT`` that every run writes (results go under ``results/``)
TOP_FILES = ("report.html", "summary.json", MANIFEST)


def write_sections(sections: list[Section], report: Report, out: Path, summary: dict, results: dict) -> None:
    """Render each section into ``report``, write its tables to ``out/results/<name>.csv``, keep its numbers.

    Raises:
        ValueError: two sections write the same table or the same summary entry.
    """
    for section in sections:
        report.add(section)
        for name, df in section.csv.items():
            file = out / "results" / f"{name}.csv"
            if file.exists():
                raise ValueError(f"two sections write the table {file.name}; give one of them another name")
            df.to_csv(file, index=False)
        clash = sorted(set(section.summary) & set(summary))
        if clash:
            raise ValueError(f"section {section.heading!r} writes summary entries another section wrote: {clash}")
        summary.update(section.summary)
        results.update(section.results)


class UsageError(ValueError):
    """Bad input to the command: reported in one line with exit code 2, before any expensive work."""


def read_manifest(out: Path) -> set[str]:
    """The files (relative paths) an earlier run wrote into ``out``; empty without a manifest.

    Raises:
        UsageError: ``out/manifest.json`` is not a manifest of this command, or names a path outside ``out``.
    """
    file = out / MANIFEST
    if not file.exists():
        return set()
    try:
        files = json.loads(file.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        files = None
    if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
        raise UsageError(f"{file} is not a manifest written by icl-heads; move it or choose another --out")
    root = out.resolve()
    for rel in files:
        target = (out / rel).resolve()
        if Path(rel).is_absolute() or ".." in Path(rel).parts or root not in target.parents:
            raise UsageError(
                f"{file} lists {rel!r}, which is not a file inside {out}; an icl-heads run only writes inside --out, "
                "so this manifest was edited: fix or remove it"
            )
    return {str(f) for f in files} | {MANIFEST}


def check_out(out: Path, force: bool) -> None:
    """Refuse an ``--out`` the run could not write without losing a file, before any work.

    Raises:
        UsageError: ``out`` is a file; not empty (without ``force``); holds files of the user's where the run would
            write (even with ``force``); or cannot be written.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()):
        owned = read_manifest(out)
        if not force:
            earlier = "the results of an earlier run" if owned else "files"
            raise UsageError(
                f"--out {out} is not empty (it holds {earlier}); choose a new folder, or pass --force to replace "
                "the files an earlier run wrote (listed in its manifest.json; your own files are kept)"
            )
        results = out / "results"
        ours = [out / name for name in TOP_FILES] + (sorted(results.rglob("*")) if results.is_dir() else [results])
        foreign = [p for p in ours if p.is_file() and str(p.relative_to(out)) not in owned]
        if foreign:
            raise UsageError(
                f"--out {out} holds {foreign[0].relative_to(out)}, which no earlier icl-heads run wrote (it is not in "
                "manifest.json); --force never replaces your files: move it or choose another --out"
            )
    existing = next(p for p in [out.absolute(), *out.absolute().parents] if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: cannot write into {existing} (permission denied)")


class OutputFolder:
    """Context manager: ``with OutputFolder(out) as tmp:`` takes the lock of ``out`` and gives ``tmp`` to write
    into, moved into ``out`` by :meth:`commit`; leaving the block otherwise removes it (and the parents it created).

    Raises:
        UsageError: (on entering) another run is writing ``out``, ``OUT.incomplete`` is the user's, or cannot be made.
    """

    def __init__(self, out: Path, command: list[str] | None = None):
        self.out, self.shown, self.command = out.absolute(), out, command or []
        self.tmp = self.out.with_name(self.out.name + ".incomplete")  # beside ``out``
        self.created: list[Path] = []
        self.committed = False
        self._lock: int | None = None  # the open, locked marker while the run holds ``out``
        self._made = False  # this run created ``OUT.incomplete``

    def __enter__(self) -> Path:
        try:
            self._make_parents()
            for _ in range(2):
                try:
                    os.mkdir(self.tmp)  # atomic: of two runs, one creates the folder, the other sees it
                except FileExistsError:
                    self._remove_stale()
                    continue
                self._made = True
                self._lock = _write_marker(self.tmp / MARKER, self.out)
                (self.tmp / "results").mkdir()
                return self.tmp
            raise UsageError(f"another icl-heads run is writing {self.shown}; wait for it or choose another --out")
        except OSError as err:
            self.__exit__()
            raise UsageError(f"--out {self.shown}: cannot create {self.tmp} ({err.strerror or err})") from None
        except BaseException:
            self.__exit__()
            raise

    def _make_parents(self) -> None:
        missing = [p for p in [self.out.parent, *self.out.parent.parents] if not p.exists()]
        for parent in reversed(missing):
            try:
                parent.mkdir()
            except FileExistsError:  # made by another run at the same moment: not ours to remove
                continue
            self.created.append(parent)

    def _remove_stale(self) -> None:
        """Remove ``OUT.incomplete`` left by a run that was killed; refuse anything else found there."""
        tmp, marker = self.tmp, self.tmp / MARKER
        if tmp.is_symlink() or not tmp.is_dir():
            raise UsageError(
                f"{tmp} exists and is not a folder an icl-heads run made (it is a file or a link); it is never "
                "deleted: move or rename it, or choose another --out"
            )
        deadline = time.monotonic() + 1.0  # a run that has just made the folder writes its marker next
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        text = _marker_text(marker)
        if text is None or _SIGNATURE not in text:
            raise UsageError(
                f"{tmp} exists but an icl-heads run did not make it (no {MARKER} marker of a run inside); it is never "
                "deleted: move or rename it, or choose another --out"
            )
        fd = os.open(marker, os.O_RDWR)
        try:
            if not _try_lock(fd, text) or os.fstat(fd).st_ino != os.stat(marker).st_ino:
                pid = text.split()[0]
                raise UsageError(
                    f"another icl-heads run (process {pid}) is writing {self.shown}; wait for it or choose another "
                    "--out"
                )
            if "not moved" in text:
                raise UsageError(
                    f"{tmp} holds the finished results of an earlier run that could not be moved into "
                    f"{self.shown}; move them out (or delete the folder) first"
                )
            shutil.rmtree(tmp)  # ours, from a run that was killed: its lock is free
        except FileNotFoundError:  # removed by another run at the same moment
            pass
        finally:
            os.close(fd)

    def commit(self) -> Path:
        """Move the finished results into ``out``; returns ``out``.

        Raises:
            UsageError: a file of the user's appeared where a result goes (the results stay in ``OUT.incomplete``).
        """
        (self.tmp / MARKER).unlink()  # still locked until the files are in place: no other run takes the folder
        files = sorted(str(p.relative_to(self.tmp)) for p in self.tmp.rglob("*") if p.is_file())
        manifest = {
            "files": [*files, MANIFEST],
            "icl_heads_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": self.command,
        }
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if not self.out.exists() or not any(self.out.iterdir()):
            if self.out.exists():
                self.out.rmdir()
            os.rename(self.tmp, self.out)
        else:
            self._replace(files)
        self.committed = True
        self._unlock()
        return self.out

    def _replace(self, files: list[str]) -> None:
        owned = read_manifest(self.out)
        root = self.out.resolve()
        outside = [f for f in files if root not in (self.out / f).resolve().parents]
        clash = outside or [f for f in files if (self.out / f).exists() and f not in owned]
        if clash:
            (self.tmp / MARKER).write_text(
                f"{os.getpid()}\n{_SIGNATURE} finished but its results were not moved: {self.out / clash[0]} is a "
                "file of yours (or a link out of --out)\n"
            )
            self.committed = True  # keep the finished results for the user to move
            raise UsageError(
                f"{self.out / clash[0]} appeared during the run and is not a file of an earlier run; the results "
                f"are kept in {self.tmp}"
            )
        # the old manifest and summary go first, the new ones come last: a half-done move never looks complete
        for rel in sorted(owned, key=lambda f: (f != MANIFEST, f != "summary.json", f)):
            if (self.out / rel).is_file():
                (self.out / rel).unlink()
        for rel in sorted(owned, key=lambda f: -f.count("/")):
            parent = (self.out / rel).parent
            if parent != self.out and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
        for rel in sorted([*files, MANIFEST], key=lambda f: (f == MANIFEST, f == "summary.json", f)):
            (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.tmp / rel, self.out / rel)
        shutil.rmtree(self.tmp)

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
        self._lock = None

    def __exit__(self, *exc: object) -> None:
        previous = ignore_interrupts()  # a second Ctrl-C must not stop the cleanup half-way
        try:
            if not self.committed and self._made:
                shutil.rmtree(self.tmp, ignore_errors=True)
            self._unlock()
            for parent in reversed(self.created):
                if parent.is_dir() and not any(parent.iterdir()):
                    parent.rmdir()
            self.created = []
        finally:
            restore_interrupts(previous)


def _write_marker(marker: Path, out: Path) -> int:
    """Create the marker of a running run, locked while the returned descriptor stays open."""
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(
        fd,
        f"{os.getpid()}\n{_SIGNATURE} is writing here, or was stopped before it finished: these results are "
        f"incomplete. A successful run moves its files to {out} and removes this folder.\n".encode(),
    )
    return fd


def _marker_text(marker: Path) -> str | None:
    if not marker.is_symlink() and marker.is_file():
        with suppress(OSError):
            return marker.read_text(encoding="utf-8", errors="replace")[:4096]
    return None


def _try_lock(fd: int, text: str) -> bool:
    """Lock a marker of another run; False if that run still holds it (it is alive)."""
    if fcntl is None:  # pragma: no cover - without flock: alive if its process is
        try:
            os.kill(int(text.split()[0]), 0)
        except (OSError, ValueError, IndexError):
            return True
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def ignore_interrupts() -> Any:
    """Ignore Ctrl-C (SIGINT) from now on; returns the previous handler (``None`` outside the main thread)."""
    try:
        return signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        return None


def restore_interrupts(previous: Any) -> None:
    """Put back the Ctrl-C handler :func:`ignore_interrupts` returned."""
    if previous is not None:
        signal.signal(signal.SIGINT, previous)


class Terminated(BaseException):
    """The process received SIGTERM (raised so that the output folder is cleaned up)."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (so cleanup runs) instead of killing the process."""

    def handler(signum: int, frame: Any) -> None:
        raise Terminated("terminated by SIGTERM")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
