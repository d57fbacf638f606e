"""Reranker models: registry, templates, checkpoint formats, scoring model and the `Reranker`."""

import os

# mamba_ssm's Triton kernels (SSD scan, fused norms) autotune their tile sizes in every new process: seconds per
# process, and in bf16 two processes that pick different tiles round differently, so a run split over torchrun ranks
# would not reproduce a 1-process run. Cached on disk (under TRITON_CACHE_DIR), the first process's choice is reused by
# every later one. Triton reads the setting when a kernel module is imported, so it is set before anything here (or
# transformers, which imports mamba_ssm for its Mamba-2 fast path) can import mamba_ssm; a user's own setting wins.
os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")
