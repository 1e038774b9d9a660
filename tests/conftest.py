import os

import matplotlib

matplotlib.use("Agg")
os.environ.setdefault("NEURALDIFFEQ_CACHE_DIR", "")  # tests stay hermetic: no persistent XLA cache
