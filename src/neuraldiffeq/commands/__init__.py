"""CLI subcommands other than `demo`: each module has `add_arguments(parser)` and `run(args)`."""
