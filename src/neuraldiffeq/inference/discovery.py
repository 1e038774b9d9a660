"""Equation discovery: a sparse formula for the network inside a fitted model (SINDy on its output).

The universal-differential-equation workflow (Rackauckas et al. 2020, "Universal Differential
Equations for Scientific Machine Learning"): fit known mechanism + network to data, evaluate the
network along the fitted trajectories, regress its output on a library of candidate terms with a
sparse regressor, and put the resulting formula back into the model in the network's place, its
coefficients trainable so that `nde.fit` refines them against the data.

The sparse regression is PySINDy's (`STLSQ`, `SR3`, or any PySINDy optimizer you pass); the
library is evaluated here in JAX so that the discovered term is a differentiable equinox module.
The library's columns are scaled to unit root-mean-square over the states before the regression
(PySINDy's `normalize_columns`), so that a threshold compares each term's contribution to the
output, not its coefficient, and the selection does not depend on the states' units (unscaled, a
term of large values, x^2 where x is about 5, needs a small coefficient for the same contribution
and is dropped too easily, and a constant is kept too easily). The sparsity (the threshold) is
chosen by K-fold cross-validation with the one-standard-error rule (the sparsest model whose
held-out error exceeds the best one's by at most one standard error of the fold-by-fold
difference), or by AIC/BIC.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..fitting.shooting import SegmentStates

_SELECTIONS = ("cv", "aic", "bic")
_OPTIMIZERS = ("stlsq", "sr3")


class Library(eqx.Module):
    """Candidate terms: monomials of the states up to `degree`, and functions you name.

    Arguments:
        degree: highest total degree of the monomials (1 = linear terms), or None for none.
        functions: extra terms, name -> function of the state vector `y` returning a scalar,
            e.g. `{"sin(x)": lambda y: jnp.sin(y[0])}`.
        bias: include the constant term `1`.

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> lib = nde.Library(degree=2, bias=False)
        >>> lib.names(["x", "y"])
        ['x', 'y', 'x^2', 'x*y', 'y^2']
        >>> lib(jnp.array([2.0, 3.0])).tolist()
        [2.0, 3.0, 4.0, 6.0, 9.0]
    """

    degree: int | None = eqx.field(static=True)
    functions: tuple[tuple[str, Callable], ...] = eqx.field(static=True)
    bias: bool = eqx.field(static=True)

    def __init__(
        self,
        degree: int | None = 2,
        functions: Mapping[str, Callable] | None = None,
        bias: bool = True,
    ):
        if degree is not None and (isinstance(degree, bool) or not isinstance(degree, int)):
            raise ValueError(f"degree must be an integer >= 1 or None, got {degree!r}.")
        if degree is not None and degree < 1:
            raise ValueError(
                f"degree must be at least 1 (1 = linear terms), got {degree}; pass degree=None "
                "for a library of your functions only."
            )
        functions = dict(functions or {})
        for name, fn in functions.items():
            if not callable(fn):
                raise ValueError(
                    f"functions[{name!r}] must be a function of the state vector, got "
                    f"{type(fn).__name__}."
                )
        if degree is None and not functions and not bias:
            raise ValueError(
                "the library has no terms: give degree >= 1, functions={name: fn}, or bias=True."
            )
        self.degree = degree
        self.functions = tuple(functions.items())
        self.bias = bool(bias)

    def exponents(self, dim: int) -> list[tuple[int, ...]]:
        """The monomials' exponent vectors for `dim` states, in the order of `names`."""
        if self.degree is None:
            return []
        found = []
        for total in range(1, self.degree + 1):
            for combo in itertools.combinations_with_replacement(range(dim), total):
                found.append(tuple(combo.count(i) for i in range(dim)))
        return found

    def names(self, states: Sequence[str]) -> list[str]:
        """The terms' names, given the states' names."""
        names = ["1"] if self.bias else []
        for powers in self.exponents(len(states)):
            parts = [s if p == 1 else f"{s}^{p}" for s, p in zip(states, powers, strict=True) if p]
            names.append("*".join(parts))
        return names + [name for name, _ in self.functions]

    def size(self, dim: int) -> int:
        """How many terms the library has for `dim` states."""
        return int(self.bias) + len(self.exponents(dim)) + len(self.functions)

    def __call__(self, y: jax.Array) -> jax.Array:
        """The terms at one state `y` (shape `(D,)`), shape `(size,)`."""
        terms = [jnp.ones((), y.dtype)] if self.bias else []
        for powers in self.exponents(y.shape[-1]):
            terms.append(jnp.prod(jnp.stack([y[i] ** p for i, p in enumerate(powers) if p])))
        terms += [jnp.asarray(fn(y), y.dtype).reshape(()) for _, fn in self.functions]
        return jnp.stack(terms)


