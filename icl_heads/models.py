"""Loading models: :func:`load_model` returns a ready model for the installed TransformerLens."""

from __future__ import annotations

import os
import re
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch


def transformer_lens_major() -> int:
    """Major version of the installed TransformerLens."""
    return int(version("transformer-lens").split(".")[0])


DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}  # fmt: skip


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A ``torch.dtype`` from a dtype or its name (``"bfloat16"``, ``"float16"``, ``"float32"``, ...).

    Raises:
        ValueError: an unknown name (lists the valid ones).
        TypeError: neither a name nor a ``torch.dtype``.
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if not isinstance(dtype, str):
        raise TypeError(f"dtype must be a torch.dtype or a name such as 'bfloat16', got {type(dtype).__name__}")
    key = dtype.lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(set(DTYPES)))}")
    return DTYPES[key]


_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
#: seconds the one request that checks a hub name may take (no retries: an unknown name fails fast)
HUB_TIMEOUT = 5.0


def resolve_device(device: str | None) -> str | None:
    """``device`` checked against this machine: a device torch knows and that is available here.

    Raises:
        TypeError: not a string.
        ValueError: not a device name, or a device (CUDA, MPS, ...) this machine does not have.
    """
    if device is None:
        return None
    if not isinstance(device, str):
        raise TypeError(f"device must be a name such as 'cpu' or 'cuda', got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device {device!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: CUDA is not available on this machine (torch {torch.__version__}); use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA devices")
    backend = getattr(torch.backends, dev.type, None) or getattr(torch, dev.type, None)
    if dev.type not in ("cpu", "cuda") and (backend is None or not backend.is_available()):
        raise ValueError(f"device {device}: {dev.type} is not available on this machine; use cpu")
    return device


