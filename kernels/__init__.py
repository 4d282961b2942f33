"""CUDA kernel sources, installed as upbench.kernels (package data)."""