class SparseTerm(eqx.Module):
    """A discovered formula `out_i = sum_j coefficients[i, j] * library_j(y)` over its kept terms.

    The coefficients are trainable (an array leaf); the terms that sparse regression dropped stay
    dropped (a static mask), so `nde.fit` refines only the kept ones. Call it like the network it
    replaces: `term(y)`.

    Example:
        >>> import jax.numpy as jnp, neuraldiffeq as nde
        >>> lib = nde.Library(degree=2, bias=False)
        >>> term = nde.SparseTerm(lib, jnp.array([[0, 0, 0, -0.9, 0.0]]), ["x", "y"])
        >>> term.equation()
        'f0 = -0.9 x*y'
        >>> round(float(term(jnp.array([1.0, 2.0]))[0]), 3)
        -1.8
    """

    library: Library
    coefficients: jax.Array
    mask: tuple[tuple[bool, ...], ...] = eqx.field(static=True)
    state_names: tuple[str, ...] = eqx.field(static=True)
    output_names: tuple[str, ...] = eqx.field(static=True)

    def __init__(self, library, coefficients, state_names, output_names=None, mask=None):
        coefficients = jnp.asarray(coefficients)
        if coefficients.ndim != 2:
            raise ValueError(
                f"coefficients must have shape (outputs, terms), got {coefficients.shape}."
            )
        n_terms = library.size(len(state_names))
        if coefficients.shape[1] != n_terms:
            raise ValueError(
                f"coefficients has {coefficients.shape[1]} columns but the library has "
                f"{n_terms} terms for {len(state_names)} states."
            )
        if mask is None:
            mask = np.asarray(coefficients) != 0
        self.library = library
        self.mask = tuple(tuple(bool(m) for m in row) for row in np.asarray(mask))
        self.coefficients = coefficients * jnp.asarray(self.mask, coefficients.dtype)
        self.state_names = tuple(state_names)
        outputs = coefficients.shape[0]
        self.output_names = tuple(output_names or [f"f{i}" for i in range(outputs)])
        if len(self.output_names) != outputs:
            raise ValueError(
                f"output_names has {len(self.output_names)} names for {outputs} outputs."
            )

    def __call__(self, y: jax.Array) -> jax.Array:
        mask = jnp.asarray(self.mask, self.coefficients.dtype)
        return (self.coefficients * mask) @ self.library(y)

    def equation(self, digits: int = 4) -> str:
        """The formula as text, one line per output, e.g. `f0 = -0.9 x*y`."""
        names = self.library.names(self.state_names)
        lines = []
        coefficients = np.asarray(self.coefficients)
        for out, row, keep in zip(self.output_names, coefficients, self.mask, strict=True):
            parts = []
            for c, name, k in zip(row, names, keep, strict=True):
                if not k:
                    continue
                value = f"{c:.{digits}g}"
                parts.append(value if name == "1" else f"{value} {name}")
            text = " + ".join(parts).replace("+ -", "- ") if parts else "0"
            lines.append(f"{out} = {text}")
        return "\n".join(lines)

    def prune(self, threshold: float, scales: Any = None) -> SparseTerm:
        """A copy without the kept terms whose coefficient is now below `threshold` in size;
        with `scales` (per library term, e.g. `Discovery.scales`), below it in `|c| * scale`,
        the units `discover` thresholds in.

        After `nde.fit` has refined the coefficients against the data, a term the regression
        kept only to absorb the network's error often shrinks towards zero; pruning it (and
        fitting again) is sequential thresholding on the trajectory, as STLSQ does on the
        network's output.
        """
        if not threshold >= 0:
            raise ValueError(f"threshold must be a number >= 0, got {threshold!r}.")
        size = np.abs(np.asarray(self.coefficients))
        if scales is not None:
            scales = np.asarray(scales, dtype=np.float64)
            if scales.shape != (size.shape[1],):
                raise ValueError(
                    f"scales must have one entry per library term ({size.shape[1]}), got shape "
                    f"{scales.shape}."
                )
            size = size * scales
        keep = np.asarray(self.mask) & (size >= threshold)
        return SparseTerm(
            self.library, self.coefficients, self.state_names, self.output_names, mask=keep
        )

    def n_terms(self) -> int:
        """How many terms were kept, over all outputs."""
        return int(sum(sum(row) for row in self.mask))