def hub_offline() -> bool:
    """The Hugging Face hub is switched off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def check_hub_name(name: str, *, timeout: float = HUB_TIMEOUT) -> None:
    """Fail fast when the hub model ``name`` cannot be loaded: one look in the cache, then one short request.

    Raises:
        ValueError: ``name`` is not a hub name, or the hub has no such model.
        FileNotFoundError: offline and the model is not in the local cache.
        ConnectionError: the hub cannot be reached within ``timeout`` seconds.
    """
    if not _HUB_NAME.match(name):
        raise ValueError(f"{name!r} is neither a local model folder (with config.json) nor a hub name like 'gpt2'")
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    repo = _official_name(name)
    if isinstance(try_to_load_from_cache(repo, "config.json"), str):
        return
    if hub_offline():
        raise FileNotFoundError(
            f"{name!r} is not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE is set); "
            "give a local model folder, or download it once online"
        )
    try:
        get_hf_file_metadata(hf_hub_url(repo, "config.json"), timeout=timeout, retry_on_errors=False)
    except GatedRepoError:
        return  # exists; loading says what access it needs
    except (RepositoryNotFoundError, EntryNotFoundError):
        raise ValueError(
            f"the Hugging Face hub has no model {name!r} (or it is private); check the name, or give a local folder"
        ) from None
    except HfHubHTTPError as err:
        raise ConnectionError(
            f"the Hugging Face hub refused the request for {name!r} ({err}); try again later"
        ) from None
    except Exception as err:  # the HTTP client's own connection and timeout errors
        raise ConnectionError(
            f"cannot reach the Hugging Face hub to fetch {name!r} ({type(err).__name__}: {err}); check the network, "
            "or set HF_HUB_OFFLINE=1 and give a local folder"
        ) from None


def _official_name(name: str) -> str:
    """The hub repository of a TransformerLens 3 alias such as ``gpt2-small`` (TransformerLens 4: ``name``)."""
    if transformer_lens_major() >= 4:
        return name
    try:
        from transformer_lens.loading_from_pretrained import get_official_model_name

        return get_official_model_name(name)
    except Exception:  # not an alias TransformerLens knows, or a TransformerLens without the table
        return name


def _check_reference(name_or_path: Any) -> None:
    """A model reference that can be loaded: a bundled name, a local folder with ``config.json``, or a hub name."""
    from icl_heads.organism import BUNDLED

    if not isinstance(name_or_path, (str, Path)) or isinstance(name_or_path, bool):
        raise TypeError(
            f"load_model needs a model name or folder (a str or Path), got {type(name_or_path).__name__}; "
            "e.g. load_model('organism')"
        )
    ref = str(name_or_path)
    if ref in BUNDLED or ref.startswith("validation:"):  # a validation name is checked when its folder is written
        return
    path = Path(ref).expanduser()
    path_like = isinstance(name_or_path, Path) or ref.startswith((".", "/", "~")) or "\\" in ref
    if path.exists() or path_like or ref.count("/") > 1:
        if not path.is_dir():
            raise FileNotFoundError(
                f"load_model({ref!r}): no such folder; give a local model folder (with config.json) or a hub name"
            )
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"load_model({ref!r}): the folder has no config.json; give a Hugging Face model folder"
            )
        return
    check_hub_name(ref)


def load_model(
    name_or_path: str | Path = "organism",
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict[str, Any] | None = None,
    n_devices: int | None = None,
    max_memory: dict[Any, Any] | None = None,
):
    """Load a model ready for analysis, for the installed TransformerLens (see docs/models.md).

    Args:
        name_or_path: ``"organism"`` or ``"organism-slot"`` (bundled, offline), ``"validation:NAME"`` (a
            hand-set mechanism, :mod:`icl_heads.validation`), a hub name, or a local folder with ``config.json``.
        device: e.g. ``"cpu"`` or ``"cuda"``; default CPU for local folders.
        dtype: a ``torch.dtype`` or its name (``"bfloat16"``, ``"float16"``, ``"float32"``); default the checkpoint's.
        device_map: TransformerLens 4 only: an accelerate device map (``"auto"`` or module -> device) over GPUs.
        n_devices: number of GPUs to split the layers over (TransformerLens 3 and 4).
        max_memory: TransformerLens 4 only: memory per device for ``device_map="auto"``.

    Returns:
        model (TransformerBridge | HookedTransformer): a ``TransformerBridge`` (TL 4) or ``HookedTransformer`` (TL 3).

    Raises:
        TypeError: ``name_or_path`` is not a str or Path.
        FileNotFoundError: a bundled checkpoint is missing; no such folder, or none with ``config.json``; offline
            and not in the cache.
        ValueError: an unknown dtype name, a device this machine lacks, a hub name the hub does not know, options
            or a local architecture the installed TransformerLens does not support.
        ConnectionError: a hub name, and the hub cannot be reached (one short attempt).
    """
    torch_dtype = resolve_dtype(dtype)
    device = resolve_device(device)
    _check_reference(name_or_path)
    from icl_heads.organism import BUNDLED

    if str(name_or_path) in BUNDLED:
        folder = BUNDLED[str(name_or_path)]
        if not (folder / "config.json").exists():
            raise FileNotFoundError(
                f"the {name_or_path} checkpoint is missing from {folder}; reinstall icl-heads or retrain it with "
                "`python scripts/organism/train.py --out DIR` (in the repository) and load_model(DIR)"
            )
        name_or_path = folder
    elif str(name_or_path).startswith("validation:"):
        from icl_heads.validation import validation_dir

        name_or_path = validation_dir(str(name_or_path))
    if transformer_lens_major() >= 4:
        from transformer_lens.model_bridge import TransformerBridge

        kw: dict[str, Any] = {"device": device or ("cpu" if device_map is None and n_devices is None else None)}
        opts = {"dtype": torch_dtype, "device_map": device_map, "n_devices": n_devices, "max_memory": max_memory}
        kw.update({k: v for k, v in opts.items() if v is not None})
        with warnings.catch_warnings():
            # TransformerLens warns that it cannot fold some norms; the faithfulness check measures what matters
            warnings.filterwarnings("ignore", message=r".*does not support fold_ln.*")
            model = TransformerBridge.boot_transformers(str(name_or_path), **kw)
            model.enable_compatibility_mode(disable_warnings=True, center_unembed=False)
        return model.eval()
    if device_map is not None or max_memory is not None:
        raise ValueError(
            "device_map and max_memory need TransformerLens 4 (TransformerBridge); on TransformerLens 3 split a "
            "model over GPUs with n_devices="
        )
    return _load_hooked(name_or_path, device=device, dtype=torch_dtype, n_devices=n_devices)


def _load_hooked(name_or_path: str | Path, *, device: str | None, dtype: torch.dtype | None, n_devices: int | None):
    from transformer_lens import HookedTransformer

    if not (Path(name_or_path) / "config.json").exists():
        kw = {k: v for k, v in (("dtype", dtype), ("n_devices", n_devices)) if v is not None}
        return HookedTransformer.from_pretrained(str(name_or_path), center_unembed=False, device=device, **kw).eval()
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights, convert_llama_weights
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(name_or_path), attn_implementation="eager").eval()
    c = hf.config
    arch = (c.architectures or [type(hf).__name__])[0]
    if arch == "LlamaForCausalLM":
        kv = c.num_key_value_heads
        rope = getattr(c, "rope_parameters", None) or {}
        fields = dict(
            d_model=c.hidden_size, d_head=c.hidden_size // c.num_attention_heads, n_heads=c.num_attention_heads,
            d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers, n_ctx=c.max_position_embeddings,
            eps=c.rms_norm_eps, d_vocab=c.vocab_size, act_fn=c.hidden_act,
            n_key_value_heads=kv if kv != c.num_attention_heads else None, normalization_type="RMSPre",
            positional_embedding_type="rotary", rotary_adjacent_pairs=False,
            rotary_dim=c.hidden_size // c.num_attention_heads,
            rotary_base=rope.get("rope_theta", getattr(c, "rope_theta", 10000.0)), final_rms=True, gated_mlp=True,
        )  # fmt: skip
        convert = convert_llama_weights
    elif arch == "GPT2LMHeadModel":
        fields = dict(
            d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head, d_mlp=c.n_inner or 4 * c.n_embd,
            n_layers=c.n_layer, n_ctx=c.n_positions, eps=c.layer_norm_epsilon, d_vocab=c.vocab_size,
            act_fn=c.activation_function, normalization_type="LNPre", positional_embedding_type="standard",
            scale_attn_by_inverse_layer_idx=c.scale_attn_by_inverse_layer_idx,
        )  # fmt: skip
        convert = convert_gpt2_weights
    else:
        raise ValueError(
            f"loading a local {arch} folder needs TransformerLens 4 (TransformerBridge); on TransformerLens 3 "
            "local folders of LlamaForCausalLM and GPT2LMHeadModel are supported"
        )
    run = dict(device=device or "cpu", dtype=dtype or torch.float32, n_devices=n_devices or 1)
    cfg = HookedTransformerConfig(**fields, **run, original_architecture=arch, default_prepend_bos=True)
    model = HookedTransformer(cfg, tokenizer=AutoTokenizer.from_pretrained(str(name_or_path)))
    model.load_and_process_state_dict(
        convert(hf, cfg), fold_ln=True, center_writing_weights=False, center_unembed=False, fold_value_biases=False
    )
    return model.eval()
