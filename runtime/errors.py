"""Exceptions raised for bad input. Every CLI turns them into one line on stderr."""


class LarosaError(Exception):
    """Base class: a problem with the user's input, reported without a traceback."""


class FormatError(LarosaError):
    """The file is not a well-formed GGUF, or breaks what FORMAT.md requires."""


class UnsupportedError(LarosaError):
    """A well-formed file this version cannot handle (architecture, tensor type, feature)."""


class ResourceError(LarosaError):
    """What the file asks for (a KV cache of layers x context x width) does not fit this machine."""
