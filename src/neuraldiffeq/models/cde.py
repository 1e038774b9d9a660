"""Neural controlled differential equations (Kidger et al. 2020): dz = f(t, z)·dX(t).

The observations are interpolated into a continuous path X (`nde.interpolation_coeffs`, once,
outside compiled code); the hidden state z starts from a linear map of X(t0) and is driven by X
through the field f, a network returning a `(hidden, channels)` matrix that multiplies dX/dt.
A readout maps z(T) (classification) or every z(t_k) (sequence to sequence) to the outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_sizes, count_params, strong_floats
from ..solve.config import HasSolveConfig, SolveConfig, build_config, on_failure, shortcuts
from ..solve.interpolation import KINDS, Interpolation, interpolation_coeffs
from ..solve.sensitivity import AbstractSensitivity, Quadrature, resolve_sensitivity
from .ode import ODE_DEFAULTS

OUTPUTS = ("final", "sequence")


class CDEField(eqx.Module):
    """The default field: an MLP hidden → hidden·channels with a final tanh, as a matrix.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from neuraldiffeq.models.cde import CDEField
        >>> CDEField(4, 3, 16, 1, key=jax.random.key(0))(0.0, jnp.ones(4), None).shape
        (4, 3)
    """

    mlp: eqx.nn.MLP
    hidden_size: int = eqx.field(static=True)
    channels: int = eqx.field(static=True)

    def __init__(self, hidden_size: int, channels: int, width_size: int, depth: int, *, key):
        self.mlp = eqx.nn.MLP(
            hidden_size,
            hidden_size * channels,
            width_size,
            depth,
            activation=jax.nn.softplus,
            final_activation=jnp.tanh,  # bounded field: the CDE cannot blow up (Kidger et al.)
            key=key,
        )
        self.hidden_size, self.channels = hidden_size, channels

    def __call__(self, t, z, args=None):
        return self.mlp(z).reshape(self.hidden_size, self.channels)


class NeuralCDE(HasSolveConfig):
    """A neural CDE dz = field(t, z, args)·dX(t), read out at the end or along the path.

    `model.control(ts, ys, mask)` turns observations into the path X (its settings are the
    model's: `interpolation`, `time_channel`, `observed_channels`); `model(X)` solves from
    z(t0) = initial(X(t0)) and returns `readout(z(T))`, shape `(out_size,)` (`output="final"`),
    or `readout(z(t_k))` at each knot t_k of X, shape `(T, out_size)` (`output="sequence"`).
    A batched `X` gives a leading batch axis: series with shared times are solved as one system
    (one step size for the batch, as torchcde), series with their own times one by one. A
    failed solve returns `inf`. The equation is solved as the ODE dz/dt = f(t, z)·dX/dt
    (diffrax's `ControlTerm(...).to_ode()`), so every solver and every sensitivity applies; a
    linear path passes its knots to adaptive step control as `jump_ts`.

    Arguments:
        data_size: D, the number of data channels.
        hidden_size: size of z.
        out_size: outputs of the readout (classes, for classification).
        width_size, depth: the default field's MLP.
        interpolation: `"cubic"`, `"hermite"` or `"linear"` (see `nde.interpolation_coeffs`).
        time_channel, observed_channels: the extra channels of X; `channels` = time_channel +
            D + D·observed_channels.
        output: `"final"` or `"sequence"`.
        field, initial, readout: replace the default networks (`field(t, z, args)` →
            `(hidden_size, channels)`; `initial(x0)` → `(hidden_size,)`; `readout(z)`).
        solver, rtol, atol, dt0, max_steps, sensitivity, config: the solve settings (as
            `nde.NeuralODE`; defaults `"tsit5"`, rtol 1e-3, atol 1e-6, max_steps 4096,
            `"auto"`: `nde.Forward()` when the field has at most 100 parameters, else
            `nde.Direct()`). Every sensitivity is accepted.
        key: initialises the default networks.

    Example:
        >>> import jax, numpy as np, neuraldiffeq as nde
        >>> model = nde.NeuralCDE(2, 8, 3, width_size=16, depth=1, key=jax.random.key(0))
        >>> ts = np.linspace(0.0, 1.0, 10)
        >>> X = model.control(ts, np.random.default_rng(0).normal(size=(4, 10, 2)))
        >>> model(X).shape  # logits of 4 series over 3 classes
        (4, 3)
    """

    field: Callable
    initial: Callable
    readout: Callable
    config: SolveConfig
    data_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)
    interpolation: str = eqx.field(static=True)
    time_channel: bool = eqx.field(static=True)
    observed_channels: bool = eqx.field(static=True)
    output: str = eqx.field(static=True)

    def __init__(
        self,
        data_size: int,
        hidden_size: int,
        out_size: int,
        *,
        width_size: int = 64,
        depth: int = 2,
        interpolation: str = "cubic",
        time_channel: bool = True,
        observed_channels: bool = False,
        output: str = "final",
        field: Callable | None = None,
        initial: Callable | None = None,
        readout: Callable | None = None,
        solver: str | diffrax.AbstractSolver | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        dt0: float | None = None,
        max_steps: int | None = None,
        sensitivity: AbstractSensitivity | str | None = None,
        config: SolveConfig | None = None,
        key: jax.Array | None = None,
    ):
        check_sizes(
            data_size=data_size, hidden_size=hidden_size, out_size=out_size, width_size=width_size
        )
        check_sizes(0, depth=depth)
        if interpolation not in KINDS:
            raise ValueError(
                f"interpolation must be one of {', '.join(map(repr, KINDS))}, got "
                f"{interpolation!r}."
            )
        if output not in OUTPUTS:
            raise ValueError(
                f"output must be 'final' (readout of z(T)) or 'sequence' (readout of z at every "
                f"time), got {output!r}."
            )
        for name, value in (
            ("time_channel", time_channel),
            ("observed_channels", observed_channels),
        ):
            if not isinstance(value, bool | np.bool_):
                raise ValueError(f"{name} must be True or False, got {value!r}.")
        for name, value in (("field", field), ("initial", initial), ("readout", readout)):
            if value is not None and not callable(value):
                raise ValueError(f"{name} must be callable or None, got {type(value).__name__}.")
        channels = int(time_channel) + data_size * (1 + int(observed_channels))
        if any(v is None for v in (field, initial, readout)) and key is None:
            raise ValueError(
                "key must be a jax.random.key to initialise the default networks (or pass "
                "field=, initial= and readout= all three)."
            )
        if isinstance(solver, str) and solver.lower() == "auto":
            raise ValueError(
                "NeuralCDE: solver='auto' estimates stiffness from an ODE's vector field, but a "
                "CDE's field depends on its control path; pass a solver by name, e.g. 'tsit5'."
            )
        keys = jax.random.split(key, 3) if key is not None else [None] * 3
        self.field = (
            CDEField(hidden_size, channels, width_size, depth, key=keys[0])
            if (field is None)
            else field
        )
        self.initial = (
            eqx.nn.Linear(channels, hidden_size, key=keys[1]) if (initial is None) else initial
        )
        self.readout = (
            eqx.nn.Linear(hidden_size, out_size, key=keys[2]) if (readout is None) else readout
        )
        self.data_size, self.hidden_size = int(data_size), int(hidden_size)
        self.interpolation, self.output = interpolation, output
        self.time_channel, self.observed_channels = bool(time_channel), bool(observed_channels)
        given = shortcuts(locals())
        config = build_config("NeuralCDE", config, given, ODE_DEFAULTS)
        n_params = count_params(self.field)
        self.config = config.for_model(
            "NeuralCDE", None, lambda: resolve_sensitivity("auto", 0, n_params)
        )

    # -- public -----------------------------------------------------------------------------

    @property
    def channels(self) -> int:
        """Channels of the control path X (time + data + observation counts)."""
        return int(self.time_channel) + self.data_size * (1 + int(self.observed_channels))

    def control(self, ts, ys, mask=None) -> Interpolation:
        """The control path of observations `ys` at times `ts` with this model's settings.

        Runs NumPy (call it outside `jax.jit`, once; `nde.Classification.prepare` does). `ys`
        `(T, D)` or `(B, T, D)`, NaN (or `mask` False) where missing; `ts` `(T,)` or `(B, T)`.

        Example:
            >>> import jax, numpy as np, neuraldiffeq as nde
            >>> model = nde.NeuralCDE(1, 4, 2, observed_channels=True, key=jax.random.key(0))
            >>> model.control(np.arange(3.0), np.array([[1.0], [np.nan], [2.0]])).channels
            3
        """
        d = np.shape(ys)[-1] if np.ndim(ys) in (2, 3) else None
        if d is not None and d != self.data_size:
            raise ValueError(
                f"ys has {d} channels (shape {np.shape(ys)}), the model was built for "
                f"data_size={self.data_size}."
            )
        return interpolation_coeffs(
            ts,
            ys,
            mask,
            kind=self.interpolation,
            time_channel=self.time_channel,
            observed_channels=self.observed_channels,
        )

    def __call__(self, control: Interpolation, args: Any = None) -> jax.Array:
        zs = self.hidden(control, args)  # (*batch, S, hidden)
        lead = zs.shape[:-1]
        out = jax.vmap(self.readout)(zs.reshape(-1, zs.shape[-1]))
        out = out.reshape(*lead, *out.shape[1:])
        return out[..., -1, :] if self.output == "final" else out

    def hidden(self, control: Interpolation, args: Any = None) -> jax.Array:
        """The hidden state: z(T) as `(..., 1, hidden)` (`output="final"`), or z at every knot
        of the control, `(..., T, hidden)`, with the control's batch axis first; `inf` where
        the solve failed.

        Example:
            >>> import jax, numpy as np, neuraldiffeq as nde
            >>> model = nde.NeuralCDE(1, 4, 2, output="sequence", key=jax.random.key(0))
            >>> X = model.control(np.linspace(0, 1, 6), np.zeros((3, 6, 1)))
            >>> model.hidden(X).shape
            (3, 6, 4)
        """
        self._check(control)
        zs, result, stats = self._hidden(control, args)
        return on_failure(result, zs, config=self.config, model="NeuralCDE", stats=stats)

    def _hidden(self, control: Interpolation, args: Any):
        # (hidden states, result codes, step counts); a batch with its own times per series is
        # solved per series, and its codes checked together (one error for the batch eagerly)
        if not control.shared_times:
            return jax.vmap(lambda x: self._hidden(x, args))(control)
        sol = self.solve(control, args)
        zs = sol.ys  # (S, *batch, hidden)
        if self.output == "final" and zs.shape[0] != 1:
            zs = zs[-1:]
        return jnp.moveaxis(zs, 0, -2), sol.result, sol.stats

    def solve(
        self,
        control: Interpolation,
        args: Any = None,
        *,
        throw: bool = False,
        saveat: diffrax.SaveAt | None = None,
    ) -> diffrax.Solution:
        """The diffrax `Solution` of the hidden state (by default saved at T, or at every knot
        for `output="sequence"` or a `Quadrature` sensitivity), time axis first.

        Never raises for a failed solve (unless `throw=True`), and works under `jax.jit`: where
        the model itself would raise `nde.SolveError` or return `inf`, `sol.result` says why
        (e.g. `diffrax.RESULTS.max_steps_reached`) and `sol.stats` counts the steps. `throw=True`
        raises `nde.SolveError` instead (diffrax's run-time error inside compiled code).

        A batch with shared times is solved as one system of shape `(B, hidden)` (one step
        size for all series, as torchcde does), which is much faster than a solve per series.

        Example:
            >>> import jax, numpy as np, neuraldiffeq as nde
            >>> model = nde.NeuralCDE(1, 4, 2, key=jax.random.key(0))
            >>> sol = model.solve(model.control(np.linspace(0, 1, 6), np.zeros((6, 1))))
            >>> sol.ys.shape, int(sol.stats["num_steps"]) > 0
            ((1, 4), True)
        """
        self._check(control)
        if not control.shared_times:
            raise ValueError(
                f"control holds {control.batch_shape} series with their own times; solve one "
                "series (X[i]) or jax.vmap over the batch (model(X) does that)."
            )
        ts = control.ts
        x0 = control.evaluate(ts[0])
        batched = bool(control.batch_shape)
        z0 = jax.vmap(self.initial)(x0) if batched else self.initial(x0)
        if saveat is None:
            # Quadrature integrates the gradient between saved times with fixed nodes: saving at
            # every knot keeps each integral on one smooth piece of the control
            every = self.output == "sequence" or isinstance(self.sensitivity, Quadrature)
            saveat = diffrax.SaveAt(ts=ts) if every else diffrax.SaveAt(t1=True)
        # dz/dt = f(t, z)·dX/dt: diffrax's ControlTerm(f, X).to_ode(), with the contraction
        # written out so that a batch of series is one system
        term = diffrax.ODETerm(_Driven(self.field, control, batched))
        return self.config.diffeqsolve(
            term,
            ts[0],
            ts[-1],
            z0,
            args=strong_floats(args),
            saveat=saveat,
            throw=throw,
            jump_ts=control.jump_ts,
            model="NeuralCDE",
        )

    def _check(self, control) -> None:
        if not isinstance(control, Interpolation):
            raise ValueError(
                "control must be an nde.Interpolation (from model.control(ts, ys) or "
                f"nde.interpolation_coeffs), got {type(control).__name__}."
            )
        if control.ts.ndim == 0:
            raise ValueError(
                "control's times were vmapped away: a batch with shared times (ts of shape "
                "(T,)) is one system; call model(X) on the whole batch instead of jax.vmap."
            )
        if control.channels != self.channels:
            raise ValueError(
                f"control has {control.channels} channels, the model expects {self.channels} "
                f"(time_channel={self.time_channel}, data_size={self.data_size}, "
                f"observed_channels={self.observed_channels}); build it with model.control."
            )


class _Driven(eqx.Module):
    """dz/dt = field(t, z, args) · dX/dt, for one series or a batch (leading axis) of them."""

    field: Callable
    control: Interpolation
    batched: bool = eqx.field(static=True)

    def __call__(self, t, z, args):
        if self.batched:
            matrix = jax.vmap(self.field, in_axes=(None, 0, None))(t, z, args)
        else:
            matrix = self.field(t, z, args)
        return jnp.einsum("...hc,...c->...h", matrix, self.control.derivative(t))
