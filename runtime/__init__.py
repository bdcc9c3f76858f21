"""larosa.runtime: load a LaRoSA GGUF and generate with the C library.

    from larosa.runtime import Model, create_chat_completion
    m = Model("model.larosa-q8_0.gguf", sparsity=0.4, n_threads=4)
    for piece in m.generate("Once upon a time", max_tokens=32, seed=1):
        print(piece, end="")
    r = create_chat_completion(m, [{"role": "user", "content": "Hi"}], max_tokens=64)

A Model is not safe to share between threads; one Model per thread is (each has its own cache).
"""
import signal as _signal
from typing import TYPE_CHECKING

# numpy starts a BLAS worker thread at import. A Ctrl-C delivered to that thread would not wake the
# main thread out of a blocking read (the chat prompt), so the thread is started with SIGINT
# blocked: it inherits the mask, the main thread gets its own back.
if hasattr(_signal, "pthread_sigmask"):
    _old = _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT})
    try:
        import numpy  # noqa: F401
    finally:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, _old)

# name -> submodule; imported on first use, so that `larosa.runtime.errors` alone does not need the
# C library
_API = {"Model": "model", "Timings": "model", "ContextError": "model", "NumericsError": "model",
        "Sampling": "generate", "LarosaError": "errors", "FormatError": "errors",
        "UnsupportedError": "errors", "ResourceError": "errors",
        "create_chat_completion": "chat", "format_chat": "chat", "make_setup": "chat",
        "ChatTemplate": "chat", "ChatTemplateError": "chat", "TemplateSecurityError": "chat"}
__all__ = sorted(_API)

if TYPE_CHECKING:
    from .chat import (ChatTemplate, ChatTemplateError, TemplateSecurityError, create_chat_completion,
                       format_chat, make_setup)
    from .errors import FormatError, LarosaError, ResourceError, UnsupportedError
    from .generate import Sampling
    from .model import ContextError, Model, NumericsError, Timings


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