@dataclasses.dataclass(frozen=True)
class Discovery:
    """What `discover` found: the formula (`term`, `equation`) and how its sparsity was chosen.

    `replace(model)` returns the model with the explained network replaced by `term`.
    `thresholds`/`scores`/`n_terms` tabulate the sweep (`scores`: held-out mean squared error for
    `"cv"`, the criterion for `"aic"`/`"bic"`); `threshold` is the one chosen. The thresholds are
    in the units of `scales` (each library term's root-mean-square over the states; all 1 with
    `normalize_columns=False`): a term is dropped when `|coefficient| * scale` falls below one.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> class Field(eqx.Module):
        ...     net: nde.SparseTerm
        ...     def __call__(self, t, y, args): return self.net(y)
        >>> truth = nde.SparseTerm(nde.Library(2), jnp.zeros((2, 6)).at[0, 4].set(-0.5), "xy")
        >>> states = jax.random.normal(jax.random.key(0), (100, 2))
        >>> found = nde.discover(Field(truth), truth, states, names=["x", "y"])
        >>> print(found.equation)
        f0 = -0.5 x*y
        f1 = 0
    """

    term: SparseTerm
    equation: str
    threshold: float
    thresholds: np.ndarray
    scores: np.ndarray
    n_terms: np.ndarray
    selection: str
    optimizer: str
    path: tuple
    scales: np.ndarray | None = None

    def replace(self, model: Any) -> Any:
        """`model` with the explained network swapped for the discovered term."""
        return eqx.tree_at(lambda m: _get(m, self.path), model, self.term)


