"""A disk cache of `fit`'s traced training steps (jax.export), next to JAX's compilation cache.

Why: with JAX's persistent compilation cache on, a second process still spends most of its first
`fit` call in Python, tracing the step (the diffrax solve, its gradient, the optimizer) and
lowering it, before the compilation cache is even asked: ~1.8 s of the spiral's 2.3 s. Here the
lowered, callback-free program (`compilation.cacheable`) is exported with `jax.export` and kept
on disk; the next process with the same step reads it back, skips the tracing, and compiles the
exported module, which the compilation cache then serves.

The key. A cached program may only be used for the very function it was traced from. The
function `fit` compiles, `_make_steps(static, strategy, optimizer, n)`, is fixed by

1. the code: `fit.py` and the rest of neuraldiffeq (a hash of every source file of the installed
   package, so an edited checkout never reuses a stale program), the versions of jax, jaxlib,
   equinox, diffrax, lineax, optimistix, optax and numpy, and Python's;
2. the objects it closes over: the model's static part (everything but its float arrays), the
   strategy and the optimizer; and the compiler options;
3. its arguments' structure, shapes, dtypes, weak types and placements (the values are inputs of
   the program, not part of it);
4. process-wide settings read while tracing: every `jax.config` option (x64, default precision,
   PRNG implementation, ...), the `EQX_*` environment variables, the backend and device kind.

Part 2 is the hard one: it holds Python objects, including user code. `fingerprint` hashes an
object by what it is made of, never by its address or `repr`:

- numbers, strings, None, tuples, lists, dicts: by value; NumPy and JAX arrays by dtype, shape and
  bytes (part 3 hashes only the shape and dtype); dataclasses (equinox modules, diffrax solvers,
  optax states) and named tuples (optax transformations) by class and fields, recursively;
- functions: by module, qualified name, defaults and the contents of their closures (optax's
  `adam(0.05)` is a closure holding 0.05; a lambda capturing an array holds that array). The
  code of a function from one of the libraries of part 1 is fixed by the library's version; any
  other function (a user's, `__main__`'s) is also hashed by its bytecode, constants, names and
  the values of the module globals it reads, recursively, so an edited function or a changed
  global misses. Classes likewise: a library class by name, a user's class by its methods;
- anything else (an object of an unknown type, a tracer, an array of Python objects) cannot be
  keyed: `fingerprint` raises `Unkeyable`, and that fit traces as usual and caches nothing.

What this cannot see is state that code reads while tracing without holding it: a user function
that calls `np.random.rand()` or reads a file to build a constant at trace time, or an attribute
of a library module that a user mutates. Those are outside the contract of a traced program
anyway (JAX's own caches assume that a function's trace is fixed by its identity and inputs).

The forward loss's jaxpr (`jax.make_jaxpr`) was measured as the alternative key: tracing it is
cheap after `prepare` (~0.01 s on the spiral), but printing it costs 0.06-0.2 s, and it does not
fix the gradient: custom_vjp/custom_jvp rules (diffrax's adjoints, neuraldiffeq's continuous
adjoint with its own backward tolerances) are Python callables outside the forward jaxpr, which
need the same structural hashing anyway.

The same key serves two smaller caches in the same folder, for work every process repeats
before and after training: `eval_shape` (the strategies' model checks in `prepare` trace the
whole solve abstractly; only the resulting shape is kept, so a failing check still runs and
raises its message) and `cached_array` (deterministic results such as the datasets' reference
solves; kept by value with a hash, recomputed if damaged).

What it saves is measured by `benchmarks/startup.py` (results in `benchmarks/RESULTS.md`).

A cache entry is one file: a header (format, the key, the flat input and output avals, the
output structure, and a hash of the module) followed by the serialised StableHLO module. Any
entry that cannot be read back exactly (truncated, edited, another format) is ignored and
replaced. Files are written to a temporary name and renamed, so concurrent processes never see
half an entry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import hashlib
import inspect
import io
import json
import logging
import os
import struct
import sys
import types
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ..io.files import write_bytes_atomically

logger = logging.getLogger(__name__)

#: bumped whenever the entry layout or the key's recipe changes
FORMAT = 1
_MAGIC = b"NDEXPORT"
#: the libraries whose functions and classes are keyed by version rather than by their code
_LIBRARIES = (
    "jax",
    "jaxlib",
    "equinox",
    "diffrax",
    "lineax",
    "optimistix",
    "optax",
    "numpy",
    "neuraldiffeq",
)
#: standard-library modules, fixed by Python's version
_STDLIB = ("builtins", "math", "operator", "functools", "typing", "abc", "enum", "dataclasses")
_TRUSTED = _LIBRARIES + _STDLIB + ("jaxtyping", "ml_dtypes", "_operator", "_functools")
#: attributes of a user's class that do not run while a step is traced (or are keyed otherwise)
_CLASS_SKIP = frozenset(
    {
        "__module__",
        "__qualname__",
        "__doc__",
        "__dict__",
        "__weakref__",
        "__annotations__",
        "__abstractmethods__",
        "_abc_impl",
        "__abstractvars__",
        "__abstractclassvars__",
        "__dataclass_params__",
        "__dataclass_fields__",  # keyed on its own, see _Hasher._class
        "__match_args__",
        "__parameters__",
        "__orig_bases__",
        "__firstlineno__",
        "__static_attributes__",
        "__slots__",
        "__repr__",
        "__hash__",
        "__eq__",
    }
)


class Unkeyable(Exception):
    """An object `fingerprint` cannot hash by content: the step is not cached."""


def _trusted(module: str | None) -> bool:
    root = (module or "").partition(".")[0]
    return root in _TRUSTED


class _Hasher:
    def __init__(self, abstract_arrays: bool = False):
        self.h = hashlib.sha256()
        self.abstract = abstract_arrays
        self.seen: dict[int, int] = {}
        self.alive: list[Any] = []  # keeps ids unique while hashing

    def put(self, *parts: Any) -> None:
        for part in parts:
            data = part if isinstance(part, bytes) else str(part).encode()
            self.h.update(struct.pack("<Q", len(data)))
            self.h.update(data)

    def add(self, obj: Any) -> None:  # noqa: C901 — one dispatch on the object's kind
        if obj is None or type(obj) in (bool, int, float, complex, str, bytes):
            self.put(type(obj).__name__, repr(obj))
            return
        if id(obj) in self.seen:  # a cycle or a shared object: a back reference
            self.put("ref", self.seen[id(obj)])
            return
        self.seen[id(obj)] = len(self.seen)
        self.alive.append(obj)
        if isinstance(obj, jax.core.Tracer):
            raise Unkeyable("a tracer")
        if isinstance(obj, np.ndarray | np.generic | jax.Array):
            self._array(obj)
        elif isinstance(obj, jax.ShapeDtypeStruct):
            self.put("struct", str(obj.dtype), obj.shape, obj.weak_type, str(obj.sharding))
        elif isinstance(obj, np.dtype):
            self.put("dtype", str(obj))
        elif isinstance(obj, types.ModuleType):
            self.put("module", obj.__name__)
        elif isinstance(obj, type):
            self._class(obj)
        elif isinstance(obj, enum.Enum):
            self.put("enum")
            self._class(type(obj))
            self.put(obj.name)
        elif type(obj) in (tuple, list):
            self.put(type(obj).__name__, len(obj))
            for item in obj:
                self.add(item)
        elif type(obj) is dict:
            self.put("dict", len(obj))
            for k, v in obj.items():
                self.add(k)
                self.add(v)
        elif type(obj) in (set, frozenset):
            self.put(type(obj).__name__, len(obj))
            for digest in sorted(fingerprint(item, self.abstract) for item in obj):
                self.put(digest)
        elif isinstance(obj, types.FunctionType):
            self._function(obj)
        elif isinstance(obj, types.MethodType):
            self.put("method")
            self.add(obj.__func__)
            self.add(obj.__self__)
        elif isinstance(obj, types.BuiltinFunctionType | np.ufunc):
            module = (
                getattr(obj, "__module__", None) or type(getattr(obj, "__self__", None)).__module__
            )
            if not _trusted(module):
                raise Unkeyable(f"the built-in {obj!r}")
            self.put("builtin", module, getattr(obj, "__qualname__", obj.__name__))
            self.add(getattr(obj, "__self__", None))  # a bound method's object (`d.get`)
        elif isinstance(obj, functools.partial):
            self.put("partial")
            self.add(obj.func)
            self.add(obj.args)
            self.add(obj.keywords)
        elif isinstance(obj, jax.tree_util.PyTreeDef):
            self._treedef(obj)
        elif dataclasses.is_dataclass(obj):  # equinox modules, diffrax's solvers, ...
            self.put("dataclass")
            self._class(type(obj))
            names = [field.name for field in dataclasses.fields(obj)]
            for name in names:
                self.put(name)
                self.add(getattr(obj, name, _MISSING))
            extra = {k: v for k, v in getattr(obj, "__dict__", {}).items() if k not in names}
            self.add(extra)  # attributes set outside the fields, if any
        elif isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a NamedTuple (optax)
            self.put("namedtuple")
            self._class(type(obj))
            for item in obj:
                self.add(item)
        elif type(obj).__name__ in ("PjitFunction", "custom_jvp", "custom_vjp"):
            self._wrapped(obj)
        elif obj is _MISSING or obj is dataclasses.MISSING:
            self.put("missing")
        elif _trusted(type(obj).__module__) and _plain_state(obj) is not None:
            # a library's own object (a sentinel, a small helper): its class and its attributes
            self.put("object")
            self._class(type(obj))
            self.add(_plain_state(obj))
        else:
            raise Unkeyable(f"an object of type {type(obj).__module__}.{type(obj).__qualname__}")

    def _array(self, x) -> None:
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            self.put("key", str(x.dtype), x.shape)
            if not self.abstract:
                self._array(jax.random.key_data(x))
            return
        dtype = np.dtype(x.dtype)
        if dtype.hasobject:
            raise Unkeyable("an array of Python objects")
        self.put("array", str(dtype), np.shape(x), getattr(x, "weak_type", False))
        if isinstance(x, jax.Array):
            self.put(str(getattr(x, "sharding", "")))
        if not self.abstract:
            self.put(np.ascontiguousarray(np.asarray(x)).tobytes())

    def _wrapped(self, obj) -> None:
        """`jax.jit`-wrapped functions and `jax.custom_jvp`/`custom_vjp` objects."""
        self.put(type(obj).__name__)
        if type(obj).__name__ == "PjitFunction":
            self.add(obj.__wrapped__)
            return
        for name in ("fun", "jvp", "fwd", "bwd", "nondiff_argnums", "symbolic_zeros"):
            self.add(getattr(obj, name, None))

    def _function(self, fn: types.FunctionType) -> None:
        self.put("function", fn.__module__, fn.__qualname__)
        self.add(fn.__defaults__)
        self.add(fn.__kwdefaults__)
        self.put("closure")
        for cell in fn.__closure__ or ():
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell (a name assigned later)
                contents = _MISSING
            self.add(contents)
        if _trusted(fn.__module__) and not fn.__code__.co_filename.startswith("<"):
            return  # library code: fixed by the library's version
        code = fn.__code__
        self._code(code)
        self.put("globals")
        for name in sorted(_global_names(code)):
            if name in fn.__globals__:
                self.put(name)
                self.add(fn.__globals__[name])

    def _code(self, code: types.CodeType) -> None:
        self.put("code", code.co_code, code.co_names, code.co_varnames, code.co_freevars)
        self.put(code.co_cellvars, code.co_argcount, code.co_kwonlyargcount, code.co_flags)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                self._code(const)
            else:
                self.add(const)

    def _class(self, cls: type) -> None:
        self.put("class", cls.__module__, cls.__qualname__)
        if _trusted(cls.__module__):
            return
        for base in cls.__mro__:
            if base is object or _trusted(base.__module__):
                self.put("base", base.__module__, base.__qualname__)
                continue
            self.put("own", base.__module__, base.__qualname__)
            fields = base.__dict__.get("__dataclass_fields__")
            for name, value in base.__dict__.items():
                if name in _CLASS_SKIP:
                    continue
                if fields is not None and name == "__init__" and _generated(value):
                    # a dataclass's own __init__ (generated from its fields' declarations)
                    self.put("fields")
                    for field in fields.values():
                        self.put(field.name, field.init, field.kw_only)
                        self.add(field.default)
                        self.add(field.default_factory)
                        self.add(dict(field.metadata))
                    continue
                self.put(name)
                if isinstance(value, staticmethod | classmethod):
                    value = value.__func__
                elif isinstance(value, property):
                    value = (value.fget, value.fset, value.fdel)
                self.add(value)

    def _treedef(self, treedef) -> None:
        node = treedef.node_data()
        self.put("treedef", treedef.num_leaves, treedef.num_nodes)
        if node is not None:
            self._class(node[0])
            self.add(node[1])
        for child in treedef.children():
            self.add(child)


class _Missing:
    pass


_MISSING = _Missing()


def _plain_state(obj) -> dict | None:
    """`vars(obj)` of an object whose whole state is in its `__dict__` (a Python class without
    slots or a C-level layout); None for any other object."""
    cls = type(obj)
    if any("__slots__" in vars(base) for base in cls.__mro__[:-1]):
        return None
    layout = ("__basicsize__", "__dictoffset__", "__weakrefoffset__")
    if any(getattr(cls, name) != getattr(_Missing, name) for name in layout):
        return None
    return dict(vars(obj)) if hasattr(obj, "__dict__") else {}


def _generated(fn) -> bool:
    code = getattr(fn, "__code__", None)
    return code is not None and code.co_filename.startswith("<")


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def fingerprint(obj: Any, abstract_arrays: bool = False) -> str:
    """A hash of what `obj` is made of (see the module docstring); `Unkeyable` if it cannot be.

    With `abstract_arrays`, arrays count by dtype, shape, weak type and placement only.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from neuraldiffeq.compilation.exported import fingerprint
        >>> fingerprint(optax.adam(0.05)) == fingerprint(optax.adam(0.05))
        True
        >>> fingerprint(optax.adam(0.05)) == fingerprint(optax.adam(0.01))
        False
        >>> fingerprint(jnp.ones(2), True) == fingerprint(jnp.zeros(2), True)
        True
    """
    hasher = _Hasher(abstract_arrays)
    try:
        hasher.add(obj)
    except RecursionError:
        raise Unkeyable("a structure too deep to walk") from None
    return hasher.h.hexdigest()


@functools.cache
def _source_hash() -> str:
    """A hash of every source file of the installed neuraldiffeq package."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _environment() -> list:
    versions = []
    for name in _LIBRARIES:
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except ImportError:
                versions.append((name, None))
                continue
        versions.append((name, getattr(module, "__version__", None)))
    device = jax.local_devices()[0]
    # read through the attributes: they see thread-local overrides (`with jax.enable_x64():`)
    config = sorted((k, repr(getattr(jax.config, k, v))) for k, v in jax.config.values.items())
    eqx_env = sorted((k, v) for k, v in os.environ.items() if k.startswith("EQX_"))
    return [
        FORMAT,
        sys.version,
        versions,
        _source_hash(),
        jax.default_backend(),
        device.platform,
        device.device_kind,
        getattr(device.client, "platform_version", ""),
        config,
        eqx_env,
    ]


