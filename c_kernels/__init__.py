"""larosa: LaRoSA activation-sparse decoding for GGUF models on CPUs.

This directory (c_kernels/) is the top package: it holds the C library, built by cffi into
larosa._kernels. The Python parts live in larosa.converter, larosa.runtime and larosa.tools.
"""
__version__ = "0.1.0"
