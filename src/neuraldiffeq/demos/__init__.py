"""`neuraldiffeq demo NAME`: each demo is a module with `add_arguments(parser)` and `run(args)`.

To add a demo, write the module and register it here; the CLI picks it up.
"""

DEMOS: dict[str, str] = {
    "spiral": "neuraldiffeq.demos.spiral",
    "lynx-hare": "neuraldiffeq.demos.lynx_hare",
    "ffjord": "neuraldiffeq.demos.ffjord",
    "sde": "neuraldiffeq.demos.sde",
    "dde": "neuraldiffeq.demos.dde",
    "spheres": "neuraldiffeq.demos.spheres",
}
