"""`neuraldiffeq._compat`, the one module allowed to touch the internals of the libraries under
us (issue #26, item 2). Each internal has a test that fails loudly when it moves (a new release
renamed it) or when the upstream fix lands (then delete the workaround); and the whole of `src/`
is checked for private module paths and run-time assignments to a dependency's attributes."""

import ast
import functools
import logging
import re
import time
import tomllib
from importlib.metadata import version
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from neuraldiffeq import _compat
from neuraldiffeq.compilation.cacheable import error_callbacks

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "neuraldiffeq"
COMPAT = SRC / "_compat.py"
DEPENDENCIES = ("jax", "jaxlib", "equinox", "diffrax", "lineax", "optimistix", "optax")
PRIVATE_PATH = re.compile(
    r"\b(jax\._src|jaxlib\._|equinox\._|diffrax\._|lineax\._|optimistix\._|optax\._)"
    r"|\bfrom (jax|jaxlib|equinox|diffrax|lineax|optimistix|optax)(\.\w+)* import _"
)


def _sources():
    return sorted(p for p in SRC.rglob("*.py") if p != COMPAT)


# -- the rules for the rest of src/ -----------------------------------------------------------


def test_no_private_module_path_outside_compat():
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _sources()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PRIVATE_PATH.search(line)
    ]
    assert not found, "private internals belong in src/neuraldiffeq/_compat.py:\n" + "\n".join(
        found
    )


