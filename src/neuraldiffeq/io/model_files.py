"""Saving and loading models without running code from the file.

A model file (format 2) holds:

1. a header line, `NEURALDIFFEQ-MODEL-2`, and the length of the description;
2. the description, JSON: the model's structure as data. An equinox module (or dataclass) whose
   class lives in `neuraldiffeq`, `equinox.nn`, `diffrax`, `optimistix` or `lineax` is written as
   its shortest public class path (`diffrax:Tsit5`, `neuraldiffeq:NeuralODE`, not the private
   module that defines it, which a library may move) and its fields; arrays as a reference into
   the arrays section with their name (the path in the model, e.g.
   `.field.net.layers[0].weight`), dtype and shape; numbers, strings,
   `None`, tuples, lists, dicts and dtypes as JSON; functions by an allow-listed name (activations
   of `jax.nn`, elementwise `jax.numpy` functions such as `jnp.tanh`, `jax.lax.max`, the
   library's own functions such as `nde.transforms.cube`); any other part (a lambda, a user's
   class) is described as not rebuildable and pickled in its own section, see 4;
3. the arrays, raw little-endian bytes (no pickle), with a SHA-256 checksum of everything below
   the description;
4. only if the model has parts that cannot be described that way (a lambda, a user's class), a
   separate section of those parts pickled with cloudpickle, marked in the description.

`load(path)` rebuilds the model from the description: it resolves class paths only inside the
allow-listed packages, creates each object without calling its `__init__`, checks every array's
size and dtype, and never unpickles anything; a file with pickled parts is refused with a
`ValueError` that names them and the two ways out: `load(path, like=model)` (arrays into a model
you build with your own code) or `load(path, trusted=True)` (unpickles them: runs code from the
file). Saves are atomic: a temporary file in the same folder, flushed to disk, then renamed.
Files written by neuraldiffeq 0.1 name module paths that moved when the package was re-layered
(`neuraldiffeq.solve_config`, `neuraldiffeq.transforms`, ...); `load` reads them as today's
(`_LEGACY_MODULES`), in descriptions and in trusted pickles alike.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import glob
import hashlib
import importlib
import io
import json
import math
import os
import re
import socket
import sys
import tempfile
import time
import types
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .files import replace_atomically, umask

#: the format this version writes; it reads this one and the previous one (see `load`)
FORMAT = 2
_MAGIC = b"NEURALDIFFEQ-MODEL-"
_LEGACY_MAGIC = b"NEURALDIFFEQ-MODEL-1\n"
_MAX_HEADER = 1 << 30

#: packages whose equinox modules, dataclasses, named tuples, enums and classes may be rebuilt
_CLASS_PACKAGES = ("neuraldiffeq", "equinox.nn", "diffrax", "optimistix", "lineax")
#: modules whose functions (or named constants) may be referred to by name: pure numerics only;
#: the application modules (CLI, demos, I/O) are deliberately not here
_FUNCTION_PACKAGES = (
    "neuraldiffeq.models.transforms",
    "neuraldiffeq.models",
    "neuraldiffeq.solve.sensitivity",
    "neuraldiffeq.solve",
    "neuraldiffeq.fitting.losses",
    "neuraldiffeq._checks",
    "equinox.nn",
    "diffrax",
    "optimistix",
    "lineax",
)
#: where the modules of neuraldiffeq 0.1 live now (the package was re-layered after 0.1): files
#: written by 0.1 name these old paths, which `load` reads as the new ones
_LEGACY_MODULES = {
    "neuraldiffeq._cacheable": "neuraldiffeq.compilation.cacheable",
    "neuraldiffeq._compile": "neuraldiffeq.compilation.options",
    "neuraldiffeq._continuous_adjoint": "neuraldiffeq.solve.continuous_adjoint",
    "neuraldiffeq._exported": "neuraldiffeq.compilation.exported",
    "neuraldiffeq.cache": "neuraldiffeq.compilation.persistent",
    "neuraldiffeq.data": "neuraldiffeq.io.timeseries",
    "neuraldiffeq.interpolation": "neuraldiffeq.solve.interpolation",
    "neuraldiffeq.outputs": "neuraldiffeq.io.outputs",
    "neuraldiffeq.plotting": "neuraldiffeq.io.plotting",
    "neuraldiffeq.sensitivity": "neuraldiffeq.solve.sensitivity",
    "neuraldiffeq.serialisation": "neuraldiffeq.io.model_files",
    "neuraldiffeq.series": "neuraldiffeq.fitting.series",
    "neuraldiffeq.solve_config": "neuraldiffeq.solve.config",
    "neuraldiffeq.solvers": "neuraldiffeq.solve",
    "neuraldiffeq.solvers.dae": "neuraldiffeq.solve.dae",
    "neuraldiffeq.solvers.dde": "neuraldiffeq.solve.dde",
    "neuraldiffeq.solvers.names": "neuraldiffeq.solve.names",
    "neuraldiffeq.solvers.stiffness": "neuraldiffeq.solve.stiffness",
    "neuraldiffeq.transforms": "neuraldiffeq.models.transforms",
}
#: never imported whatever the file says (importing `neuraldiffeq.__main__` runs the CLI)
_NEVER_IMPORT = ("neuraldiffeq.__main__", "neuraldiffeq.cli")
#: elementwise `jax.numpy` functions accepted as activations / transforms (all of `jax.nn` is)
_JNP_FUNCTIONS = (
    "abs arccosh arcsinh arctan cbrt cos cosh exp exp2 expm1 log log1p log2 negative positive "
    "reciprocal sign sin sinc sinh sqrt square tan tanh"
).split()
#: `jax.lax` reductions used by layers (e.g. `eqx.nn.MaxPool2d` holds `jax.lax.max`)
_LAX_FUNCTIONS = ("add", "max", "min", "mul")
_DTYPES = {
    name: np.dtype(name)
    for name in (
        "bool int8 int16 int32 int64 uint8 uint16 uint32 uint64 float16 float32 float64 "
        "complex64 complex128"
    ).split()
} | {"bfloat16": np.dtype(jnp.bfloat16)}
_KEY_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_ARRAY_TYPES = (jax.Array, np.ndarray, np.generic)
_TEMP_PREFIX = ".tmp-"
_OLD_TEMP = 3600.0  # seconds: a temp file of unknown owner this old belongs to no running save


class _ArraySpec:
    """Stand-in for an array in a format-1 (pickled) structure; kept to read those files."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype).str


