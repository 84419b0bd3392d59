"""Read NVIDIA network pickles without running any code from them.

NVIDIA's ``.pkl`` files store networks as "persistent classes" (``torch_utils.persistence``): every module is
pickled as a call ``_reconstruct_persistent_obj(meta)`` whose ``meta`` carries the full source of the module
that defined the class, and ordinary unpickling ``exec()``s that source. A pickle can also call any importable
function. We therefore never use ``pickle.load``/``torch.load(weights_only=False)`` on these files.
:class:`RestrictedUnpickler` resolves only an explicit allowlist of globals (tensor/storage rebuild functions,
``collections.OrderedDict``, ``set``, numpy scalar/array reconstruction, ``dnnlib.util.EasyDict`` as a plain
dict, torch's container modules as inert records) and maps persistent objects to inert
:class:`ModuleRecord`\\ s (class name, a hash of the embedded source, state). Anything else is refused with an
error naming the module and name. The embedded source is hashed, never executed.

Tensor storages in a plain ``pickle.dump`` of torch tensors arrive as ``torch.storage._load_from_bytes(b)``
where ``b`` is a legacy ``torch.save`` stream; we read those bytes with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ect.checkpoint import CheckpointError

__all__ = ["CheckpointImportError", "ModuleRecord", "RefusedPickleError", "RestrictedUnpickler", "load_nvidia_pickle"]


class CheckpointImportError(CheckpointError):
    """An official checkpoint could not be imported (a CheckpointError, so ``ect`` reports it without a traceback)."""


class RefusedPickleError(CheckpointImportError):
    """The pickle asked for something outside the allowlist (a global, a class or an embedded stream)."""



class ModuleRecord:
    """Inert stand-in for a pickled module: its class name and ``__dict__`` state, nothing callable."""

    class_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> ModuleRecord:
        # Torch containers are created by the NEWOBJ opcode (``cls.__new__(cls)`` then BUILD), without __init__.
        obj = super().__new__(cls)
        obj.state = {}
        obj.source_sha256 = None
        return obj

    def __init__(self, class_name: str, state: dict[str, Any], source_sha256: str | None = None) -> None:
        self.class_name = class_name
        self.state = state
        self.source_sha256 = source_sha256  # hash of the embedded module source (persistent classes only)

    @property
    def persistent(self) -> bool:
        return self.source_sha256 is not None

    def __setstate__(self, state: Any) -> None:  # BUILD for torch containers pickled by class reference
        if not isinstance(state, dict):
            raise RefusedPickleError(f"unexpected state of type {type(state).__name__} for {self.class_name}")
        self.state = dict(state)

    @property
    def init_kwargs(self) -> dict[str, Any]:
        kwargs = self.state.get("_init_kwargs")
        return dict(kwargs) if isinstance(kwargs, dict) else {}

    def __repr__(self) -> str:
        return f"ModuleRecord({self.class_name})"


class _AttrDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict subclass; has a ``__dict__`` so BUILD cannot fail)."""


_CONTAINER_RECORDS: dict[str, type[ModuleRecord]] = {}


def _container_record(module: str, name: str) -> type[ModuleRecord]:
    """A ModuleRecord subclass standing in for the torch container class ``module.name`` (never instantiated)."""
    key = f"{module}.{name}"
    if key not in _CONTAINER_RECORDS:
        _CONTAINER_RECORDS[key] = type(f"{name}Record", (ModuleRecord,), {"class_name": name})
    return _CONTAINER_RECORDS[key]


_TORCH_CONTAINERS = ("ModuleDict", "ModuleList", "Sequential", "ParameterDict", "ParameterList", "Identity")