def _dependency_names(tree: ast.Module) -> set[str]:
    """The local names bound to a dependency's modules or objects (`import jax.numpy as jnp`,
    `from equinox import internal as eqxi`, ...)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in DEPENDENCIES:
                    names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and not node.level:
            if (node.module or "").split(".")[0] in DEPENDENCIES:
                names |= {alias.asname or alias.name for alias in node.names}
    return names


def _base_name(node) -> str | None:
    while isinstance(node, ast.Attribute | ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def test_no_runtime_assignment_to_a_dependencys_attributes():
    found = []
    for path in _sources():
        tree = ast.parse(path.read_text())
        deps = _dependency_names(tree)
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            elif isinstance(node, ast.Delete):
                targets = node.targets
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("setattr", "delattr")
                and node.args
            ):
                if _base_name(node.args[0]) in deps:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
                continue
            for target in targets:
                if isinstance(target, ast.Attribute | ast.Subscript) and _base_name(target) in deps:
                    found.append(f"{path.relative_to(ROOT)}:{target.lineno}")
    assert not found, "run-time assignments to a dependency's attributes:\n" + "\n".join(found)


#: the dependencies whose internals _compat.py uses (jaxlib moves with jax)
USES_INTERNALS = ("jax", "jaxlib", "equinox", "diffrax")


def test_upper_bounds_on_every_dependency_whose_internals_are_used():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bounds = {}
    for requirement in project["dependencies"]:
        match = re.match(r"([A-Za-z0-9_.-]+)(.*)", requirement)
        bounds[match.group(1).lower()] = match.group(2)
    for name in USES_INTERNALS:
        upper = re.search(r"<\s*([\d.]+)", bounds[name])
        assert upper, f"{name} has no upper version bound in pyproject.toml"
        installed = tuple(int(x) for x in version(name).split(".")[:2])
        assert installed < tuple(int(x) for x in upper.group(1).split(".")[:2]), name


# -- diffrax's loop state ------------------------------------------------------------------------


def test_diffrax_save_state_is_still_private_and_holds_ts_and_ys():
    state_type = _compat._save_state_type()
    fields = set(getattr(state_type, "__dataclass_fields__", {}))
    assert {"ts", "ys"} <= fields, f"diffrax's SaveState changed: {sorted(fields)}"
    assert not hasattr(diffrax, "SaveState"), (
        "diffrax now exports SaveState: use the public name in _compat.saved_states"
    )


@pytest.mark.parametrize("name", ["Forward", "Interpolating", "Quadrature"])
def test_saved_states_finds_the_values_a_continuous_adjoint_differentiates(name):
    # these adjoints find the saved values through saved_states: d/da of y(1) = e^a at a = -1
    import neuraldiffeq as nde

    sensitivity = getattr(nde, name)()
    model = nde.NeuralODE(lambda t, y, a: a * y, rtol=1e-6, atol=1e-8, sensitivity=sensitivity)
    gradient = jax.grad(lambda a: model(jnp.array([0.0, 1.0]), jnp.ones(1), a)[-1, 0])(-1.0)
    np.testing.assert_allclose(float(gradient), np.exp(-1.0), rtol=1e-4)


# -- the batched solve's loop and term ------------------------------------------------------------


def test_checkpointed_while_loop_is_still_private_and_reverse_differentiable():
    assert not hasattr(eqx, "checkpointed_while_loop"), (
        "equinox now exports checkpointed_while_loop: use it in _compat.checkpointed_while_loop"
    )

    def power(a, checkpoints):  # a**5 by five steps: d/da = 5 a**4
        body = lambda c: (c[0] + 1, c[1] * a)  # noqa: E731
        return _compat.checkpointed_while_loop(
            lambda c: c[0] < 5, body, (0, 1.0), max_steps=8, checkpoints=checkpoints
        )[1]

    for checkpoints in (None, 2):
        np.testing.assert_allclose(float(jax.grad(power)(1.5, checkpoints)), 5 * 1.5**4, rtol=1e-6)


def test_wrap_term_still_decides_diffraxs_first_step():
    # the first step diffeqsolve takes for a bare ODETerm (dt0=None) is the one the controller
    # picks for the wrapped term, not for the bare one: if diffrax changes this, the batched
    # solve (which hands the controller a wrapped term) no longer starts where diffeqsolve does
    term = diffrax.ODETerm(lambda t, y, a: -y)
    controller, solver = diffrax.PIDController(rtol=1e-6, atol=1e-6), diffrax.Tsit5()
    sol = diffrax.diffeqsolve(
        term,
        solver,
        0.0,
        1.0,
        None,
        jnp.ones(1),
        stepsize_controller=controller,
        saveat=diffrax.SaveAt(steps=True),
    )
    first = float(sol.ts[0])

    def init(term):
        return float(controller.init(term, 0.0, 1.0, jnp.ones(1), None, None, solver.func, 5)[0])

    assert init(_compat.wrap_term(term, jnp.array(1))) == pytest.approx(first, rel=1e-6)
    assert init(term) != pytest.approx(first, rel=1e-3)


# -- equinox's error callbacks --------------------------------------------------------------------


def test_equinox_error_callbacks_are_recognised():
    codes = _compat._equinox_error_codes()  # raises if error_if holds no known callback
    assert codes
    closed = jax.make_jaxpr(lambda x: eqx.error_if(x, x < 0, "negative"))(1.0)
    assert error_callbacks(closed) == 2  # the raise, and the TPU message
    other = jax.make_jaxpr(lambda x: jax.pure_callback(np.sin, x, x))(1.0)
    assert error_callbacks(other) == 0  # someone else's callback is kept


def test_jax_still_does_not_cache_programs_with_host_callbacks(tmp_path):
    # the reason compilation.cacheable strips equinox's callbacks: when JAX's persistent cache
    # starts keeping such programs, the stripping (and _compat's callback lookup) can go
    folder = Path(jax.config.jax_compilation_cache_dir or "")
    if not jax.config.jax_compilation_cache_dir or not folder.is_dir():
        pytest.skip("JAX's persistent compilation cache is off in this session")
    unique = float(time.time_ns() % 1_000_003)  # a program no earlier run compiled

    def entries(name):
        # by the program's name: the other test worker shares the folder and writes its own
        return {p for p in folder.rglob(f"*{name}*") if p.is_file()}

    def compat_probe_plain(x):
        return x * 2.0 + unique

    def compat_probe_checked(x):
        return eqx.error_if(x * 3.0 + unique, x < -1e9, "never")

    jax.jit(compat_probe_plain)(jnp.ones(3)).block_until_ready()
    assert entries("compat_probe_plain"), "control: a plain program is kept by the persistent cache"
    jax.jit(compat_probe_checked)(jnp.ones(3)).block_until_ready()
    assert not entries("compat_probe_checked"), (
        "JAX now keeps programs with host callbacks in its persistent cache: "
        "compilation.cacheable's stripping and _compat.is_equinox_error_callback may go"
    )


def test_jax_logs_failed_callbacks_to_the_named_logger():
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger(_compat.JAX_CALLBACK_LOGGER)
    handler = Keep()
    logger.addHandler(handler)
    try:
        with pytest.raises(Exception, match="negative"):
            jax.block_until_ready(
                jax.jit(lambda x: eqx.error_if(x, x < 0, "negative"))(-jnp.ones(2))
            )
    finally:
        logger.removeHandler(handler)
    assert records, f"JAX no longer logs failed callbacks to {_compat.JAX_CALLBACK_LOGGER!r}"


# -- equinox's closure conversion inside shard_map ------------------------------------------------


def _closure_converted_in_shard_map():
    """equinox PR #1261's example: a constant whose sharding changes by adding zero."""
    mesh = Mesh(np.array(jax.devices()[:1]), ("i",))

    @functools.partial(
        jax.shard_map,
        mesh=mesh,
        in_specs=PartitionSpec("i"),
        out_specs=PartitionSpec("i"),
        check_vma=False,
    )
    def run(x):
        constant = jnp.array(1.0)
        converted = eqx.filter_closure_convert(lambda y: x * y, constant)
        return converted(constant + 0)

    return jax.jit(run)(jnp.array([2.0]))


def test_closure_conversion_in_shard_map_still_needs_the_workaround():
    from equinox import _ad

    assert callable(getattr(_ad, "_check_closure_convert_input", None)), (
        "equinox moved _check_closure_convert_input: update _compat"
    )
    assert callable(getattr(_ad, "_unflatten", None)) and callable(_ad.tree_equal)
    with pytest.raises(ValueError, match="Closure-converted function called with different"):
        _closure_converted_in_shard_map()  # if this passes, equinox PR #1261 landed: delete
    original = _ad._check_closure_convert_input
    with _compat.closure_conversion_ignores_manual_sharding():
        np.testing.assert_array_equal(_closure_converted_in_shard_map(), [2.0])
    assert _ad._check_closure_convert_input is original  # restored