# -- names ----------------------------------------------------------------------------------


def _in_packages(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


@functools.cache
def _named_functions() -> dict[str, Any]:
    """`"jax.nn:relu" -> jax.nn.relu` for the functions known by a short name."""
    table = {}
    for name in dir(jax.nn):
        obj = getattr(jax.nn, name)
        if not name.startswith("_") and callable(obj) and not isinstance(obj, type):
            table[f"jax.nn:{name}"] = obj
    for name in _JNP_FUNCTIONS:
        table.setdefault(f"jax.numpy:{name}", getattr(jnp, name))
    for name in _LAX_FUNCTIONS:
        table.setdefault(f"jax.lax:{name}", getattr(jax.lax, name))
    return table


@functools.cache
def _function_names() -> dict[int, str]:
    names: dict[int, str] = {}
    for ref, obj in _named_functions().items():
        names.setdefault(id(obj), ref)
    return names


def _public_module(obj: Any, module: str, packages: tuple[str, ...], lookup) -> str:
    """The shortest public module (no `_`-prefixed part) among `module` and its parents, inside
    `packages`, where `lookup(module object)` gives `obj`; else `module` itself. So a file names
    `diffrax:Tsit5` rather than the private module defining it, and `neuraldiffeq:NeuralODE`:
    paths that survive a library moving its code between private modules."""
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        if parts[i - 1].startswith("_"):
            break  # below a private module everything is private
        candidate = ".".join(parts[:i])
        if not _in_packages(candidate, packages) or _in_packages(candidate, _NEVER_IMPORT):
            continue
        namespace = sys.modules.get(candidate)
        if namespace is not None and lookup(namespace) is obj:
            return candidate
    return module


def _class_ref(cls: type) -> str | None:
    """`module:qualname` of a class the loader may rebuild (its shortest public path), or None."""
    module, qualname = cls.__module__, cls.__qualname__
    if not _in_packages(module, _CLASS_PACKAGES) or _in_packages(module, _NEVER_IMPORT):
        return None
    if "<" in qualname or _resolve_attr(sys.modules.get(module), qualname) is not cls:
        return None
    lookup = functools.partial(_resolve_attr, qualname=qualname)
    return f"{_public_module(cls, module, _CLASS_PACKAGES, lookup)}:{qualname}"


def _global_ref(obj: Any, module: str | None, packages: tuple[str, ...]) -> str | None:
    """`module:name` where `obj` is bound at the top level of an allowed module, or None."""
    if not isinstance(module, str) or not _in_packages(module, packages):
        return None
    if _in_packages(module, _NEVER_IMPORT):
        return None
    namespace = vars(sys.modules[module]) if module in sys.modules else {}
    guess = getattr(obj, "__name__", None)
    found = None
    if isinstance(guess, str) and namespace.get(guess) is obj:
        found = guess
    else:
        found = next((name for name, value in namespace.items() if value is obj), None)
    if found is None:
        return None
    public = _public_module(obj, module, packages, lambda m: vars(m).get(found))
    return f"{public}:{found}"


def _resolve_attr(root: Any, qualname: str) -> Any:
    obj = root
    for part in qualname.split("."):
        obj = getattr(obj, part, None) if obj is not None else None
    return obj


def _import_allowed(module: str, packages: tuple[str, ...], where: str) -> types.ModuleType:
    """Import a module named by the file (a 0.1 path read as today's), only inside the allowed
    packages."""
    module = _LEGACY_MODULES.get(module, module)
    if not _NAME.match(module) or not _in_packages(module, packages):
        raise _Refused(where, f"refers to module {module!r}, outside the allowed packages")
    if _in_packages(module, _NEVER_IMPORT) or "__main__" in module.split("."):
        raise _Refused(where, f"refers to module {module!r}, which is never imported")
    try:
        return importlib.import_module(module)
    except ImportError:
        raise _Refused(where, f"refers to module {module!r}, absent from this version") from None


def _split_ref(ref: Any, where: str) -> tuple[str, str]:
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise _Damaged(where, f"bad reference {ref!r}")
    module, name = ref.split(":")
    if not _NAME.match(module) or not _NAME.match(name) or "__" in name:
        raise _Damaged(where, f"bad reference {ref!r}")  # (no dunder: no walking to globals)
    return module, name


class _Refused(Exception):
    def __init__(self, where: str, what: str):
        super().__init__(f"{where or '(the model)'} {what}")


class _Damaged(Exception):
    def __init__(self, where: str, what: str):
        super().__init__(f"{where or '(the model)'}: {what}")


# -- description (save) ---------------------------------------------------------------------


def _describe_part(x: Any) -> str:
    if isinstance(x, types.FunctionType | types.BuiltinFunctionType):
        return f"function {x.__module__}.{x.__qualname__}"
    cls = x if isinstance(x, type) else type(x)
    kind = "class" if isinstance(x, type) else "an instance of"
    return f"{kind} {cls.__module__}.{cls.__qualname__}"


class _Writer:
    """Turns a model into (description, arrays, pickled parts)."""

    def __init__(self):
        self.arrays: list[dict] = []
        self.chunks: list[bytes] = []
        self.offset = 0
        self.pickles: list[dict] = []
        self.pickle_chunks: list[bytes] = []
        self.pickle_offset = 0
        self.markers: dict[int, int] = {}

    def _add_array(self, x: Any, path: str, visible: bool) -> dict:
        kind = "jax" if isinstance(x, jax.Array) else "numpy"
        entry: dict[str, Any] = {"name": path, "kind": kind}
        if isinstance(x, np.generic):
            entry["kind"] = "numpy_scalar"
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            entry["kind"], entry["impl"] = "key", str(jax.random.key_impl(x))
            x = jax.random.key_data(x)
        value = np.asarray(x)
        dtype = value.dtype
        if dtype.name not in _DTYPES or dtype != _DTYPES[dtype.name]:
            raise ValueError(f"model cannot be saved: array {path!r} has dtype {dtype}.")
        data = np.ascontiguousarray(value, dtype=dtype.newbyteorder("<")).tobytes()
        entry |= {"dtype": dtype.name, "shape": list(value.shape), "offset": self.offset}
        entry |= {"nbytes": len(data), "visible": visible}
        self.chunks.append(data)
        self.offset += len(data)
        self.arrays.append(entry)
        return {"t": "array", "index": len(self.arrays) - 1}

    def _rollback(self, mark: tuple[int, int, int, int]) -> None:
        n_arrays, n_chunks, offset, n_pickles = mark
        del self.arrays[n_arrays:], self.chunks[n_chunks:]
        self.offset = offset
        for entry in self.pickles[n_pickles:]:
            if "nbytes" in entry:
                self.pickle_chunks.pop()
                self.pickle_offset -= entry["nbytes"]
        del self.pickles[n_pickles:]

    def _pickle(self, x: Any, path: str, what: str) -> dict:
        import cloudpickle  # only the trusted path ever needs it

        entry: dict[str, Any] = {"path": path, "what": what}
        try:
            data = cloudpickle.dumps(x)
        except Exception as e:  # noqa: BLE001 - pickling raises many types
            entry["error"] = f"{type(e).__name__}: {e}"
            self.pickles.append(entry)
            return {"t": "pickled", "index": len(self.pickles) - 1}
        entry |= {"offset": self.pickle_offset, "nbytes": len(data)}
        self.pickle_chunks.append(data)
        self.pickle_offset += len(data)
        self.pickles.append(entry)
        return {"t": "pickled", "index": len(self.pickles) - 1}

    def describe(self, x: Any, path: str = "", visible: bool = True) -> Any:
        # `path` spells jax's key path (`jax.tree_util.keystr`), so `like=` can match arrays by
        # name; `visible` is False below static fields, which jax's flattening does not reach.
        if x is None or type(x) in (bool, int, str):
            return x
        if type(x) is float:
            return {"t": "float", "v": repr(x)}
        if type(x) is complex:
            return {"t": "complex", "re": repr(x.real), "im": repr(x.imag)}
        if isinstance(x, _ARRAY_TYPES):
            return self._add_array(x, path, visible)
        if type(x) in (tuple, list):
            items = [self.describe(v, f"{path}[{i}]", visible) for i, v in enumerate(x)]
            return {"t": type(x).__name__, "items": items}
        if type(x) is dict:
            items = [
                [self.describe(k, path, False), self.describe(v, f"{path}[{k!r}]", visible)]
                for k, v in x.items()
            ]
            return {"t": "dict", "items": items}
        if type(x) is object:  # a bare marker (e.g. equinox's StateIndex): only its identity counts
            return {"t": "marker", "id": self.markers.setdefault(id(x), len(self.markers))}
        if isinstance(x, np.dtype) and x.name in _DTYPES:
            return {"t": "dtype", "name": x.name}
        if isinstance(x, type(jnp.float32)) and x.dtype.name in _DTYPES:
            return {"t": "jax_scalar_type", "name": x.dtype.name}
        if isinstance(x, jax.ShapeDtypeStruct) and x.dtype.name in _DTYPES:
            return {"t": "shape_dtype", "shape": list(x.shape), "dtype": x.dtype.name}
        if isinstance(x, type):
            ref = _class_ref(x)
            if ref is not None:
                return {"t": "class", "ref": ref}
            return self._pickle(x, path, _describe_part(x))
        if isinstance(x, tuple) and hasattr(type(x), "_fields"):
            ref = _class_ref(type(x))
            if ref is not None:
                items = [self.describe(getattr(x, f), f"{path}.{f}", visible) for f in x._fields]
                return {"t": "namedtuple", "class": ref, "items": items}
        if isinstance(x, enum.Enum):
            ref = _class_ref(type(x))
            if ref is not None:
                return {"t": "enum", "class": ref, "name": x.name}
        if isinstance(x, eqx.Module) or (dataclasses.is_dataclass(x) and not isinstance(x, type)):
            return self._describe_object(x, path, visible)
        if type(x) is functools.partial:
            mark = (len(self.arrays), len(self.chunks), self.offset, len(self.pickles))
            func = self.describe(x.func, path, False)
            args = self.describe(tuple(x.args), path, False)
            keywords = self.describe(dict(x.keywords), path, False)
            if len(self.pickles) == mark[3]:
                return {"t": "partial", "func": func, "args": args, "keywords": keywords}
            self._rollback(mark)  # a partial of unknown parts is pickled whole instead
            return self._pickle(x, path, _describe_part(x.func))
        if callable(x) and not isinstance(x, type):
            ref = _function_names().get(id(x))
            if ref is not None:
                return {"t": "function", "ref": ref}
            module = getattr(x, "__module__", None)
            if isinstance(x, types.FunctionType | types.BuiltinFunctionType):
                ref = _global_ref(x, module, _FUNCTION_PACKAGES)
                if ref is not None:
                    return {"t": "function", "ref": ref}
        ref = _global_ref(x, type(x).__module__, _CLASS_PACKAGES)
        if ref is not None and not callable(x):
            return {"t": "constant", "ref": ref}
        return self._pickle(x, path, _describe_part(x))

    def _describe_object(self, x: Any, path: str, visible: bool) -> dict:
        cls = type(x)
        is_module = isinstance(x, eqx.Module)
        if not is_module and visible:  # a plain dataclass is one leaf unless registered
            visible = not jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(x))
        fields = {}
        for f in dataclasses.fields(x):
            static = is_module and f.metadata.get("static", False)
            try:
                value = getattr(x, f.name)
            except AttributeError:  # a field never set (an equinox module mid-construction)
                raise ValueError(f"model cannot be saved: {path}.{f.name} is not set.") from None
            fields[f.name] = self.describe(value, f"{path}.{f.name}", visible and not static)
        kind = "module" if is_module else "dataclass"
        ref = _class_ref(cls)
        if ref is not None:
            return {"t": kind, "class": ref, "fields": fields}
        index = self._pickle(cls, path, _describe_part(cls))["index"]
        name = f"{cls.__module__}:{cls.__qualname__}"
        return {"t": kind, "class": name, "class_pickle": index, "fields": fields}


