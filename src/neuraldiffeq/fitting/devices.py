"""Data-parallel fits: `fit(..., devices=...)` places the batch on a mesh and computes the step.

Two ways to compute a step's loss and gradient over a sharded batch:

- **Per device** (`per_device_value_and_grad`), for strategies whose loss is a sum or a mean
  over the examples of the batch (`AbstractStrategy.batch_reduction`): each device computes
  the loss and gradient of its own share with `jax.shard_map`, and one all-reduce adds them up.
  A solver's step loop then runs on each device independently.
- **Partitioned by XLA** (every other strategy): the whole step is one program over sharded
  data, and XLA inserts the reductions. Correct for any loss, but an adaptive solver's step loop
  runs over the whole batch, so its "is every series done?" test is a reduction across devices
  in every iteration: on small problems those per-iteration synchronisations cost more than the
  split saves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .._compat import closure_conversion_ignores_manual_sharding
from .strategies import AbstractStrategy


def replicate(tree, sharding: NamedSharding):
    """`jax.device_put(tree, sharding)`; across processes, from the host (a local device's
    array cannot be sent to another process's devices), PRNG keys through their raw data."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(x):
        if not isinstance(x, jax.Array):
            return jax.device_put(x, sharding)
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = jax.device_put(np.asarray(jax.random.key_data(x)), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.device_put(np.asarray(x), sharding)

    return jax.tree_util.tree_map(put, tree)


def as_mesh(devices) -> Mesh | None:
    """`fit`'s `devices=` as a mesh (None: no mesh, today's single-device placement)."""
    mesh = _mesh_of(devices)
    if jax.process_count() > 1:  # jax.distributed: every process feeds its devices of the mesh
        if mesh is None:
            raise ValueError(
                f"this is a multi-process run (jax.process_count() = {jax.process_count()}); "
                "pass devices= spanning the devices of every process (e.g. "
                "devices=jax.device_count()), each process passing its share of the batch."
            )
        per_process = [0] * jax.process_count()
        for d in mesh.devices.flat:
            per_process[d.process_index] += 1
        if len(set(per_process)) > 1:
            raise ValueError(
                f"devices: the mesh has {per_process} devices of processes 0.."
                f"{len(per_process) - 1}; use the same number on every process (e.g. "
                "devices=jax.device_count()), as each process feeds an equal share of the batch."
            )
    return mesh


def _mesh_of(devices) -> Mesh | None:
    """`devices=` as a 1-D mesh over axis "batch" (validated); a given mesh as it is."""
    if devices is None or isinstance(devices, Mesh):
        return devices
    available = jax.device_count()
    if isinstance(devices, int | np.integer) and not isinstance(devices, bool):
        if devices < 1:
            raise ValueError(f"devices must be a positive number of devices, got {devices}.")
        if devices > available:
            raise ValueError(
                f"devices={devices}, but JAX sees {available} device(s) (jax.device_count() = "
                f"{available}). Ask for at most {available}; on a CPU, JAX can split the "
                f"processor into {devices} virtual devices if XLA_FLAGS="
                f"--xla_force_host_platform_device_count={devices} is set in the environment "
                "before jax is first imported."
            )
        chosen = jax.devices()[: int(devices)]
    elif (
        isinstance(devices, Sequence)
        and len(devices) > 0
        and all(isinstance(d, jax.Device) for d in devices)
    ):
        chosen = list(devices)
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"devices lists a device more than once: {chosen}.")
    else:
        raise ValueError(
            "devices must be None, a number of devices, a non-empty list of jax devices (e.g. "
            f"jax.devices()[:2]) or a jax.sharding.Mesh; got {devices!r}."
        )
    return Mesh(np.array(chosen), ("batch",))


def shard(strategy: AbstractStrategy, prepared, mesh: Mesh):
    """Place `prepared` on `mesh`: batch axes split over all the mesh's axes, the rest whole."""
    n = mesh.size
    mesh_devices = set(mesh.devices.flat)
    split = tuple(mesh.axis_names)  # a 1-D mesh's one axis; several axes act as one
    # jax.distributed: `prepared` is this process's share of the batch, which goes to this
    # process's devices of the mesh; what is not split must be the same on every process.
    processes = jax.process_count() if jax.process_count() > 1 else 1
    local = n // processes
    shares: list[int] = []
    whole: list[np.ndarray] = []

    def place_subtree(axis, subtree):
        def place(x):
            if not isinstance(x, jax.Array | np.ndarray):
                return x  # a Python scalar or an opaque leaf: the compiled step embeds it
            if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1:
                # placed by the caller: used as it is, if it lives on the devices asked for
                if x.sharding.device_set != mesh_devices:
                    raise ValueError(
                        f"{type(strategy).__name__}: the data are already sharded over "
                        f"{len(x.sharding.device_set)} devices that are not the {n} of "
                        "devices=...; place them on the same devices, or pass unplaced data."
                    )
                return x
            if axis is None:
                if processes > 1:  # from the host: a local device's array cannot be sent
                    x = np.asarray(x)
                    whole.append(x)
                return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))
            size = x.shape[axis]
            spec = PartitionSpec(*([None] * axis), split)
            if processes > 1:
                if size % local:
                    raise ValueError(
                        f"{type(strategy).__name__}: this process's share of the batch (axis "
                        f"{axis} of the prepared data) has {size} examples, which do not divide "
                        f"over its {local} devices; give each process a multiple of {local}."
                    )
                shares.append(size)
                return jax.make_array_from_process_local_data(
                    NamedSharding(mesh, spec), np.asarray(x)
                )
            if size % n:
                raise ValueError(
                    f"{type(strategy).__name__}: the batch (axis {axis} of the prepared data) "
                    f"has {size} examples, which do not divide over {n} devices. Use a batch "
                    f"that is a multiple of {n} (drop or add examples), or a device count that "
                    f"divides {size} (devices=...); nothing is padded."
                )
            return jax.device_put(x, NamedSharding(mesh, spec))

        return jax.tree_util.tree_map(place, subtree)

    axes = strategy.batch_axes(prepared)
    placed = jax.tree_util.tree_map(place_subtree, axes, prepared, is_leaf=lambda x: x is None)
    if processes > 1:  # one collective: equal shares, and the same unsplit data everywhere
        from jax.experimental import multihost_utils

        try:
            multihost_utils.assert_equal((shares, whole))
        except AssertionError:
            raise ValueError(
                f"{type(strategy).__name__}: the processes passed different data: each must "
                "pass an equal share of the batch (the same number of examples) and the same "
                "times and other unsplit data. Split the batch with process_index()."
            ) from None
    return placed


