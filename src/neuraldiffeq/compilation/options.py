"""XLA options for programs that push one wide batch through a model (flows' log-likelihoods).

Why: on the CPU, jaxlib 0.10 hands XLA fusions to the YNNPACK library, whose reductions over a
leading axis are slow. The backward pass of any batched model is full of them (the gradient of
every weight shared across a batch is such a sum), so a FFJORD training step on a wide batch
spends most of its time there. Letting YNNPACK handle single matrix products only, and XLA's own
code generator everything else, makes such steps markedly faster (measured in
`benchmarks/RESULTS.md`, "FFJORD speed"). The price is more compile time (XLA generates the code
YNNPACK would have run), which is not worth paying for small unbatched problems, so the options
are opt-in: `nde.MaximumLikelihood` asks `fit` for them (a strategy's `compiler_options`), and so
does `batched_log_prob`. Elsewhere (GPU, or a jaxlib that does not know the option) no options
are passed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
_YNN_DOTS_ONLY = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"


@functools.cache
def compiler_options() -> dict[str, str] | None:
    """The XLA options neuraldiffeq compiles with on this backend (None: XLA's defaults).

    Pass them to your own `jax.jit` for a training step on a wide batch (what `nde.fit` does for
    `nde.MaximumLikelihood`).

    Example:
        >>> import jax, jax.numpy as jnp, neuraldiffeq as nde
        >>> f = jax.jit(lambda x: jnp.sum(x, 0), compiler_options=nde.compiler_options())
        >>> f(jnp.ones((3, 2))).tolist()
        [3.0, 3.0]
    """
    if jax.default_backend() != "cpu":
        return None
    options = {_YNN_OPTION: _YNN_DOTS_ONLY}
    try:  # an unknown option (another jaxlib) fails at compile time: then use the defaults
        jax.jit(lambda x: jnp.sum(x, 0), compiler_options=options)(jnp.ones((2, 2)))
    except Exception:  # noqa: BLE001 — any refusal means "not supported here"
        return None
    return options
