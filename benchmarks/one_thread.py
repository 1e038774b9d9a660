"""`--threads 1` for the torch-vs-JAX benchmarks: both sides on one thread, a fair pair on a
machine shared with other jobs (torch.set_num_threads(1), XLA without its multi-threaded Eigen).

    parser = argparse.ArgumentParser(); add_threads_option(parser)
    args = parser.parse_args(); apply_threads(args, parser)  # before JAX's first computation
"""

from __future__ import annotations

import argparse
import os


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="1: both sides on one thread (torch.set_num_threads(1), XLA without its "
        "multi-threaded Eigen): a fair pair on a machine shared with other jobs",
    )


def apply_threads(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.threads is None:
        return
    if args.threads != 1:
        parser.error("--threads takes 1 (or leave it out for each library's default)")
    import torch

    torch.set_num_threads(1)
    # before JAX's backend starts (its first computation)
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
    os.environ["XLA_FLAGS"] = flags.strip()