def discover(
    model: Any,
    network: Callable,
    states: Any,
    *,
    library: Library | None = None,
    optimizer: str | Any = "stlsq",
    selection: str = "cv",
    thresholds: Sequence[float] | None = None,
    folds: int = 5,
    names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    points: int = 200,
    normalize_columns: bool = True,
) -> Discovery:
    """Explain `network`, a part of `model`, by a sparse combination of `library` terms.

    Arguments:
        model: the fitted model (any pytree, e.g. an `nde.NeuralODE`) that contains `network`.
        network: the part to explain, a function of the state `y` (e.g. `model.field.net`); it
            must be an object inside `model` (so that `Discovery.replace` can swap it).
        states: where to evaluate the network: an array of states `(N, D)` (or `(B, T, D)`), or
            an `nde.TimeSeries`, in which case the model's own trajectory from each series'
            first observation, at `points` times over the data's span, is used ("along the
            fitted trajectories"). If `model` is an `nde.SegmentStates` (a model fitted with
            its initial states, `MultipleShooting.with_states`), each series' trajectory starts
            from its fitted first segment state instead of the noisy observation.
        library: the candidate terms; default `nde.Library(degree=2)`.
        optimizer: `"stlsq"` or `"sr3"` (PySINDy's `STLSQ`, `SR3` with an L0 penalty), swept
            over `thresholds`; or a PySINDy optimizer instance, used as configured (no sweep).
        selection: `"cv"` (K-fold cross-validation, one-standard-error rule), `"aic"` or `"bic"`.
        thresholds: the sparsity thresholds to try, in the units of the scaled library (a term
            stays if `|coefficient| * its root-mean-square` exceeds the threshold); default 30
            values, log-spaced from 1e-3 to 1 times the largest scaled least-squares coefficient.
        folds: the number of contiguous folds for `"cv"`.
        names: the states' names (default `x0, x1, ...`); output_names: the network outputs'.
        normalize_columns: scale each library term to unit root-mean-square over the states
            before the regression (coefficients are reported unscaled); False thresholds the raw
            coefficients.

    Example:
        >>> import equinox as eqx, jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> net = lambda y: jnp.stack([1.5 * y[0] * y[1], -y[0] ** 2])
        >>> model = {"net": net}
        >>> states = jax.random.normal(jax.random.key(1), (200, 2))
        >>> print(nde.discover(model, net, states, names="xy").equation)
        f0 = 1.5 x*y
        f1 = -1 x^2
    """
    import pysindy  # noqa: F401  (the sparse regressors; imported here: it is slow to import)

    library = Library(2) if library is None else library
    if not isinstance(library, Library):
        raise ValueError(f"library must be an nde.Library, got {type(library).__name__}.")
    if selection not in _SELECTIONS:
        raise ValueError(f"selection must be one of {_SELECTIONS}, got {selection!r}.")
    if isinstance(optimizer, str) and optimizer not in _OPTIMIZERS:
        raise ValueError(
            f"optimizer must be one of {_OPTIMIZERS} or a PySINDy optimizer, got {optimizer!r}."
        )
    if not isinstance(optimizer, str) and not hasattr(optimizer, "fit"):
        raise ValueError(
            f"optimizer must be 'stlsq', 'sr3' or a PySINDy optimizer (with .fit), got "
            f"{type(optimizer).__name__}."
        )
    if not callable(network):
        raise ValueError(f"network must be callable, got {type(network).__name__}.")
    path = _path_of(model, network)
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}.")

    ys = _states(model, states, points)
    dim = ys.shape[-1]
    names = [f"x{i}" for i in range(dim)] if names is None else list(names)
    if len(names) != dim:
        raise ValueError(f"names has {len(names)} names but the states have {dim} components.")
    features = np.asarray(jax.vmap(library)(jnp.asarray(ys)), dtype=np.float64)
    targets = np.asarray(jax.vmap(network)(jnp.asarray(ys)), dtype=np.float64)
    if targets.ndim == 1:
        raise ValueError("network must return a vector (outputs,) at each state, got a scalar.")
    if not (np.all(np.isfinite(features)) and np.all(np.isfinite(targets))):
        raise ValueError(
            "the library or the network is not finite at some states; check the states passed "
            "(a failed solve gives inf) and the library's functions."
        )
    if ys.shape[0] < 2 * folds:
        raise ValueError(f"states has {ys.shape[0]} points; give at least {2 * folds}.")
    scales = np.ones(features.shape[1])
    if normalize_columns:
        rms = np.sqrt(np.mean(features**2, axis=0))
        scales = np.where(rms > 0, rms, 1.0)  # a column that is 0 at every state stays as is
    features = features / scales

    if not isinstance(optimizer, str):
        coef = _regress(optimizer, features, targets)
        chosen, grid, scores, counts, label = 0.0, np.zeros(1), np.zeros(1), None, "custom"
        counts = np.array([int(np.count_nonzero(coef))])
        label = type(optimizer).__name__
    else:
        lstsq = np.linalg.lstsq(features, targets, rcond=None)[0]
        top = float(np.max(np.abs(lstsq))) or 1.0
        grid = (
            np.geomspace(1e-3 * top, top, 30)
            if thresholds is None
            else np.asarray(sorted(thresholds), dtype=np.float64)
        )
        if grid.size == 0 or np.any(grid < 0):
            raise ValueError("thresholds must be a non-empty list of non-negative numbers.")
        scores, fold_errors, counts = _sweep(optimizer, grid, features, targets, selection, folds)
        best = int(np.argmin(scores))
        if selection == "cv":
            # the sparsest model within one standard error of the best, the error being that of
            # the fold-by-fold difference to the best (folds differ a lot in scale)
            diff = fold_errors - fold_errors[best]
            se = diff.std(axis=1, ddof=1) / np.sqrt(folds)
            ok = np.nonzero(diff.mean(axis=1) <= se)[0]
            best = int(ok[np.argmin(counts[ok])]) if ok.size else best
        chosen = float(grid[best])
        coef = _regress(_make(optimizer, chosen), features, targets)
        label = optimizer
    mask = coef != 0
    coef = coef / scales  # back to the coefficients of the unscaled terms
    term = SparseTerm(
        library,
        jnp.asarray(coef, dtype=jnp.asarray(ys).dtype),
        names,
        output_names,
        mask=mask,
    )
    return Discovery(
        term, term.equation(), chosen, grid, scores, counts, selection, label, path, scales
    )


def _make(optimizer: str, threshold: float):
    import pysindy as ps

    if optimizer == "stlsq":
        return ps.STLSQ(threshold=threshold, alpha=1e-8)
    # SR3 with an L0 penalty thresholds at sqrt(2 lam nu): lam = t^2 / 2 matches STLSQ's t
    return ps.SR3(reg_weight_lam=threshold**2 / 2, regularizer="L0", max_iter=100, unbias=True)


