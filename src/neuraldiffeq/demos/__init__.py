"""`neuraldiffeq demo NAME`: each demo is a module with `add_arguments(parser)` and `run(args)`.

To add a demo, write the module and register it here with its one-line summary (the CLI lists
the demos from this table without importing them). Demos write their outputs through
`neuraldiffeq.io.outputs` (model first, then metrics, then plots) and share nothing with
`neuraldiffeq.commands`: what both need lives in the library (`neuraldiffeq.fitting.series`).
"""

#: name -> (module, one-line summary)
DEMOS: dict[str, tuple[str, str]] = {
    "spiral": (
        "neuraldiffeq.demos.spiral",
        "Fit a neural ODE to the DiffEqFlux spiral (Adam, then L-BFGS), as in the tutorial.",
    ),
    "lynx-hare": (
        "neuraldiffeq.demos.lynx_hare",
        "Fit the Hudson's Bay lynx-hare series (1900-1920): a neural ODE and a universal ODE.",
    ),
    "ffjord": (
        "neuraldiffeq.demos.ffjord",
        "Train FFJORD on a 2-D toy density; plot data, learned density and samples.",
    ),
    "sde": (
        "neuraldiffeq.demos.sde",
        "DiffEqFlux's neural SDE tutorial: fit the mean and variance of paths of a noisy spiral.",
    ),
    "dde": (
        "neuraldiffeq.demos.dde",
        "Fit a neural DDE to the delayed logistic equation; a neural ODE for contrast.",
    ),
    "stiff": (
        "neuraldiffeq.demos.stiff",
        "Robertson's stiff kinetics: tsit5 cannot fit the three rates, kvaerno5 recovers them.",
    ),
    "stiff-network": (
        "neuraldiffeq.demos.stiff_network",
        "A 120-species stiff network, one rate law a network: BDF vs dense kvaerno5, per gradient.",
    ),
    "dae": (
        "neuraldiffeq.demos.dae",
        "Robertson's kinetics as a mass-matrix DAE: NeuralODEMM fits the three rates.",
    ),
    "spheres": (
        "neuraldiffeq.demos.spheres",
        "Concentric spheres: a plain neural ODE cannot separate them, an augmented one can.",
    ),
    "hnn": (
        "neuraldiffeq.demos.hnn",
        "Hamiltonian NN vs plain neural ODE on a noisy pendulum and mass-spring: energy drift.",
    ),
    "cde": (
        "neuraldiffeq.demos.cde",
        "torchcde's spirals: a neural CDE tells their direction from irregular, gappy samples.",
    ),
    "latent-sde": (
        "neuraldiffeq.demos.latent_sde",
        "A latent SDE on torchsde's stochastic Lorenz data: posterior and prior samples.",
    ),
    "bouncing-ball": (
        "neuraldiffeq.demos.bouncing_ball",
        "A bouncing ball: recover gravity and restitution from noisy heights, through the events.",
    ),
    "dosing": (
        "neuraldiffeq.demos.dosing",
        "Repeated oral doses, six patients: absorption rate and a neural elimination curve.",
    ),
    "ffjord-digits": (
        "neuraldiffeq.demos.ffjord_digits",
        "FFJORD image generation on the 8x8 digits: conv vs MLP flow vs Gaussian, in bits/dim.",
    ),
    "discover": (
        "neuraldiffeq.demos.discover",
        "Lotka-Volterra missing physics: a UDE's network becomes a formula (SINDy) and refits.",
    ),
    "bayes": (
        "neuraldiffeq.demos.bayes",
        "NUTS posterior of the four Lotka-Volterra rates from 30 noisy points: bands, marginals.",
    ),
}