# -- description (load) ---------------------------------------------------------------------


class _Reader:
    def __init__(self, arrays: list, pickled: list, trusted: bool):
        self.arrays, self.pickled, self.trusted = arrays, pickled, trusted
        self.markers: dict[int, object] = {}

    def build(self, d: Any, where: str = "") -> Any:
        if d is None or type(d) in (bool, int, str):
            return d
        if not isinstance(d, dict) or not isinstance(d.get("t"), str):
            raise _Damaged(where, f"unexpected entry {str(d)[:80]!r}")
        t = d["t"]
        if t == "float":
            return float(_str(d, "v", where))
        if t == "complex":
            return complex(float(_str(d, "re", where)), float(_str(d, "im", where)))
        if t == "array":
            return self.arrays[_index(d, "index", len(self.arrays), where)]
        if t in ("tuple", "list"):
            items = [self.build(v, f"{where}[{i}]") for i, v in enumerate(_list(d, "items", where))]
            return tuple(items) if t == "tuple" else items
        if t == "dict":
            out = {}
            for pair in _list(d, "items", where):
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise _Damaged(where, "bad dict entry")
                key = self.build(pair[0], where)
                out[key] = self.build(pair[1], f"{where}[{key!r}]")
            return out
        if t in ("dtype", "jax_scalar_type"):
            name = _str(d, "name", where)
            if name not in _DTYPES:
                raise _Damaged(where, f"unknown dtype {name!r}")
            return _DTYPES[name] if t == "dtype" else getattr(jnp, name)
        if t == "shape_dtype":
            name = _str(d, "dtype", where)
            if name not in _DTYPES:
                raise _Damaged(where, f"unknown dtype {name!r}")
            return jax.ShapeDtypeStruct(_shape(d.get("shape"), where), _DTYPES[name])
        if t == "class":
            return self._class(d.get("ref"), where)
        if t == "marker":
            marker_id = d.get("id")
            if type(marker_id) is not int:
                raise _Damaged(where, "bad marker")
            return self.markers.setdefault(marker_id, object())
        if t == "namedtuple":
            cls = self._class(d.get("class"), where)
            if not (issubclass(cls, tuple) and hasattr(cls, "_fields")):
                raise _Refused(where, f"names {cls.__qualname__}, which is not a named tuple")
            items = [self.build(v, where) for v in _list(d, "items", where)]
            if len(items) != len(cls._fields):
                raise _Damaged(where, f"{cls.__qualname__} has {len(cls._fields)} fields")
            return tuple.__new__(cls, items)
        if t == "enum":
            cls = self._class(d.get("class"), where)
            if not issubclass(cls, enum.Enum):
                raise _Refused(where, f"names {cls.__qualname__}, which is not an enum")
            name = _str(d, "name", where)
            if name not in cls.__members__:
                raise _Damaged(where, f"{cls.__qualname__} has no member {name!r}")
            return cls.__members__[name]
        if t in ("module", "dataclass"):
            return self._object(d, where)
        if t == "partial":
            func = self.build(d.get("func"), where)
            args = self.build(d.get("args"), where)
            keywords = self.build(d.get("keywords"), where)
            if not (callable(func) and isinstance(args, tuple) and isinstance(keywords, dict)):
                raise _Damaged(where, "bad partial function")
            return functools.partial(func, *args, **keywords)
        if t == "function":
            return self._function(d.get("ref"), where)
        if t == "constant":
            module, name = _split_ref(d.get("ref"), where)
            mod = _import_allowed(module, _CLASS_PACKAGES, where)
            obj = vars(mod).get(name)
            if (
                obj is None
                or callable(obj)
                or isinstance(obj, type | types.ModuleType)
                or not _in_packages(type(obj).__module__, _CLASS_PACKAGES)
            ):
                raise _Refused(where, f"names {module}.{name}, which is not an allowed constant")
            return obj
        if t == "pickled":
            return self._unpickle(_index(d, "index", len(self.pickled), where), where)
        raise _Damaged(where, f"unknown entry type {t!r} (a newer neuraldiffeq?)")

    def _class(self, ref: Any, where: str) -> type:
        module, qualname = _split_ref(ref, where)
        mod = _import_allowed(module, _CLASS_PACKAGES, where)
        cls = _resolve_attr(mod, qualname)
        if cls is None:
            raise _Refused(where, f"names class {module}.{qualname}, absent from this version")
        # a class defined in the allowed packages, under its own name: at its defining module
        # or re-exported by a public one (`diffrax:Tsit5`, `neuraldiffeq:NeuralODE`)
        if (
            not isinstance(cls, type)
            or cls.__name__ != qualname.rsplit(".", 1)[-1]
            or not _in_packages(cls.__module__, _CLASS_PACKAGES)
            or _in_packages(cls.__module__, _NEVER_IMPORT)
        ):
            raise _Refused(where, f"names {module}.{qualname}, which is not an allowed class")
        return cls

    def _function(self, ref: Any, where: str) -> Any:
        table = _named_functions()
        if ref in table:
            return table[ref]
        module, name = _split_ref(ref, where)
        mod = _import_allowed(module, _FUNCTION_PACKAGES, where)
        obj = vars(mod).get(name)
        if not isinstance(obj, types.FunctionType | types.BuiltinFunctionType):
            raise _Refused(where, f"names {module}.{name}, which is not an allowed function")
        defined = obj.__module__
        if not _in_packages(defined, _FUNCTION_PACKAGES) or _in_packages(defined, _NEVER_IMPORT):
            raise _Refused(where, f"names {module}.{name}, which is defined elsewhere")
        return obj

    def _object(self, d: dict, where: str) -> Any:
        fields = d.get("fields")
        if not isinstance(fields, dict):
            raise _Damaged(where, "object without fields")
        if "class_pickle" in d:
            cls = self._unpickle(_index(d, "class_pickle", len(self.pickled), where), where)
        else:
            cls = self._class(d.get("class"), where)
        if d["t"] == "module" and not (isinstance(cls, type) and issubclass(cls, eqx.Module)):
            raise _Refused(where, f"names {cls!r}, which is not an equinox module")
        if not dataclasses.is_dataclass(cls):
            raise _Refused(where, f"names {cls!r}, which is not a dataclass")
        names = [f.name for f in dataclasses.fields(cls)]
        # a field added since the file was written, with a default, takes that default (e.g.
        # SolveConfig's jacobian/linear_solve, new in 0.2): the file describes all it knew of
        defaults = {
            f.name: f.default
            for f in dataclasses.fields(cls)
            if f.name not in fields and f.default is not dataclasses.MISSING
        }
        if sorted(set(names) - set(defaults)) != sorted(fields):
            raise _Refused(
                where,
                f"is a {cls.__qualname__} with fields {sorted(fields)}, but this version's has "
                f"{sorted(names)}",
            )
        values = {
            name: defaults[name]
            if name in defaults
            else self.build(fields[name], f"{where}.{name}")
            for name in names
        }
        # Rebuilt field by field without calling __init__/__post_init__: no code runs beyond
        # the allow-listed class's attribute storage.
        obj = object.__new__(cls)
        for name, value in values.items():
            object.__setattr__(obj, name, value)
        return obj

    def _unpickle(self, index: int, where: str) -> Any:
        entry = self.pickled[index]
        if not self.trusted:
            raise _Refused(where, "needs trusted=True")  # collected before building; see load
        if entry.get("data") is None:
            raise _Refused(where, f"could not be saved ({entry.get('error')}); use like=")
        try:
            return _unpickle(entry["data"])
        except Exception as e:  # noqa: BLE001 - unpickling raises anything (e.g. a missing module)
            where = where or str(entry.get("path", ""))
            raise _Damaged(where, f"could not be unpickled ({type(e).__name__}: {e})") from None


