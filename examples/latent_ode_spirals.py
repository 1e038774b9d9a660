"""A latent ODE on irregularly sampled spirals: train, then interpolate and extrapolate.

Each of 1000 noisy spirals (half clockwise) is observed at 30 random times out of 100. The latent
ODE (the paper's sizes) is trained with `nde.fit` and the `nde.ELBO` strategy, then asked to
reconstruct held-out spirals on the whole window and 50 points beyond it, with posterior
samples for uncertainty. The full comparison with an RNN baseline is
`benchmarks/latent_spirals.py`.

    python examples/latent_ode_spirals.py --steps 1000
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

import neuraldiffeq as nde


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--n-obs", type=int, default=30)
    args = parser.parse_args()
    k_train, k_test, k_model, k_sample = jax.random.split(jax.random.key(0), 4)
    train = nde.datasets.spirals(1000, 100, 0.3, k_train, n_obs=args.n_obs)
    test = nde.datasets.spirals(100, 100, 0.3, k_test, n_obs=args.n_obs)

    model = nde.LatentODE(latent_dim=4, obs_dim=2, encoder="rnn", key=k_model)
    optimizer = optax.adam(optax.cosine_decay_schedule(1e-2, args.steps, alpha=0.1))
    result = nde.fit(
        model,
        train.data,
        nde.ELBO(batch_size=100),
        optimizer=optimizer,
        steps=args.steps,
        steps_per_call=20,
    )
    model = result.model

    ts = test.data.ts
    ts_new = jnp.concatenate([ts, jnp.asarray(test.future_ts[:50], ts.dtype)])
    mean = model.predict(ts, test.data.ys, ts_new, mask=test.data.mask)[0]  # posterior mean
    samples = model.predict(ts, test.data.ys, ts_new, k_sample, mask=test.data.mask, n_samples=20)
    interp = jnp.sqrt(jnp.mean((mean[:, :100] - test.clean) ** 2))
    extrap = jnp.sqrt(jnp.mean((mean[:, 100:] - test.future[:, :50]) ** 2))
    spread = jnp.std(samples, axis=0).mean()
    print(
        f"RMSE vs the noise-free spirals: window {float(interp):.4f}, next 50 points "
        f"{float(extrap):.4f}; mean posterior-sample spread {float(spread):.4f}"
    )


if __name__ == "__main__":
    main()
