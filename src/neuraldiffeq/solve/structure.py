"""The solve configuration's `jacobian=` and `linear_solve=`: which solvers take them, and how.

Three kinds of implicit solver take a sparse Jacobian (`neuraldiffeq.solve.jacobian`) and a
choice of linear solve (`neuraldiffeq.solve.linear`):

- `BDF` (`"bdf"`): its own fields `jacobian`, `linear_solve` (also `"krylov"`);
- `Radau5` (`"radau5"`, Radau IIA): its own fields `jacobian`, `linear_solve` (`"dense"`,
  `"blocks"`, `"sparse"`, `"auto"`);
- diffrax's ESDIRKs `"kvaerno3"`, `"kvaerno4"`, `"kvaerno5"` and `"implicit_euler"`: the
  linear solver of their Newton iteration (`root_finder.linear_solver`) becomes a
  `PatternSolver` (`neuraldiffeq.solve.pattern_solver`) holding the pattern.

Every other solver keeps its dense Jacobian, and a sparse one asked of it is refused.

Example:
    >>> import numpy as np
    >>> from neuraldiffeq.solve.bdf import BDF
    >>> from neuraldiffeq.solve.structure import jacobian_of, with_structure
    >>> jacobian_of(with_structure(BDF(), np.eye(3, dtype=bool), "sparse"))
    SparsityPattern(n=3, nnz=3, n_colours=1)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

from .bdf import BDF
from .dae import Radau5
from .jacobian import SparsityPattern, as_pattern, check_pattern, detect_pattern
from .linear import check_linear_solve
from .pattern_solver import PatternSolver, check_dense_solve, check_pattern_solve

#: diffrax's implicit solvers whose Newton iteration can take a `PatternSolver`.
ESDIRKS = (diffrax.Kvaerno3, diffrax.Kvaerno4, diffrax.Kvaerno5, diffrax.ImplicitEuler)

#: The solver names that take a sparse Jacobian, for messages.
STRUCTURED_NAMES = "'bdf', 'radau5', 'kvaerno3', 'kvaerno4', 'kvaerno5' or 'implicit_euler'"


def as_jacobian(jacobian: Any) -> Any:
    """A `jacobian=` setting in its stored form: None, `"dense"`, `"sparse"` or a
    `SparsityPattern` (a boolean matrix or a SciPy sparse matrix becomes one).

    Example:
        >>> import numpy as np
        >>> from neuraldiffeq.solve.structure import as_jacobian
        >>> as_jacobian(np.eye(2, dtype=bool))
        SparsityPattern(n=2, nnz=2, n_colours=1)
    """
    if jacobian is None or isinstance(jacobian, SparsityPattern):
        return jacobian
    if isinstance(jacobian, str):
        if jacobian.lower() not in ("dense", "sparse"):
            raise ValueError(
                f"jacobian must be 'dense', 'sparse' (detect the pattern), a SparsityPattern or "
                f"an (n, n) boolean matrix of the pattern, got {jacobian!r}."
            )
        return jacobian.lower()
    return as_pattern(jacobian, int(np.shape(jacobian)[0]))


def _describe(jacobian: Any) -> str:
    return repr(jacobian) if isinstance(jacobian, str | SparsityPattern | None) else "<pattern>"


def _linear_solver(solver: Any) -> Any:
    return getattr(getattr(solver, "root_finder", None), "linear_solver", None)


def jacobian_of(solver: Any) -> Any:
    """The Jacobian setting of a solver: `"dense"`, `"sparse"` (detection pending) or its
    `SparsityPattern`; None for a solver without one (explicit solvers, and implicit ones that
    only form dense Jacobians).

    Example:
        >>> import diffrax
        >>> from neuraldiffeq.solve.structure import jacobian_of
        >>> jacobian_of(diffrax.Kvaerno5()), jacobian_of(diffrax.Tsit5())
        ('dense', None)
    """
    if isinstance(solver, BDF | Radau5):
        return solver.jacobian
    if isinstance(solver, ESDIRKS):
        linear = _linear_solver(solver)
        return linear.pattern if isinstance(linear, PatternSolver) else "dense"
    return None


def needs_detection(solver: Any) -> bool:
    """Whether `solver` waits for its Jacobian's pattern to be detected (`jacobian="sparse"`).

    Example:
        >>> from neuraldiffeq.solve.bdf import BDF
        >>> from neuraldiffeq.solve.structure import needs_detection
        >>> needs_detection(BDF(jacobian="sparse")), needs_detection(BDF())
        (True, False)
    """
    return isinstance(jacobian_of(solver), str) and jacobian_of(solver) == "sparse"


def with_structure(solver: Any, jacobian: Any, linear_solve: str | None) -> Any:
    """`solver` with the Jacobian and linear solve a `SolveConfig` was given (None: unchanged).

    `jacobian`: `"dense"`, `"sparse"` (the pattern detected before the first solve, see
    `resolve_pattern`), a `SparsityPattern`, or a square boolean matrix / SciPy sparse matrix
    of the pattern. `BDF`, `Radau5` and diffrax's `Kvaerno3/4/5` and `ImplicitEuler` take a
    sparse Jacobian and a choice of linear solve (`"krylov"` only `BDF`); any other solver is
    refused with a `ValueError` unless both are None or `"dense"`.

    Example:
        >>> import diffrax, numpy as np
        >>> from neuraldiffeq.solve.structure import with_structure
        >>> solver = with_structure(diffrax.Kvaerno5(), np.eye(3, dtype=bool), "blocks")
        >>> solver.root_finder.linear_solver.linear_solve
        'blocks'
    """
    if jacobian is None and linear_solve is None:
        return solver
    jacobian = as_jacobian(jacobian)
    linear_solve = None if linear_solve is None else check_linear_solve(linear_solve)
    name = type(solver).__name__
    if isinstance(solver, BDF | Radau5):  # their own fields; every other setting kept
        changes = dict(jacobian=jacobian, linear_solve=linear_solve)
        return dataclasses.replace(solver, **{k: v for k, v in changes.items() if v is not None})
    if isinstance(solver, ESDIRKS) and _linear_solver(solver) is not None:
        current = _linear_solver(solver)
        if jacobian is None:
            jacobian = current.pattern if isinstance(current, PatternSolver) else "dense"
        if linear_solve is None and isinstance(current, PatternSolver):
            linear_solve = current.linear_solve
        if jacobian == "dense":
            check_dense_solve(linear_solve, name)
            if not isinstance(current, PatternSolver):
                return solver
            new = lx.AutoLinearSolver(well_posed=None)  # diffrax's default
        else:
            new = PatternSolver(jacobian, check_pattern_solve(linear_solve or "auto", name))
        root_finder = eqx.tree_at(lambda r: r.linear_solver, solver.root_finder, new)
        return eqx.tree_at(lambda s: s.root_finder, solver, root_finder)
    if jacobian in (None, "dense") and linear_solve in (None, "dense", "auto"):
        return solver
    raise ValueError(
        f"jacobian={_describe(jacobian)} / linear_solve={linear_solve!r}: a sparse Jacobian and "
        f"sparse or Krylov linear solves are used by solver={STRUCTURED_NAMES}; {name} forms a "
        "dense Jacobian. Pass one of those solvers, or leave jacobian and linear_solve out."
    )


def resolve_pattern(solver: Any, terms: Any, t0, y0, args: Any) -> Any:
    """`solver` with `jacobian="sparse"` replaced by the pattern detected for the ODE `terms`
    (a `diffrax.ODETerm` or a field f(t, y, args)) at y0; a pattern already given is checked
    against the field on a random state (`check_pattern`). Needs concrete values: under
    `jax.jit` a `ValueError` asks to resolve first. A solver with a dense Jacobian (or none)
    is returned unchanged.

    Example:
        >>> import jax.numpy as jnp
        >>> from neuraldiffeq.solve.bdf import BDF
        >>> from neuraldiffeq.solve.structure import resolve_pattern
        >>> solver = resolve_pattern(BDF(jacobian="sparse"), lambda t, y, a: -y, 0.0,
        ...                          jnp.ones(4), None)
        >>> solver.jacobian.nnz
        4
    """
    jacobian = jacobian_of(solver)
    if jacobian is None or (isinstance(jacobian, str) and jacobian == "dense"):
        return solver
    field = terms.vector_field if isinstance(terms, diffrax.ODETerm) else terms
    if not callable(field) or isinstance(field, diffrax.AbstractTerm):
        raise ValueError(
            f"jacobian patterns are for ODE terms; got {type(terms).__name__}: use "
            "jacobian='dense'."
        )
    leaves = jax.tree_util.tree_leaves((field, t0, y0, args))
    if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
        if needs_detection(solver):
            raise ValueError(
                "jacobian='sparse' detects the Jacobian's sparsity pattern from concrete values, "
                "but the solve is traced (inside jax.jit, grad or vmap). Detect it first, "
                "outside: model = model.resolve_solver(ts, y0, args) (nde.fit does this), or "
                "pass the pattern: jacobian=neuraldiffeq.solve.jacobian.detect_pattern(field, "
                "t0, y0, args)."
            )
        return solver  # a given pattern was checked when it could be (eagerly)
    y0 = jnp.asarray(y0)
    if needs_detection(solver):
        pattern = detect_pattern(field, t0, y0, args)
    else:
        pattern = jacobian
        if pattern.n != y0.size:
            raise ValueError(
                f"jacobian pattern is {pattern.n}x{pattern.n} but the state has {y0.size} "
                f"components; give an (n, n) pattern with n = {y0.size}."
            )
        check_pattern(field, t0, y0, args, pattern)
    return with_structure(solver, pattern, None)