def _reconstruct_persistent_obj(meta: Any) -> ModuleRecord:
    """Replacement for ``torch_utils.persistence._reconstruct_persistent_obj``: record, never exec."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        kind = meta.get("type") if isinstance(meta, dict) else type(meta).__name__
        raise RefusedPickleError(f"refused persistent object of type {kind!r} (only persistent classes are supported)")
    class_name, state, src = meta.get("class_name"), meta.get("state"), meta.get("module_src")
    if not isinstance(class_name, str) or not isinstance(state, dict) or not isinstance(src, str):
        raise RefusedPickleError("persistent object without class_name/state/module_src")
    return ModuleRecord(class_name, dict(state), hashlib.sha256(src.encode("utf-8", "surrogatepass")).hexdigest())


def _storage_types() -> tuple[type, ...]:
    return (torch.storage.TypedStorage, torch.UntypedStorage)


def _load_storage_from_bytes(b: Any) -> Any:
    """Replacement for ``torch.storage._load_from_bytes``: the same legacy stream, read with weights_only=True."""
    if not isinstance(b, bytes | bytearray):
        raise RefusedPickleError(f"torch.storage._load_from_bytes called with {type(b).__name__}, expected bytes")
    try:
        obj = torch.load(io.BytesIO(bytes(b)), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RefusedPickleError(
            f"refused embedded tensor storage (torch.storage._load_from_bytes): torch.load(weights_only=True) "
            f"rejected it: {exc}"
        ) from exc
    if not isinstance(obj, _storage_types()):
        raise RefusedPickleError(f"embedded tensor storage decoded to {type(obj).__name__}, not a storage")
    return obj


def _rebuild_tensor(storage: Any, storage_offset: int, size: Any, stride: Any, *_ignored: Any) -> torch.Tensor:
    """Tensor from storage/offset/size/stride; requires_grad, backward hooks and metadata are ignored."""
    if not isinstance(storage, _storage_types()):
        raise RefusedPickleError(f"tensor rebuilt from {type(storage).__name__}, not a torch storage")
    return torch._utils._rebuild_tensor_v2(
        storage, storage_offset, tuple(size), tuple(stride), False, collections.OrderedDict()
    )


def _rebuild_parameter(data: Any, *_ignored: Any) -> torch.Tensor:
    """Parameters become their plain data tensor (hooks and extra state dropped)."""
    if not isinstance(data, torch.Tensor):
        raise RefusedPickleError(f"parameter rebuilt from {type(data).__name__}, not a tensor")
    return data.detach()


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> torch.Tensor:
    """Tensor subclasses: only our own rebuild functions may be called, and the result stays a plain tensor."""
    if func not in (_rebuild_tensor, _rebuild_parameter):
        raise RefusedPickleError(f"torch._tensor._rebuild_from_type_v2 with a refused rebuild function {func!r}")
    return func(*args)


def _copyreg_reconstructor(cls: Any, base: Any, state: Any) -> ModuleRecord:
    """Protocol-0/1 object creation (``copyreg._reconstructor``), for our record stand-ins only."""
    if not (isinstance(cls, type) and issubclass(cls, ModuleRecord) and base is object and state is None):
        raise RefusedPickleError(f"copyreg._reconstructor for {cls!r} refused")
    return cls.__new__(cls)


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode(str, 'latin1')``, the only codec call pickle protocols < 3 make (to store bytes)."""
    if not isinstance(text, str) or encoding != "latin1":
        raise RefusedPickleError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _numpy_multiarray() -> Any:
    import numpy._core.multiarray as multiarray  # numpy >= 2; pickles from numpy 1 say numpy.core.multiarray

    return multiarray


def _numpy_numeric() -> Any:
    import numpy._core.numeric as numeric

    return numeric


_ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
    ("torch._utils", "_rebuild_tensor_v2"): lambda: _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): lambda: _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): lambda: _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): lambda: _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): lambda: _rebuild_from_type_v2,
    ("torch.storage", "_load_from_bytes"): lambda: _load_storage_from_bytes,
    ("torch", "Tensor"): lambda: torch.Tensor,  # only used as the new_type argument above
    ("torch.nn.parameter", "Parameter"): lambda: torch.nn.Parameter,
    ("torch", "device"): lambda: torch.device,
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    ("builtins", "set"): lambda: set,
    ("builtins", "frozenset"): lambda: frozenset,
    ("_codecs", "encode"): lambda: _latin1_bytes,  # how protocols < 3 store bytes
    ("copyreg", "_reconstructor"): lambda: _copyreg_reconstructor,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): lambda: _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): lambda: _AttrDict,
    ("dnnlib", "EasyDict"): lambda: _AttrDict,
    # EDM keeps numpy scalars (e.g. skip_scale = np.sqrt(0.5)) in module state and init kwargs.
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy.core.multiarray", "scalar"): lambda: _numpy_multiarray().scalar,
    ("numpy._core.multiarray", "scalar"): lambda: _numpy_multiarray().scalar,
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_multiarray()._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_numeric()._frombuffer,  # protocol 5 arrays
    ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_numeric()._frombuffer,
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_multiarray()._reconstruct,
}


_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _is_storage_class(obj: Any) -> bool:
    return isinstance(obj, type) and (issubclass(obj, torch.storage.TypedStorage) or obj is torch.UntypedStorage)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allowlisted globals; persistent classes become :class:`ModuleRecord`."""

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)  # protocols < 3 write Python 2 names
        factory = _ALLOWED.get((module, name))
        if factory is not None:
            return factory()
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)  # dtype constants
        if module == "torch" and _is_storage_class(getattr(torch, name, None)):
            return getattr(torch, name)  # e.g. torch.FloatStorage: data containers, nothing runs
        if module.startswith("torch.nn.modules.") and name in _TORCH_CONTAINERS:
            return _container_record(module, name)
        raise RefusedPickleError(
            f"refused to load global {module}.{name}: not on the importer's allowlist (official EDM/EDM2 network "
            "pickles never need it; loading it could run arbitrary code)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickleError(
            f"refused persistent id {pid!r}: torch zip/persistent-id streams are not NVIDIA pickles"
        )


def load_nvidia_pickle(path: str | Path) -> Any:
    """Read an NVIDIA network pickle with :class:`RestrictedUnpickler` (no code from the file runs)."""
    with open(path, "rb") as f:
        head = f.read(4)
        if head.startswith(b"PK\x03\x04"):
            raise CheckpointImportError(
                f"{path} is a torch zip archive (torch.save), not an NVIDIA network pickle; ect checkpoints load "
                "with ect.checkpoint.load_checkpoint"
            )
        f.seek(0)
        try:
            return RestrictedUnpickler(f).load()
        except CheckpointImportError:
            raise
        except Exception as exc:
            raise CheckpointImportError(f"cannot unpickle {path}: {type(exc).__name__}: {exc}") from exc
