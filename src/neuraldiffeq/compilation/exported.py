"""A disk cache of traced programs (`jax.export`), for steps made only of trusted code.

What: with JAX's persistent compilation cache on, a later process still traces and lowers a
training step before that cache is even asked; most of a small fit's start-up is spent there.
Here the lowered, callback-free program (`compilation.cacheable`) is exported with
`jax.export.serialize` and kept on disk, and a later process with the same step reads it back
(`jax.export.deserialize`) instead of tracing it. JAX's compilation cache then serves the compile.

Why only trusted code. Reusing a program without tracing is sound only when the key fixes
everything tracing would read. A key made from Python objects (bytecode, closures, the globals a
function reads) is a guess as soon as user code is involved: a function reaches other functions
through modules, attributes, class hierarchies and mutable state that no walk of objects can
follow completely, and a wrong guess silently trains the wrong equation. So the rule is:

- a step is *keyable* only when every function, class and module it is made of belongs to
  neuraldiffeq or to a pinned dependency (jax, jaxlib, equinox, diffrax, lineax, optimistix,
  optax, numpy, jaxtyping, ml_dtypes), or is one of the standard library's pure functions
  (`functools`, `operator`, `math`, ...). A function belongs there when its code object comes from
  a file inside that installed package; a class when it is the object its module defines under
  its name (or all its own methods come from such files); a module when it is the installed one;
- any user function, lambda, class, method, closure cell holding one, or module (whatever name it
  was imported under) makes the step unkeyable: it is traced as usual, in every process, and
  only JAX's compilation cache (keyed on the lowered program itself) serves the compile.

The key of a keyable step is made of (see `key_of`):

1. the code: a hash of every source file of the installed neuraldiffeq package (so an edited
   checkout never reuses a program traced from the old code), the versions of the dependencies
   above, and Python's;
2. what the step closes over: the model's static part, the strategy, the optimizer and their
   numbers, by value; functions by their code object and closure contents, classes by name;
3. the arguments' structure, shapes, dtypes, weak types and placements;
4. process-wide settings read while tracing: every `jax.config` option, the `EQX_*` environment
   variables, the backend and device kind.

What it assumes: neuraldiffeq's and the dependencies' code does what its installed source says
(nobody assigns to a library's attributes at run time, and an edited dependency changes its
version); and trusted code reads no state besides its arguments, its closures and the settings
of part 4 while it is traced.

The same rule serves two smaller caches in the same folder: `eval_shape` (an abstract
evaluation's result shape) and `cached_array` (deterministic results such as the datasets'
reference solves, kept by value with a hash).

An entry is one file: a header (format, key, input and output avals, a hash of the payload) and
the serialised `Exported`. An entry that cannot be read back exactly (truncated, edited, another
format or JAX version) is ignored and rewritten. Files are written under a temporary name and
renamed, so concurrent processes never see half an entry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import hashlib
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
FORMAT = 2
_MAGIC = b"NDEXPORT"
#: the installed packages whose code is trusted; their versions are part of every key
_LIBRARIES = (
    "jax",
    "jaxlib",
    "equinox",
    "diffrax",
    "lineax",
    "optimistix",
    "optax",
    "numpy",
    "jaxtyping",
    "ml_dtypes",
)
#: standard-library modules whose functions and classes are pure (no state read at trace time
#: besides their arguments); fixed by Python's version
_STDLIB = (
    "builtins",
    "math",
    "cmath",
    "operator",
    "_operator",
    "functools",
    "_functools",
    "typing",
    "abc",
    "_abc",
    "enum",
    "dataclasses",
    "collections",
    "collections.abc",
    "_collections",
    "_collections_abc",
    "itertools",
    "types",
    "numbers",
    "contextlib",
)


class Unkeyable(Exception):
    """A step that cannot be keyed (it holds user code, or an object of an unknown kind): it is
    traced as usual and nothing is kept."""


# -- what is trusted ---------------------------------------------------------------------------


@functools.cache
def _package_root() -> Path:
    return Path(__file__).resolve().parents[1]


@functools.cache
def _trusted_roots() -> tuple[Path, ...]:
    roots = [_package_root()]
    for name in _LIBRARIES:
        try:
            module = sys.modules.get(name) or __import__(name)
        except ImportError:
            continue
        for location in getattr(module, "__path__", None) or ():
            roots.append(Path(location).resolve())
    return tuple(roots)


@functools.cache
def _stdlib_files() -> frozenset[Path]:
    files = set()
    for name in _STDLIB:
        module = sys.modules.get(name)
        if module is None:
            with contextlib.suppress(ImportError):
                module = __import__(name)
        path = getattr(module, "__file__", None)
        if path:
            files.add(Path(path).resolve())
    return frozenset(files)


@functools.lru_cache(maxsize=4096)
def _trusted_file(filename: str) -> bool:
    """Whether code compiled from `filename` belongs to neuraldiffeq, a pinned dependency or a
    pure standard-library module."""
    if not filename or filename.startswith("<"):
        return False  # exec'd or generated code: nothing to tie it to an installed file
    path = Path(filename).resolve()
    if path in _stdlib_files():
        return True
    return any(path.is_relative_to(root) for root in _trusted_roots())


def _trusted_module(name: str | None) -> bool:
    """Whether the module called `name` is the installed one of a trusted package."""
    if not name:
        return False
    module = sys.modules.get(name)
    if module is None:
        return False
    path = getattr(module, "__file__", None)
    if path is None:  # built into the interpreter (builtins, _operator, ...)
        return name in _STDLIB
    return _trusted_file(path)


def _resolve(module: str, qualname: str) -> Any:
    obj = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _describe(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or type(obj).__module__
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}.{name}"


def _user_code(obj: Any, where: str = "") -> Unkeyable:
    return Unkeyable(f"user code ({_describe(obj)}{where})")


# -- the walk ----------------------------------------------------------------------------------


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
            if not (_trusted_module(obj.__name__) and sys.modules.get(obj.__name__) is obj):
                raise Unkeyable(f"user code (the module {obj.__name__!r})")
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
        elif isinstance(obj, staticmethod | classmethod):
            self.put(type(obj).__name__)
            self.add(obj.__func__)
        elif isinstance(obj, types.BuiltinFunctionType | np.ufunc):
            owner = getattr(obj, "__self__", None)
            module = getattr(obj, "__module__", None) or type(owner).__module__
            if not _trusted_module(module):
                raise _user_code(obj, " a compiled function")
            self.put("builtin", module, getattr(obj, "__qualname__", obj.__name__))
            if not isinstance(owner, types.ModuleType):
                self.add(owner)  # a bound method's object (`d.get`)
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
        elif type(obj).__name__ == "PjitFunction":
            self._jitted(obj)
        elif type(obj).__name__ in ("custom_jvp", "custom_vjp"):
            self.put(type(obj).__name__)
            self._class(type(obj))
            for name in ("fun", "jvp", "fwd", "bwd", "nondiff_argnums", "symbolic_zeros"):
                self.add(getattr(obj, name, None))
        elif obj is _MISSING or obj is dataclasses.MISSING:
            self.put("missing")
        elif callable(obj) and _named_library_object(obj):
            # a library's function of its own C type (NumPy's `np.cumsum`): by its name
            self.put("named", obj.__module__, obj.__qualname__)
        elif (state := _plain_state(obj)) is not None:
            # a library's own object (a sentinel, a small helper): its class and its attributes
            self.put("object")
            self._class(type(obj))
            self.add(state)
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

    def _jitted(self, obj) -> None:
        """A `jax.jit`-wrapped function, by the function it wraps. Its jit options are not
        visible, but they change placement, donation and static arguments, never the values the
        traced program computes (a nested jit's compiler options do not reach the outer
        program)."""
        self.put("jitted")
        self.add(obj.__wrapped__)

    def _function(self, fn: types.FunctionType) -> None:
        code = fn.__code__
        if not _trusted_file(code.co_filename):
            raise _user_code(fn, f" in {code.co_filename}")
        module_file = fn.__globals__.get("__file__")
        if module_file is None or Path(module_file).resolve() != Path(code.co_filename).resolve():
            raise _user_code(fn, ": its code and its module differ")
        # the code is fixed by the package's source hash or version; its object tells apart the
        # functions of one source (two lambdas in one function share a qualified name)
        relative = _relative(code.co_filename)
        self.put("function", fn.__module__, fn.__qualname__, relative, code.co_firstlineno)
        self._code(code)
        self.add(fn.__defaults__)
        self.add(fn.__kwdefaults__)
        self.put("closure")
        for cell in fn.__closure__ or ():
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell (a name assigned later)
                contents = _MISSING
            self.add(contents)

    def _code(self, code: types.CodeType) -> None:
        self.put("code", code.co_code, code.co_names, code.co_varnames, code.co_freevars)
        self.put(code.co_cellvars, code.co_argcount, code.co_kwonlyargcount, code.co_flags)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                self._code(const)
            elif type(const) in (tuple, frozenset):  # constant containers of literals
                self.put(type(const).__name__, repr(const))
            else:
                self.add(const)

    def _class(self, cls: type) -> None:
        self.put("class", cls.__module__, cls.__qualname__)
        for base in cls.__mro__:
            if base is not object and not _trusted_class(base):
                raise _user_code(base, " a class")

    def _treedef(self, treedef) -> None:
        node = treedef.node_data()
        self.put("treedef", treedef.num_leaves, treedef.num_nodes)
        if node is not None:
            self._class(node[0])
            self.add(node[1])
        for child in treedef.children():
            self.add(child)


@functools.lru_cache(maxsize=4096)
def _trusted_class(cls: type) -> bool:
    """Whether `cls` is the class its (trusted) module defines under its name, or a class made
    by trusted code whose own methods all come from trusted files (or are generated from its
    fields, as a dataclass's `__init__`)."""
    if not _trusted_module(cls.__module__):
        return False
    if _resolve(cls.__module__, cls.__qualname__) is cls:
        return True
    for value in vars(cls).values():
        if isinstance(value, staticmethod | classmethod):
            value = value.__func__
        functions = (
            (value.fget, value.fset, value.fdel) if isinstance(value, property) else (value,)
        )
        for fn in functions:
            code = getattr(fn, "__code__", None)
            if isinstance(fn, types.FunctionType) and not (
                _trusted_file(code.co_filename) or code.co_filename.startswith("<")
            ):
                return False
    return True


def _named_library_object(obj) -> bool:
    """Whether `obj` is the object a trusted module defines under its own qualified name."""
    module, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(name, str):
        return False
    return _trusted_module(module) and _resolve(module, name) is obj


def _relative(filename: str) -> str:
    path = Path(filename).resolve()
    for root in _trusted_roots():
        if path.is_relative_to(root):
            return f"{root.name}/{path.relative_to(root).as_posix()}"
    return path.name  # a standard-library file


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


def fingerprint(obj: Any, abstract_arrays: bool = False) -> str:
    """A hash of what `obj` is made of (see the module docstring); `Unkeyable` if it holds user
    code or an object of an unknown kind.

    With `abstract_arrays`, arrays count by dtype, shape, weak type and placement only.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> from neuraldiffeq.compilation.exported import Unkeyable, fingerprint
        >>> fingerprint(optax.adam(0.05)) == fingerprint(optax.adam(0.05))
        True
        >>> fingerprint(optax.adam(0.05)) == fingerprint(optax.adam(0.01))
        False
        >>> fingerprint(jnp.ones(2), True) == fingerprint(jnp.zeros(2), True)
        True
        >>> try:
        ...     fingerprint(lambda y: y**3)  # user code: never keyed
        ... except Unkeyable as e:
        ...     print("unkeyable")
        unkeyable
    """
    hasher = _Hasher(abstract_arrays)
    try:
        hasher.add(obj)
    except RecursionError:
        raise Unkeyable("a structure too deep to walk") from None
    return hasher.h.hexdigest()


def keyable(obj: Any) -> bool:
    """Whether `obj` is made only of trusted code (see the module docstring).

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> from neuraldiffeq.compilation.exported import keyable
        >>> keyable(nde.transforms.cube), keyable(lambda y: y**3)
        (True, False)
    """
    try:
        fingerprint(obj, abstract_arrays=True)
    except Unkeyable:
        return False
    return True


@functools.cache
def _source_hash() -> str:
    """A hash of every source file of the installed neuraldiffeq package."""
    root = _package_root()
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
    the leaves' avals and the environment. Raises `Unkeyable` (user code, unknown objects)."""
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


def _aval_record(aval) -> list:
    return [list(aval.shape), str(aval.dtype), bool(getattr(aval, "weak_type", False))]


def save(path: Path, key: str, exported: jax.export.Exported, extra: dict) -> bool:
    """Write an entry; False (and nothing written) for a program this cache does not keep
    (effects, several devices, placed inputs or outputs)."""
    if (
        exported.ordered_effects
        or exported.unordered_effects
        or exported.nr_devices != 1
        or any(s is not None for s in exported.in_shardings_hlo + exported.out_shardings_hlo)
        or exported.disabled_safety_checks
    ):
        logger.info("not exporting %s: effects or shardings", exported.fun_name)
        return False
    payload = bytes(exported.serialize())
    header = {
        "format": FORMAT,
        "key": key,
        "in_avals": [_aval_record(a) for a in exported.in_avals],
        "out_avals": [_aval_record(a) for a in exported.out_avals],
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        **extra,
    }
    blob = json.dumps(header).encode()
    _write(path, _MAGIC + struct.pack("<Q", len(blob)) + blob + payload)
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
        payload = raw[start + size :]
        if header["format"] != FORMAT or header["key"] != key:
            raise ValueError("another key or format")
        if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
            raise ValueError("the payload does not match its hash")
        expected = [_aval_record(a) for a in in_avals]
        if header["in_avals"] != expected:
            raise ValueError("other inputs")
        exported = jax.export.deserialize(bytearray(payload))
        if [_aval_record(a) for a in exported.in_avals] != expected:
            raise ValueError("the program takes other inputs than its header says")
        if [_aval_record(a) for a in exported.out_avals] != header["out_avals"]:
            raise ValueError("the program gives other outputs than its header says")
    except Exception as error:  # noqa: BLE001 — a damaged entry is ignored and rewritten
        logger.info("ignoring the exported step %s: %s", path, error)
        return None
    return exported, header


def eval_shape(fn, *inputs):
    """`jax.eval_shape(fn, *inputs)`, read from disk when the same evaluation ran before.

    Only for `fn` made of trusted code (see the module docstring); anything else is evaluated
    every time. With JAX's compilation cache on, a result that is one array's shape is kept
    next to the exported steps, under the key of `fn` (arrays it captures by value: Python code
    may branch on them), the inputs' avals and the environment. Only results are kept: an
    evaluation that fails runs again, and raises its own error.

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> from neuraldiffeq.compilation.exported import eval_shape
        >>> eval_shape(nde.transforms.cube, jnp.ones(3)).shape
        (3,)
    """
    folder = directory()
    path = digest = None
    if folder is not None:
        try:
            digest = fingerprint(
                ["eval_shape", fingerprint(fn), fingerprint(inputs, True), _environment()]
            )
            path = folder / "shapes" / f"{digest}.json"
        except Unkeyable as reason:  # user code: evaluated as usual
            logger.info("not keeping eval_shape of %s: it holds %s", _describe(fn), reason)
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


def cached_array(fn, *args, **kwargs) -> np.ndarray:
    """`np.asarray(fn(*args, **kwargs))`, read from disk when it was computed before.

    For deterministic reference computations run in every process (a dataset's tight-tolerance
    solve): with JAX's compilation cache on, the result is kept next to the exported steps
    under the key of `fn` and its arguments (by value) and the environment, as the steps are.
    Only for `fn` and arguments made of trusted code (see the module docstring): a user's field
    is solved every time. A failing computation raises as always and keeps nothing; a damaged
    entry is recomputed.

    Example:
        >>> import numpy as np
        >>> from neuraldiffeq.compilation.exported import cached_array
        >>> cached_array(np.cumsum, np.arange(4)).tolist()
        [0, 1, 3, 6]
    """
    folder = directory()
    path = None
    if folder is not None:
        try:
            digest = fingerprint(["array", fingerprint(fn), fingerprint([args, kwargs])])
            digest = fingerprint([digest, _environment()])
            path = folder / "arrays" / f"{digest}.npy"
        except Unkeyable as reason:  # user code: computed as usual
            logger.info("not keeping the result of %s: it holds %s", _describe(fn), reason)
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
