"""The provenance of a run of ``icl-heads analyze``: versions, device and dtype, seeds, command, model and task."""

from __future__ import annotations

import hashlib
import platform
import shlex
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from icl_heads.records import ModelIdentity, Provenance, TaskIdentity

#: distributions whose versions a run records, by the name shown
PACKAGES = {
    "torch": "torch",
    "transformer-lens": "transformer-lens",
    "transformers": "transformers",
    "datasets": "datasets",
    "icl_heads": "icl-heads",
}


def versions() -> dict[str, str]:
    """Python and the installed versions of the packages the numbers depend on (``"not installed"`` if absent)."""
    from icl_heads._version import __version__

    out = {"python": platform.python_version()}
    for shown, dist in PACKAGES.items():
        try:
            out[shown] = version(dist)
        except PackageNotFoundError:
            out[shown] = "not installed"
    out["icl_heads"] = __version__  # the code that ran, even from a source tree
    return out


def command_line(argv: list[str]) -> str:
    """The exact command, quoted so that it can be pasted into a shell."""
    return shlex.join(["icl-heads", *argv])


def sha256(path: Path) -> str:
    """Hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_identity(model: Any, reference: str, architecture: str | None = None) -> ModelIdentity:
    """Name, architecture, size, device and dtype of a loaded model (read off its weights)."""
    cfg = getattr(model, "cfg", None)
    params = list(model.parameters())
    first = params[0] if params else None
    return ModelIdentity(
        reference=reference,
        architecture=architecture or getattr(cfg, "original_architecture", None) or type(model).__name__,
        class_=type(model).__name__,
        n_layers=getattr(cfg, "n_layers", None),
        n_heads=getattr(cfg, "n_heads", None),
        d_model=getattr(cfg, "d_model", None),
        parameters=int(sum(p.numel() for p in params)),
        device=str(first.device) if first is not None else "unknown",
        dtype=str(first.dtype).removeprefix("torch.") if first is not None else "unknown",
    )


def task_identity(task: Any, data: str | Path | None) -> TaskIdentity:
    """Name, template, classes and size of the task; the data file and its SHA-256 when it came from one."""
    source = {} if data is None else {"data": str(data)}
    if data is not None and Path(data).is_file():
        source["data_sha256"] = sha256(Path(data))
    return TaskIdentity(
        name=task.name,
        template=task.template,
        classes=[str(c) for c in task.classes],
        label_words=list(task.label_words),
        examples=len(task.labels),
        **source,
    )


def run_provenance(
    *,
    argv: list[str],
    model: Any,
    reference: str,
    architecture: str | None,
    task: Any,
    data: str | Path | None,
    seeds: dict[str, int],
    threads: Any,
) -> Provenance:
    """Everything a reader needs to reproduce the run (the cost is added when it ends, with ``replace``)."""
    import torch

    return Provenance(
        command=command_line(argv),
        versions=versions(),
        model=model_identity(model, reference, architecture),
        task=task_identity(task, data),
        seeds=seeds,
        torch_threads=threads if threads is not None else torch.get_num_threads(),
        platform=f"{platform.system()} {platform.machine()}",
        python_executable=sys.executable,
    )
