"""The provenance of a run of ``icl-heads analyze``: versions, device and dtype, seeds, command, model and task."""

from __future__ import annotations

import hashlib
import platform
import shlex
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from icl_heads._version import __version__
from icl_heads.records import ModelIdentity, Provenance, TaskIdentity


def versions() -> dict[str, str]:
    """Python and the installed versions of the packages the numbers depend on (``"not installed"`` if absent)."""
    out = {"python": platform.python_version()}
    for dist in ("torch", "transformer-lens", "transformers", "datasets"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return {**out, "icl_heads": __version__}  # the code that ran, even from a source tree


def model_identity(model: Any, reference: str, architecture: str | None = None) -> ModelIdentity:
    """Name, architecture, size, device and dtype of a loaded model (read off its weights)."""
    cfg = getattr(model, "cfg", None)
    params = list(model.parameters())
    return ModelIdentity(
        reference=reference,
        architecture=architecture or getattr(cfg, "original_architecture", None) or type(model).__name__,
        class_=type(model).__name__,
        n_layers=getattr(cfg, "n_layers", None),
        n_heads=getattr(cfg, "n_heads", None),
        d_model=getattr(cfg, "d_model", None),
        parameters=int(sum(p.numel() for p in params)),
        device=str(params[0].device) if params else "unknown",
        dtype=str(params[0].dtype).removeprefix("torch.") if params else "unknown",
    )


def task_identity(task: Any, data: str | Path | None) -> TaskIdentity:
    """Name, template, classes and size of the task; the data file and its SHA-256 when it came from one."""
    source = {} if data is None else {"data": str(data)}
    if data is not None and Path(data).is_file():
        source["data_sha256"] = hashlib.sha256(Path(data).read_bytes()).hexdigest()
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
    return Provenance(
        command=shlex.join(["icl-heads", *argv]),
        versions=versions(),
        model=model_identity(model, reference, architecture),
        task=task_identity(task, data),
        seeds=seeds,
        torch_threads=threads if threads is not None else torch.get_num_threads(),
        platform=f"{platform.system()} {platform.machine()}",
        python_executable=sys.executable,
    )