def per_device_value_and_grad(
    loss: Callable, reduction: str, batch_axes: Any, mesh: Mesh
) -> tuple[Callable, Callable]:
    """`(value_and_grad, value)` of `loss(params, prepared, key)` computed device by device.

    Each device evaluates `loss` and its gradient on its share of the batch (the axes that
    `batch_axes`, a strategy's `batch_axes(prepared)`, marks; everything else whole), and the
    shares are combined with one `psum` (reduction "sum") or `pmean` ("mean") of the loss and
    the gradient. With equal shares, both equal the whole batch's up to rounding.
    """
    names = tuple(mesh.axis_names)
    combine = jax.lax.psum if reduction == "sum" else jax.lax.pmean

    def specs(prepared):
        def spec(axis):
            return PartitionSpec() if axis is None else PartitionSpec(*([None] * axis), names)

        return jax.tree_util.tree_map(spec, batch_axes, is_leaf=lambda x: x is None)

    def sharded(f):
        def call(params, prepared, key):
            arrays, static = eqx.partition(prepared, eqx.is_array)

            def local(params, arrays, key):
                with closure_conversion_ignores_manual_sharding():  # see _compat
                    return combine(f(params, eqx.combine(arrays, static), key), names)

            return jax.shard_map(
                local,
                mesh=mesh,
                in_specs=(PartitionSpec(), specs(prepared), PartitionSpec()),
                out_specs=PartitionSpec(),
                # diffrax's solve loops build their carry from constants that are not
                # "varying" over the mesh, which the check_vma type system refuses
                check_vma=False,
            )(params, arrays, key)

        return call

    return sharded(jax.value_and_grad(loss)), sharded(loss)
