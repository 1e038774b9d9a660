"""Compilation in one place: XLA options, JAX's persistent cache, and the exported-step cache.

The rule every part follows: a compiled program is reused only when it is provably the program
that tracing would give now (see `compilation.cacheable` and `compilation.exported`).
"""

from .options import compiler_options
from .persistent import default_cache_dir, enable_compilation_cache

__all__ = ["compiler_options", "default_cache_dir", "enable_compilation_cache"]