def _unpickle(data: bytes) -> Any:
    """`cloudpickle.loads(data)` (trusted files only), reading 0.1's module paths as today's."""
    import pickle

    import cloudpickle  # noqa: F401 — what its pickles refer to is registered on import

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            return super().find_class(_LEGACY_MODULES.get(module, module), name)

    return Unpickler(io.BytesIO(data)).load()


def _str(d: dict, key: str, where: str) -> str:
    v = d.get(key)
    if not isinstance(v, str):
        raise _Damaged(where, f"missing {key!r}")
    return v


def _list(d: dict, key: str, where: str) -> list:
    v = d.get(key)
    if not isinstance(v, list):
        raise _Damaged(where, f"missing {key!r}")
    return v


def _index(d: dict, key: str, n: int, where: str) -> int:
    v = d.get(key)
    if type(v) is not int or not 0 <= v < n:
        raise _Damaged(where, f"bad {key!r}")
    return v


def _shape(v: Any, where: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not all(type(s) is int and s >= 0 for s in v):
        raise _Damaged(where, f"bad shape {v!r}")
    return tuple(v)


# -- files ----------------------------------------------------------------------------------


def _sha256(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _clean_stale_temps(folder: str, base: str) -> None:
    """Remove temporary files left by saves that were killed (never those of a running save).

    A temporary file is named `.tmp-<target>-<host>-<pid>-<random>.eqx`: on this host it is
    stale once its process is gone; from another host (a shared folder) or from format 1
    (`.tmp-<random>.eqx`, no owner recorded) once it is older than any save takes.
    """
    ours = re.compile(re.escape(f"{_TEMP_PREFIX}{base}-") + r"(.+)-(\d+)-[a-z0-9_]{8}\.eqx\Z")
    legacy = re.compile(re.escape(_TEMP_PREFIX) + r"[a-z0-9_]{8}\.eqx\Z")
    now, host = time.time(), _host()
    for tmp in glob.glob(os.path.join(glob.escape(folder), f"{_TEMP_PREFIX}*.eqx")):
        name = os.path.basename(tmp)
        match = ours.match(name)
        try:
            if match and match.group(1) == host:
                stale = not _pid_alive(int(match.group(2)))
            else:
                stale = (match or legacy.match(name)) and now - os.path.getmtime(tmp) > _OLD_TEMP
            if stale:
                os.remove(tmp)
        except OSError:  # gone already, or not ours to remove: not this save's business
            pass


def save(path: str | os.PathLike, model: Any) -> None:
    """Write `model` (any equinox module / pytree) to `path` atomically.

    What is safe: the file describes the model as data (class paths, fields, arrays); `load`
    rebuilds it without running code from the file when every part is one the library knows:
    its models, fields and sensitivities, `equinox.nn` layers, diffrax solvers, activations such
    as `jnp.tanh` or `jax.nn.softplus` and named transforms such as `nde.transforms.cube`. Parts
    it does not know (a lambda, your own class) are still saved, pickled in a separate marked
    section, with a warning: such a file loads with `load(path, like=model)` or, if you trust
    it, `load(path, trusted=True)`.

    The file is written to a temporary file in the same folder, flushed to disk and renamed over
    `path`, so an interrupted save leaves the previous file intact; temporary files of saves that
    were killed are removed by the next save to the same path. The file's permissions follow
    your umask.

    Example:
        >>> import tempfile, os, equinox as eqx, jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> mlp = eqx.nn.MLP(2, 2, 8, 1, activation=jnp.tanh, key=jax.random.key(0))
        >>> model = nde.NeuralODE(nde.autonomous(mlp, input_fn=nde.transforms.cube))
        >>> path = os.path.join(tempfile.mkdtemp(), "model.eqx")
        >>> nde.save(path, model)
        >>> loaded = nde.load(path)  # rebuilt from the description: no code from the file runs
        >>> bool(jnp.all(loaded(jnp.linspace(0, 1, 3), jnp.ones(2)) ==
        ...              model(jnp.linspace(0, 1, 3), jnp.ones(2))))
        True
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot save to {path!r}: folder {folder!r} does not exist.")
    writer = _Writer()
    try:
        description = writer.describe(model)
    except RecursionError:
        raise ValueError("model cannot be saved: it is nested too deeply.") from None
    untrusted = [p for p in writer.pickles]
    if untrusted:
        parts = "; ".join(f"{p['path'] or '(the model)'}: {p['what']}" for p in untrusted[:5])
        warnings.warn(
            f"saving {path!r}: {len(untrusted)} part(s) are not known to the library and are "
            f"stored pickled ({parts}). A plain nde.load will refuse the file; load it with "
            "nde.load(path, like=model) or nde.load(path, trusted=True). Named functions (e.g. "
            "nde.transforms.cube, jnp.tanh) instead of lambdas avoid this.",
            UserWarning,
            stacklevel=2,
        )
    data = b"".join(writer.chunks)
    pickles = b"".join(writer.pickle_chunks)
    from .._version import __version__

    header = {
        "format": FORMAT,
        "writer": f"neuraldiffeq {__version__}",
        "model": description,
        "arrays": writer.arrays,
        "arrays_bytes": len(data),
        "pickle_section": {
            "note": "cloudpickle; runs code when read: read only by nde.load(path, trusted=True)",
            "nbytes": len(pickles),
            "parts": writer.pickles,
        },
        "sha256": _sha256(data, pickles),
    }
    blob = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    base = os.path.basename(path)
    _clean_stale_temps(folder, base)
    prefix = f"{_TEMP_PREFIX}{base}-{_host()}-{os.getpid()}-"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".eqx")
    parts = [b"%s%d\n" % (_MAGIC, FORMAT), len(blob).to_bytes(8, "little"), blob, data, pickles]
    # mkstemp makes 0600; honour the umask
    replace_atomically(path, tmp, fd, parts, mode=0o666 & ~umask())
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def load(path: str | os.PathLike, like: Any = None, *, trusted: bool = False) -> Any:
    """Read a model written by `save`, without running code from the file.

    What is safe: by default the model is rebuilt from the file's description, resolving class
    and function names only inside the library and its dependencies (`neuraldiffeq`,
    `equinox.nn`, `diffrax`, `optimistix`, `lineax`, `jax.nn`, elementwise `jax.numpy`),
    creating objects without calling their constructors, and checking every array's size and
    dtype against the description. Nothing is unpickled. A file with parts the library does not
    know (a lambda, your own class) raises a `ValueError` naming them; then either

    - `load(path, like=model)`: build the model with your own code and read only its arrays
      from the file (matched by name, shape and dtype), which is always safe; or
    - `load(path, trusted=True)`: unpickle those parts (cloudpickle). **This runs code stored
      in the file**: only for files you wrote yourself or whose author you trust. It also reads
      files of the previous format (format 1, whose whole structure is a pickle).

    Arguments:
        path: the file.
        like: a model of the same structure, to read the arrays into.
        trusted: allow unpickling the parts that cannot be described as data.

    Raises `ValueError` for a file that is not a model, truncated or damaged (checksum), written
    by a newer version, or that does not match `like`.

    Example: see `save`.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise ValueError(f"cannot read model file {path!r}: {e}") from None
    if not blob.startswith(_MAGIC):
        raise ValueError(f"{path!r} is not a neuraldiffeq model file (wrong header).")
    end = blob.find(b"\n", len(_MAGIC), len(_MAGIC) + 12)
    version = blob[len(_MAGIC) : end]
    if end < 0 or not version.isdigit():
        raise ValueError(f"{path!r} is not a neuraldiffeq model file (wrong header).")
    version = int(version)
    if version > FORMAT:
        raise ValueError(
            f"{path!r} is in model file format {version}, written by a newer neuraldiffeq; this "
            f"version reads formats up to {FORMAT}: upgrade neuraldiffeq (pip install -U "
            "neuraldiffeq) to load it."
        )
    if version == 1:
        return _load_format1(path, blob, like, trusted)
    if version != FORMAT:
        raise ValueError(f"{path!r}: unknown model file format {version}.")
    header, data, pickles = _read_format2(path, blob, end + 1)
    arrays = header["arrays"]
    if like is not None:
        return _into_like(path, like, arrays, data)
    parts = header["pickle_section"]["parts"]
    for entry in parts:
        if not isinstance(entry, dict):
            raise ValueError(f"{path!r} is damaged: bad pickle section entry.")
    if parts and not trusted:
        names = "; ".join(
            f"`{p.get('path') or '(the model)'}` ({p.get('what')})" for p in parts[:5]
        )
        raise ValueError(
            f"{path!r}: {len(parts)} part(s) of this model cannot be rebuilt safely, because the "
            f"file holds them only as pickled code: {names}. Either build the model with your "
            "own code and read the arrays into it: nde.load(path, like=model); or, only if you "
            "trust whoever wrote the file, nde.load(path, trusted=True) (unpickling runs code "
            "from the file)."
        )
    for entry in parts:
        if "error" in entry:
            entry["data"] = None
        else:
            off, n = entry.get("offset"), entry.get("nbytes")
            if type(off) is not int or type(n) is not int or off < 0 or off + n > len(pickles):
                raise ValueError(f"{path!r} is damaged: bad pickle section entry.")
            entry["data"] = bytes(pickles[off : off + n])
    values = [_array_value(a, data) for a in arrays]
    try:
        return _Reader(values, parts, trusted).build(header["model"])
    except _Refused as e:
        raise ValueError(
            f"{path!r} cannot be loaded safely: {e}. nde.load(path, like=model) reads its "
            "arrays into a model you build with your own code."
        ) from None
    except (_Damaged, RecursionError, KeyError, TypeError, AttributeError, ValueError) as e:
        raise ValueError(
            f"{path!r} is damaged or written by an incompatible version: {e}"
        ) from None


def _read_format2(path: str, blob: bytes, start: int) -> tuple[dict, memoryview, memoryview]:
    def damaged(why: str) -> ValueError:
        return ValueError(f"{path!r} is damaged or truncated: {why}.")

    if len(blob) < start + 8:
        raise damaged("no description")
    size = int.from_bytes(blob[start : start + 8], "little")
    if size > min(_MAX_HEADER, len(blob) - start - 8):
        raise damaged(f"the description should be {size} bytes, the file is {len(blob)}")
    try:
        header = json.loads(blob[start + 8 : start + 8 + size].decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise damaged(f"unreadable description ({e})") from None
    ok = (
        isinstance(header, dict)
        and header.get("format") == FORMAT
        and isinstance(header.get("arrays"), list)
        and type(header.get("arrays_bytes")) is int
        and isinstance(header.get("pickle_section"), dict)
        and type(header["pickle_section"].get("nbytes")) is int
        and isinstance(header["pickle_section"].get("parts"), list)
        and isinstance(header.get("sha256"), str)
        and "model" in header
    )
    if not ok:
        raise damaged("incomplete description")
    body = memoryview(blob)[start + 8 + size :]  # views, not copies, of a large file
    n_arrays, n_pickles = header["arrays_bytes"], header["pickle_section"]["nbytes"]
    if len(body) != n_arrays + n_pickles:
        raise damaged(f"{n_arrays + n_pickles} bytes of arrays expected, {len(body)} found")
    if _sha256(body) != header["sha256"]:
        raise damaged("the arrays do not match their checksum")
    for i, a in enumerate(header["arrays"]):
        _check_array_entry(a, i, n_arrays, damaged)
    return header, body[:n_arrays], body[n_arrays:]


def _check_array_entry(a: Any, i: int, n_bytes: int, damaged) -> None:
    if not isinstance(a, dict) or not isinstance(a.get("name"), str):
        raise damaged(f"array {i} has no name")
    name = a["name"]
    dtype, shape = a.get("dtype"), a.get("shape")
    if dtype not in _DTYPES:
        raise damaged(f"array {name!r} has dtype {dtype!r}")
    if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
        raise damaged(f"array {name!r} has shape {shape!r}")
    off, n = a.get("offset"), a.get("nbytes")
    if type(off) is not int or type(n) is not int or off < 0 or off + n > n_bytes:
        raise damaged(f"array {name!r} lies outside the file")
    if n != math.prod(shape) * _DTYPES[dtype].itemsize:
        raise damaged(f"array {name!r}: {n} bytes for shape {tuple(shape)} of {dtype}")
    if a.get("kind") not in ("jax", "numpy", "numpy_scalar", "key"):
        raise damaged(f"array {name!r} has kind {a.get('kind')!r}")
    if a["kind"] == "key" and (a.get("impl") not in _KEY_IMPLS or dtype != "uint32"):
        raise damaged(f"key array {name!r} has implementation {a.get('impl')!r}")
    if a["kind"] == "numpy_scalar" and shape:
        raise damaged(f"scalar {name!r} has shape {tuple(shape)}")


def _array_value(a: dict, data: memoryview) -> Any:
    dtype = _DTYPES[a["dtype"]]
    count = math.prod(a["shape"])
    value = np.frombuffer(data, dtype.newbyteorder("<"), count, a["offset"]).astype(dtype)
    value = value.reshape(a["shape"])
    if a["kind"] == "numpy":
        return value
    if a["kind"] == "numpy_scalar":
        return value[()]
    if a["kind"] == "key":
        return jax.random.wrap_key_data(jnp.asarray(value), impl=a["impl"])
    if jax.dtypes.canonicalize_dtype(dtype) != dtype:
        # jnp.asarray would silently halve the precision of the saved model
        raise ValueError(
            f"array {a['name']!r} is {dtype.name}, saved with 64-bit JAX; enable it before "
            'loading: jax.config.update("jax_enable_x64", True).'
        )
    return jax.device_put(value)  # (jnp.asarray would compile a conversion per shape)


def _into_like(path: str, like: Any, arrays: list, data: memoryview) -> Any:
    by_name = {a["name"]: a for a in arrays if a.get("visible", True)}
    used = set()

    def fill(key_path, leaf):
        if not isinstance(leaf, _ARRAY_TYPES):
            return leaf
        name = jax.tree_util.keystr(key_path)
        a = by_name.get(name)
        if a is None:
            raise ValueError(
                f"{path!r} has no array {name!r} that `like` has: the file holds a model of "
                "another structure."
            )
        value = _array_value(a, data)
        if a["kind"] == "key":
            value = jax.random.key_data(value)
            leaf_shape, leaf_dtype = jnp.shape(jax.random.key_data(leaf)), np.dtype("uint32")
        else:
            leaf_shape, leaf_dtype = np.shape(leaf), np.dtype(leaf.dtype)
        if tuple(value.shape) != tuple(leaf_shape) or value.dtype != leaf_dtype:
            raise ValueError(
                f"{path!r}: array {name!r} is {value.dtype}{list(value.shape)} in the file but "
                f"{leaf_dtype}{list(leaf_shape)} in `like`."
            )
        used.add(name)
        if a["kind"] == "key":
            return jax.random.wrap_key_data(value, impl=a["impl"])
        if isinstance(leaf, np.generic):
            return np.asarray(value)[()]
        return np.asarray(value) if isinstance(leaf, np.ndarray) else jax.device_put(value)

    out = jax.tree_util.tree_map_with_path(fill, like)
    extra = sorted(set(by_name) - used)
    if extra:
        raise ValueError(
            f"{path!r} holds arrays that `like` lacks ({', '.join(extra[:5])}): the file holds "
            "a model of another structure."
        )
    return out


def _load_format1(path: str, blob: bytes, like: Any, trusted: bool) -> Any:
    """Format 1 (before 0.2): a cloudpickled skeleton, then `eqx.tree_serialise_leaves`."""
    offset = len(_LEGACY_MAGIC)
    size = int.from_bytes(blob[offset : offset + 8], "little")
    if offset + 8 + size > len(blob):
        raise ValueError(f"{path!r} is damaged or truncated.")
    leaves = blob[offset + 8 + size :]
    if like is None:
        if not trusted:
            raise ValueError(
                f"{path!r} is in the previous model file format (1), whose structure is a "
                "pickle: reading it runs code stored in the file. Either read its arrays into a "
                "model you build: nde.load(path, like=model); or, only if you trust the file, "
                "nde.load(path, trusted=True); then nde.save(path, model) writes the safe format."
            )
        try:
            skeleton = _unpickle(blob[offset + 8 : offset + 8 + size])
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path!r} is damaged or from an incompatible version: {e}") from None
        like = jax.tree_util.tree_map(
            lambda x: jnp.zeros(x.shape, x.dtype) if isinstance(x, _ArraySpec) else x,
            skeleton,
            is_leaf=lambda x: isinstance(x, _ArraySpec),
        )
    try:  # leaves are np.save records; np.load refuses pickled objects: no code runs
        return eqx.tree_deserialise_leaves(io.BytesIO(leaves), like)
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"{path!r} does not match the model structure (or is truncated): {e}"
        ) from None
