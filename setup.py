# The C library is built by cffi at install time (c_kernels/build.py); everything else is in
# pyproject.toml.
from setuptools import setup

setup(cffi_modules=["c_kernels/build.py:ffibuilder"])
