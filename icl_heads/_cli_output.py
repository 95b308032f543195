"""The command's output: the one writer of the report's sections, and the output folder.

:func:`write_sections` renders the sections the analyses return into the report and
writes their CSV tables, summary entries and results. The output folder is written
beside ``--out`` and moved into place only when the run succeeds.

A run writes into ``OUT.incomplete`` (a folder beside ``OUT`` holding an
``INCOMPLETE`` marker). On success the files move into ``OUT`` together with
``manifest.json``, the list of the files the run wrote; a failed or interrupted run
removes its folder, and a run killed outright leaves only ``OUT.incomplete``, which
the next run replaces. With ``--force`` the files listed in the previous manifest
are replaced (stale ones deleted) and nothing else in ``OUT`` is touched.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icl_heads._version import __version__

if TYPE_CHECKING:
    from icl_heads.report import Report, Section

MANIFEST = "manifest.json"
MARKER = "INCOMPLETE"
#: files at the top of ``OUT`` that every run writes (results go under ``results/``)
TOP_FILES = ("report.html", "summary.json", MANIFEST)


def write_sections(sections: list[Section], report: Report, out: Path, summary: dict, results: dict) -> None:
    """Render each section into ``report``; write its tables to ``out/results/<name>.csv``; keep its numbers.

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


def incomplete_path(out: Path) -> Path:
    """The folder a run writes into before it succeeds: ``OUT.incomplete`` beside ``OUT``."""
    out = out.absolute()
    return out.with_name(out.name + ".incomplete")


def read_manifest(out: Path) -> set[str]:
    """The files (relative paths) an earlier run wrote into ``out``; empty if it has no manifest.

    Raises:
        UsageError: ``out/manifest.json`` exists but is not a manifest of this command.
    """
    file = out / MANIFEST
    if not file.exists():
        return set()
    try:
        files = json.loads(file.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{file} is not a manifest written by icl-heads; move it or choose another --out") from None
    return {str(f) for f in files} | {MANIFEST}


def _live_writer(out: Path) -> int | None:
    """The process id of another run still writing ``OUT.incomplete``, if any."""
    try:
        pid = int((incomplete_path(out) / MARKER).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


def check_out(out: Path, force: bool) -> None:
    """Refuse an ``--out`` the run could not write without losing a file, before any work.

    Raises:
        UsageError: ``out`` is a file; not empty (without ``force``); holds files of
            the user's where the run would write (even with ``force``); is being
            written by another run; or cannot be written.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder")
    pid = _live_writer(out)
    if pid is not None:
        raise UsageError(f"another icl-heads run (process {pid}) is writing {out}; wait for it or choose another --out")
    if out.is_dir() and any(out.iterdir()):
        owned = read_manifest(out)
        if not force:
            earlier = "the results of an earlier run" if owned else "files"
            raise UsageError(
                f"--out {out} is not empty (it holds {earlier}); choose a new folder, or pass --force to replace "
                "the files an earlier run wrote (listed in its manifest.json; your own files are kept)"
            )
        ours = [out / name for name in TOP_FILES] + (
            [*sorted((out / "results").rglob("*"))] if (out / "results").is_dir() else []
        )
        if (out / "results").exists() and not (out / "results").is_dir():
            ours.append(out / "results")
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
    """Context manager: a run's output folder that appears in ``out`` only when :meth:`commit` is called.

    ``with OutputFolder(out, force) as tmp:`` gives the folder to write into; leaving the
    block by an exception or an interrupt removes it (and the parents it created).
    """

    def __init__(self, out: Path, force: bool, command: list[str] | None = None):
        self.out = out.absolute()
        self.shown = out
        self.force = force
        self.command = command or []
        self.tmp = incomplete_path(out)
        self.created: list[Path] = []
        self.committed = False

    def __enter__(self) -> Path:
        missing = [p for p in [self.out.parent, *self.out.parent.parents] if not p.exists()]
        for parent in reversed(missing):
            parent.mkdir()
            self.created.append(parent)
        if self.tmp.exists():  # left by a run that was killed outright
            shutil.rmtree(self.tmp)
        (self.tmp / "results").mkdir(parents=True)
        (self.tmp / MARKER).write_text(
            f"{os.getpid()}\nAn icl-heads run is writing here, or was stopped before it finished: these results are "
            f"incomplete. A successful run moves its files to {self.out} and removes this folder.\n"
        )
        return self.tmp

    def commit(self) -> Path:
        """Move the finished results into ``out``; returns ``out``.

        Raises:
            UsageError: a file of the user's appeared where a result goes (the results stay in ``OUT.incomplete``).
        """
        (self.tmp / MARKER).unlink()
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
        return self.out

    def _replace(self, files: list[str]) -> None:
        owned = read_manifest(self.out)
        clash = [f for f in files if (self.out / f).exists() and f not in owned]
        if clash:
            (self.tmp / MARKER).write_text(f"{os.getpid()}\nnot moved: {self.out / clash[0]} is a file of yours\n")
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

    def __exit__(self, *exc: object) -> None:
        if self.committed:
            return
        shutil.rmtree(self.tmp, ignore_errors=True)
        for parent in reversed(self.created):
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()


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
