"""Supervised strategies: series in, labels or targets out (`nde.NeuralCDE` and the like).

Data are a pair `(series, targets)`: `series` an `nde.TimeSeries` (missing values through its
mask), a `(ts, ys)` pair or a `(ts, ys, mask)` triple (NaN in `ys` also marks a missing value;
`ts` `(T,)` or `(B, T)`); `targets` one row per series. `prepare` turns the series into the
model's control path once, with `model.control(ts, ys, mask)` (outside the compiled step), and
checks everything before anything compiles; `loss` calls `model(X)` on the batched control of
a minibatch, which returns one output per series (batch axis first). The model needs those two
methods, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._checks import check_batch_fits, check_batch_size, draw_minibatch, eval_shape_or_raise
from ..io.timeseries import TimeSeries
from .losses import mse
from .strategies import AbstractStrategy


def _control(model, series, owner: str):
    if not callable(getattr(model, "control", None)):
        raise ValueError(
            f"{owner} needs a model with a control(ts, ys, mask) method that turns series into "
            f"the model's input, such as nde.NeuralCDE; got {type(model).__name__}."
        )
    if isinstance(series, TimeSeries):
        ts, ys, mask = series.ts, series.ys, series.mask
    elif isinstance(series, tuple | list) and len(series) in (2, 3):
        ts, ys, mask = (*series, None) if len(series) == 2 else series
    else:
        raise ValueError(
            f"{owner}: data must be (series, targets) with series an nde.TimeSeries, a (ts, ys) "
            f"pair or a (ts, ys, mask) triple; got series of type {type(series).__name__}."
        )
    if np.ndim(ys) != 3:
        raise ValueError(
            f"{owner}: ys must be a batch of series, shape (B, T, D) (NaN where missing), got "
            f"shape {np.shape(ys)}; one series is ys[None]."
        )
    return model.control(ts, ys, mask)


def _split(data, owner: str):
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise ValueError(
            f"{owner}: data must be a pair (series, targets), e.g. (nde.TimeSeries(ts, ys), "
            f"labels); got {type(data).__name__}"
            + (f" of length {len(data)}" if isinstance(data, tuple | list) else "")
            + "."
        )
    if not isinstance(data[0], TimeSeries | tuple | list):
        raise ValueError(
            f"{owner}: data must be a pair (series, targets) whose series is an nde.TimeSeries, "
            f"a (ts, ys) pair or a (ts, ys, mask) triple; got {type(data[0]).__name__}. Did you "
            "forget the targets?"
        )
    return data


def _control_axes(control):
    # series are split over the devices; shared times are replicated
    return jax.tree_util.tree_map(
        lambda x: None if (x is control.ts and control.shared_times) else 0, control
    )


def _output_shape(model, control, owner: str):
    out = eval_shape_or_raise(
        model,
        (control[:1],),
        f"{owner}: {type(model).__name__} fails on one series of the data "
        f"(control of {control.channels} channels). Is the model built for this data size?",
    )
    if getattr(out, "shape", (None,))[:1] != (1,):
        raise ValueError(
            f"{owner}: the model must return one output per series, batch axis first; for a "
            f"batch of 1 it returns shape {getattr(out, 'shape', type(out).__name__)}."
        )
    return tuple(out.shape[1:])


class Classification(AbstractStrategy):
    """Cross-entropy of the model's logits against integer class labels, averaged over series.

    Data: `(series, labels)`, labels integers in `[0, n_classes)` with `n_classes` the model's
    output size (the readout of z(T) for `nde.NeuralCDE`). With `batch_size`, each step draws
    that many series without replacement.

    Example:
        >>> import jax, numpy as np, optax, neuraldiffeq as nde
        >>> rng = np.random.default_rng(0)
        >>> ts, ys = np.linspace(0, 1, 8), rng.normal(size=(6, 8, 2))
        >>> model = nde.NeuralCDE(2, 4, 2, width_size=8, depth=1, key=jax.random.key(0))
        >>> result = nde.fit(model, ((ts, ys), [0, 1, 0, 1, 1, 0]), nde.Classification(),
        ...                  optimizer=optax.adam(1e-2), steps=2, progress=False)
        >>> result.losses.shape
        (2,)
    """

    batch_size: int | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        check_batch_size(self.batch_size)

    def prepare(self, model: Any, data: Any) -> tuple[Any, jax.Array]:
        series, labels = _split(data, "Classification")
        labels_np = np.asarray(labels)
        if labels_np.ndim != 1 or not (
            np.issubdtype(labels_np.dtype, np.integer) or labels_np.dtype == bool
        ):
            raise ValueError(
                "labels must be a 1-D array of integer class indices, one per series, got "
                f"dtype {labels_np.dtype} and shape {labels_np.shape}; map classes to 0..K-1."
            )
        control = _control(model, series, "Classification")
        if len(control) != labels_np.shape[0]:
            raise ValueError(
                f"labels has {labels_np.shape[0]} entries for {len(control)} series; give one "
                "label per series."
            )
        check_batch_fits(self.batch_size, len(control), "series")
        shape = _output_shape(model, control, "Classification")
        if len(shape) != 1:
            raise ValueError(
                f"Classification needs one vector of logits per series, the model returns shape "
                f"{shape}; use a model with output='final'."
            )
        n_classes = shape[0]
        if labels_np.min() < 0 or labels_np.max() >= n_classes:
            raise ValueError(
                f"labels must lie in [0, {n_classes}) (the model has {n_classes} outputs), got "
                f"values from {labels_np.min()} to {labels_np.max()}; map classes to 0..K-1 or "
                "build the model with more outputs."
            )
        return control, jnp.asarray(labels_np, jnp.int32)

    @property
    def stochastic(self) -> bool:
        return self.batch_size is not None

    def batch_axes(self, prepared) -> Any:
        return (_control_axes(prepared[0]), 0)

    def loss(self, model, prepared, key) -> jax.Array:
        control, labels = prepared
        if self.batch_size is not None:
            chosen = draw_minibatch(key, len(control), self.batch_size, "Classification")
            control, labels = control[chosen], labels[chosen]
        logits = model(control)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))

    @staticmethod
    def accuracy(model, prepared) -> float:
        """Fraction of series whose largest logit is their label (`prepared` from `prepare`).

        Example:
            >>> import jax, numpy as np, neuraldiffeq as nde
            >>> model = nde.NeuralCDE(1, 2, 2, width_size=4, depth=1, key=jax.random.key(0))
            >>> data = ((np.arange(3.0), np.zeros((4, 3, 1))), [0, 0, 0, 0])
            >>> prepared = nde.Classification().prepare(model, data)
            >>> nde.Classification.accuracy(model, prepared) in (0.0, 1.0)
            True
        """
        control, labels = prepared
        logits = eqx.filter_jit(lambda m, x: m(x))(model, control)
        return float(jnp.mean(jnp.argmax(logits, axis=-1) == labels))


class Regression(AbstractStrategy):
    """`loss_fn(predictions, targets, mask)` of the model's outputs against real targets.

    Data: `(series, targets)`; `targets` has the model's output shape per series: `(B, K)` for
    a readout of z(T), `(B, T, K)` for `output="sequence"` (NaN marks a missing target, left out
    of the loss). Default loss: the mean squared error over the given targets.

    Example:
        >>> import jax, numpy as np, optax, neuraldiffeq as nde
        >>> rng = np.random.default_rng(0)
        >>> ts, ys = np.linspace(0, 1, 8), rng.normal(size=(6, 8, 1))
        >>> model = nde.NeuralCDE(1, 4, 1, width_size=8, depth=1, output="sequence",
        ...                       key=jax.random.key(0))
        >>> targets = np.cumsum(ys, axis=1)  # a running sum, read along the path
        >>> result = nde.fit(model, ((ts, ys), targets), nde.Regression(batch_size=3),
        ...                  optimizer=optax.adam(1e-2), steps=2, progress=False)
        >>> result.losses.shape
        (2,)
    """

    loss_fn: Callable = mse
    batch_size: int | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        check_batch_size(self.batch_size)

    def prepare(self, model: Any, data: Any) -> tuple[Any, jax.Array, jax.Array]:
        series, targets = _split(data, "Regression")
        targets_np = np.asarray(targets, dtype=np.float64)
        control = _control(model, series, "Regression")
        shape = _output_shape(model, control, "Regression")
        if targets_np.shape != (len(control), *shape):
            raise ValueError(
                f"targets must have shape {(len(control), *shape)} (per series, the model's "
                f"output shape {shape}), got {targets_np.shape}."
            )
        if np.any(np.isinf(targets_np)):
            raise ValueError("targets contains infinite values; mark missing targets with NaN.")
        check_batch_fits(self.batch_size, len(control), "series")
        mask = ~np.isnan(targets_np)
        dtype = control.ts.dtype
        return control, jnp.asarray(np.where(mask, targets_np, 0.0), dtype), jnp.asarray(mask)

    @property
    def stochastic(self) -> bool:
        return self.batch_size is not None

    def batch_axes(self, prepared) -> Any:
        return (_control_axes(prepared[0]), 0, 0)

    def loss(self, model, prepared, key) -> jax.Array:
        control, targets, mask = prepared
        if self.batch_size is not None:
            chosen = draw_minibatch(key, len(control), self.batch_size, "Regression")
            control, targets, mask = control[chosen], targets[chosen], mask[chosen]
        return self.loss_fn(model(control), targets, mask)