def key_of(f: Any, treedef: Any, leaves: list, jit_kwargs: dict) -> str:
    """The cache key of `jax.jit(f, **jit_kwargs)` called on `leaves` arranged as `treedef`:
    `f` with everything it closes over, the argument structure (its static parts by value),
    the leaves' avals and the environment. Raises `Unkeyable`."""
    return fingerprint(
        [
            fingerprint(f),
            fingerprint(treedef),
            fingerprint(leaves, abstract_arrays=True),
            jit_kwargs,
            _environment(),
        ]
    )


def directory() -> Path | None:
    """Where exported steps are kept: inside JAX's compilation cache directory, or None when
    that cache is off (then nothing is exported)."""
    folder = jax.config.jax_compilation_cache_dir
    if not folder or not jax.config.jax_enable_compilation_cache:
        return None
    return Path(folder) / "neuraldiffeq-exported"


def _unplaced(sharding) -> bool:
    """No sharding, or one over no mesh axes (what a single device's arrays may carry)."""
    if sharding is None:
        return True
    mesh, spec = getattr(sharding, "mesh", None), getattr(sharding, "spec", None)
    return bool(getattr(mesh, "empty", False)) and spec is not None and all(p is None for p in spec)


def _aval_record(aval) -> list:
    return [list(aval.shape), str(aval.dtype), bool(getattr(aval, "weak_type", False))]