def _regress(optimizer, features: np.ndarray, targets: np.ndarray) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():  # STLSQ warns when a threshold removes every term
        warnings.simplefilter("ignore")
        optimizer.fit(features, targets)
    return np.asarray(optimizer.coef_, dtype=np.float64).reshape(targets.shape[1], -1)


def _sweep(optimizer, grid, features, targets, selection, folds):
    n = features.shape[0]
    scores, spread, counts = [], [], []
    for threshold in grid:
        coef = _regress(_make(optimizer, threshold), features, targets)
        k = int(np.count_nonzero(coef))
        counts.append(k)
        if selection == "cv":
            errors = []
            # contiguous folds: interleaved ones (tried) let CV keep spurious terms, since the
            # network's error is systematic and shared by neighbouring points
            for idx in np.array_split(np.arange(n), folds):
                train = np.ones(n, bool)
                train[idx] = False
                c = _regress(_make(optimizer, threshold), features[train], targets[train])
                errors.append(np.mean((features[idx] @ c.T - targets[idx]) ** 2))
            scores.append(float(np.mean(errors)))
            spread.append(errors)
        else:
            m = targets.size
            rss = float(np.sum((features @ coef.T - targets) ** 2))
            fit = m * np.log(max(rss, 1e-300) / m)
            penalty = 2 * k if selection == "aic" else k * np.log(m)
            scores.append(fit + penalty)
            spread.append([0.0] * folds)
    return np.asarray(scores), np.asarray(spread), np.asarray(counts)


def _states(model: Any, states: Any, points: int) -> np.ndarray:
    if hasattr(states, "ts") and hasattr(states, "ys"):  # a TimeSeries: the model's trajectory
        if isinstance(points, bool) or not isinstance(points, int) or points < 2:
            raise ValueError(f"points must be an integer >= 2, got {points!r}.")
        dim = np.shape(states.ys)[-1]
        ts = jnp.linspace(states.ts[0], states.ts[-1], points)
        data = jnp.asarray(states.ys)
        first = data[..., 0, :]
        path = first.reshape(-1, first.shape[-1])
        if isinstance(model, SegmentStates):  # fitted starts: the first segment's, per series
            if model.states.shape[0] != path.shape[0] or model.states.shape[-1] != dim:
                raise ValueError(
                    f"model is an nde.SegmentStates with states of shape {model.states.shape}, "
                    f"but states (the TimeSeries) has {path.shape[0]} series of {dim} "
                    "components; pass the series it was fitted to."
                )
            path, model = model.states[:, 0], model.model
        ys = jax.vmap(lambda y0: model(ts, y0))(path)
        ys = np.asarray(ys).reshape(-1, ys.shape[-1])
        if not np.all(np.isfinite(ys)):
            raise ValueError(
                "the model's trajectory from the data's first observation is not finite (the "
                "solve failed); pass the states to evaluate the network at explicitly."
            )
        return ys
    ys = np.asarray(states)
    if ys.ndim not in (2, 3):
        raise ValueError(
            f"states must be an array (N, D) or (B, T, D), or an nde.TimeSeries; got shape "
            f"{ys.shape}."
        )
    return ys.reshape(-1, ys.shape[-1])


def _path_of(model: Any, network: Any) -> tuple:
    found = [
        path
        for path, leaf in jax.tree_util.tree_flatten_with_path(
            model, is_leaf=lambda x: x is network
        )[0]
        if leaf is network
    ]
    if not found:
        raise ValueError(
            "network is not part of model: pass the object inside the model (e.g. "
            "model.field.net), not a copy, so that the discovered term can replace it."
        )
    return found[0]


def _get(tree: Any, path: tuple) -> Any:
    for key in path:
        if isinstance(key, jax.tree_util.GetAttrKey):
            tree = getattr(tree, key.name)
        elif isinstance(key, jax.tree_util.SequenceKey):
            tree = tree[key.idx]
        elif isinstance(key, jax.tree_util.DictKey):
            tree = tree[key.key]
        else:  # FlattenedIndexKey: only custom pytrees give it
            raise ValueError(f"cannot follow {key!r} into the model to replace the network.")
    return tree
