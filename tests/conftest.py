"""Shared test setup.

Triton's interpreter must be switched on before any `@triton.jit` function is defined, so it is set here, at
collection time, when no CUDA device is present. On a GPU the same kernel tests run compiled.
"""
import os

# The interpreter's tl.dot is a numpy matmul: multi-threaded OpenBLAS on 2 busy cores made each small product up to
# ~400x slower. Must be set before numpy is first imported (torch imports it).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Fixed seeds everywhere; two threads matches the CI machine and keeps timings stable.
torch.manual_seed(0)