def save(path: Path, key: str, exported: jax.export.Exported, extra: dict) -> bool:
    """Write an entry; False (and nothing written) for a program this format cannot hold."""
    if (
        exported.ordered_effects
        or exported.unordered_effects
        or exported.nr_devices != 1
        or exported.uses_global_constants
        or any(s is not None for s in exported.in_shardings_hlo + exported.out_shardings_hlo)
        or not all(map(_unplaced, exported._in_named_shardings))
        or not all(map(_unplaced, exported._out_named_shardings))
        or exported.disabled_safety_checks
    ):  # (its `_get_vjp`, for differentiating the program, is never used: not kept)
        logger.info("not exporting %s: effects or shardings", exported.fun_name)
        return False
    module = exported.mlir_module_serialized
    header = {
        "format": FORMAT,
        "key": key,
        "fun_name": exported.fun_name,
        "in_avals": [_aval_record(a) for a in exported.in_avals],
        "out_avals": [_aval_record(a) for a in exported.out_avals],
        "platforms": list(exported.platforms),
        "calling_convention_version": exported.calling_convention_version,
        "module_kept_var_idx": list(exported.module_kept_var_idx),
        "module_sha256": hashlib.sha256(module).hexdigest(),
        **extra,
    }
    blob = json.dumps(header).encode()
    _write(path, _MAGIC + struct.pack("<Q", len(blob)) + blob + module)
    return True


