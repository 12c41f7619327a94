"""Fused Triton kernels; each has a plain PyTorch reference elsewhere in relic_fast."""
