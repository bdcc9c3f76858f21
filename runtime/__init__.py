"""larosa.runtime: load a LaRoSA GGUF and generate with the C library (see model.py)."""
import signal as _signal

# numpy starts a BLAS worker thread at import. A Ctrl-C delivered to that thread would not wake the
# main thread out of a blocking read (the chat prompt), so the thread is started with SIGINT
# blocked: it inherits the mask, the main thread gets its own back.
if hasattr(_signal, "pthread_sigmask"):
    _old = _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT})
    try:
        import numpy  # noqa: F401
    finally:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, _old)