def load(path: Path, key: str, in_avals: list) -> tuple[jax.export.Exported, dict] | None:
    """The entry at `path` if it is intact and holds `key` for inputs `in_avals`; else None."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    try:
        if raw[: len(_MAGIC)] != _MAGIC:
            raise ValueError("not an exported step")
        (size,) = struct.unpack("<Q", raw[len(_MAGIC) : len(_MAGIC) + 8])
        start = len(_MAGIC) + 8
        header = json.loads(raw[start : start + size])
        module = raw[start + size :]
        if header["format"] != FORMAT or header["key"] != key:
            raise ValueError("another key or format")
        if hashlib.sha256(module).hexdigest() != header["module_sha256"]:
            raise ValueError("the module does not match its hash")
        if header["in_avals"] != [_aval_record(a) for a in in_avals]:
            raise ValueError("other inputs")

        dtypes = {str(a.dtype): a.dtype for a in in_avals}  # PRNG key types have no np.dtype

        def aval(record):
            shape, dtype, weak = record
            dtype = dtypes[dtype] if dtype in dtypes else np.dtype(dtype)
            return jax.core.ShapedArray(tuple(shape), dtype, weak_type=weak)

        n_in, n_out = len(header["in_avals"]), len(header["out_avals"])
        fields = dict(
            fun_name=header["fun_name"],
            in_tree=jax.tree_util.tree_structure(((0,) * n_in, {})),
            in_avals=tuple(in_avals),
            out_tree=jax.tree_util.tree_structure([0] * n_out),
            out_avals=tuple(aval(r) for r in header["out_avals"]),
            _has_named_shardings=False,
            _in_named_shardings=(None,) * n_in,
            _out_named_shardings=(None,) * n_out,
            in_shardings_hlo=(None,) * n_in,
            out_shardings_hlo=(None,) * n_out,
            nr_devices=1,
            platforms=tuple(header["platforms"]),
            ordered_effects=(),
            unordered_effects=(),
            disabled_safety_checks=(),
            mlir_module_serialized=bytes(module),
            calling_convention_version=header["calling_convention_version"],
            module_kept_var_idx=tuple(header["module_kept_var_idx"]),
            uses_global_constants=False,
            _get_vjp=None,
        )
        # `Exported`'s private fields differ between jax versions (0.11 has no
        # `_has_named_shardings`): pass those this version takes; one it needs and we lack
        # raises here, and the entry is ignored (the step is traced)
        accepted = inspect.signature(jax.export.Exported).parameters
        exported = jax.export.Exported(**{k: v for k, v in fields.items() if k in accepted})
    except Exception as error:  # noqa: BLE001 — a damaged entry is ignored and rewritten
        logger.info("ignoring the exported step %s: %s", path, error)
        return None
    return exported, header


def eval_shape(fn, *inputs):
    """`jax.eval_shape(fn, *inputs)`, read from disk when the same check passed before.

    The model checks of the strategies' `prepare` trace the whole solve abstractly, every time,
    in every process. With JAX's compilation cache on, the result of a
    check whose output is one array is kept next to the exported steps, under the key of
    `fn` (arrays it captures by value: Python code may branch on them) and the inputs' avals.
    Only results are kept: a check that fails runs again, and raises its own error.
    """
    folder = directory()
    path = digest = None
    if folder is not None:
        try:
            digest = fingerprint(
                ["eval_shape", fingerprint(fn), fingerprint(inputs, True), _environment()]
            )
            path = folder / "shapes" / f"{digest}.json"
        except Exception:  # noqa: BLE001 — unkeyable (or a surprise): just trace
            path = None
    if path is not None:
        try:
            record = json.loads(path.read_text())
            if record["key"] == digest:
                dtype, weak = np.dtype(record["dtype"]), record["weak_type"]
                return jax.ShapeDtypeStruct(tuple(record["shape"]), dtype, weak_type=weak)
        except (OSError, ValueError, KeyError, TypeError):  # none yet, or damaged: recompute
            pass
    out = jax.eval_shape(fn, *inputs)
    if path is not None and isinstance(out, jax.ShapeDtypeStruct) and out.sharding is None:
        try:
            np.dtype(out.dtype)  # an ordinary dtype (not a PRNG key)
            record = {"key": digest, "shape": list(out.shape), "dtype": str(out.dtype)}
            record["weak_type"] = bool(out.weak_type)
            _write(path, json.dumps(record).encode())
        except (OSError, TypeError):
            pass
    return out


def lower_ahead(flat, exported: jax.export.Exported, leaves: list) -> None:
    """Lower `flat` (a `jax.jit` of `exported.call`) now, so that its first call reuses it.

    Why: lowering a call of an exported module first initialises the CPU's LAPACK handlers,
    which imports SciPy, in case the module calls LAPACK. A module without
    any custom call (an explicit solver's step) needs none of it, so then it is skipped.
    JAX's lowering cache keeps the result for the call that follows.
    """
    if b"custom_call" in exported.mlir_module_serialized:
        return  # lowered by the first call, with the usual initialisation
    from jax._src.export import _export as export_impl  # a private hook: guarded

    original = getattr(export_impl, "_ensure_backends_initialized", None)
    if original is None:
        return
    with contextlib.suppress(Exception):  # any trouble: the first call lowers as usual
        export_impl._ensure_backends_initialized = lambda platforms: None
        try:
            flat.trace(*leaves).lower()
        finally:
            export_impl._ensure_backends_initialized = original


def cached_array(fn, *args, **kwargs) -> np.ndarray:
    """`np.asarray(fn(*args, **kwargs))`, read from disk when it was computed before.

    For deterministic reference computations run in every process (a dataset's tight-tolerance
    solve): with JAX's compilation cache on, the result is kept next to the exported steps
    under the key of `fn` and its arguments (by value) and the environment, as the steps are.
    A failing computation raises as always and keeps nothing; a damaged entry is recomputed.
    """
    folder = directory()
    path = None
    if folder is not None:
        try:
            digest = fingerprint(["array", fingerprint(fn), fingerprint([args, kwargs])])
            digest = fingerprint([digest, _environment()])
            path = folder / "arrays" / f"{digest}.npy"
        except Exception:  # noqa: BLE001 — unkeyable (or a surprise): just compute
            path = None
    if path is not None:
        try:
            raw = path.read_bytes()
            payload = raw[32:]
            if hashlib.sha256(payload).digest() == raw[:32]:
                return np.load(io.BytesIO(payload), allow_pickle=False)
        except (OSError, ValueError):  # none yet, or damaged: recompute
            pass
    out = np.asarray(fn(*args, **kwargs))
    if path is not None and not out.dtype.hasobject:
        buffer = io.BytesIO()
        np.save(buffer, out, allow_pickle=False)
        payload = buffer.getvalue()
        with contextlib.suppress(OSError):
            _write(path, hashlib.sha256(payload).digest() + payload)
    return out


def _write(path: Path, data: bytes) -> None:
    """Write a cache entry atomically: a reader sees no entry or the whole one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(os.fspath(path), data)
