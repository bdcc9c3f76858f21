"""larosa-server's request bodies and errors: OpenAI's field names, llama-server's sampler extras,
larosa's sparsity; an OpenAI-style error for every refusal (runtime/server.py serves them)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import LarosaError
from .generate import Sampling

_SAMPLING = Sampling()


# -- errors ------------------------------------------------------------------------------------
class ApiError(Exception):
    """An error answered as OpenAI's {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else
                             "unavailable_error" if status == 503 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Cancelled(LarosaError):
    """The request's client went away (or the server is stopping): its generation stops."""


# -- request bodies (OpenAI's field names; llama-server's sampler extras; larosa's sparsity) ------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = None
    max_tokens: int | None = None
    temperature: float = _SAMPLING.temperature   # the sampler's own defaults (generate.Sampling)
    top_p: float = _SAMPLING.top_p
    top_k: int = _SAMPLING.top_k
    min_p: float = _SAMPLING.min_p
    repeat_penalty: float = _SAMPLING.repeat_penalty
    seed: int | None = None
    stop: str | list[str] | None = Field(None, max_length=16)
    stream: bool = False
    stream_options: "StreamOptions | None" = None
    sparsity: float | None = None           # larosa: this request's model sparsity
    # OpenAI fields accepted at their neutral value only (refused otherwise, see _unsupported)
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def sampling(self) -> dict[str, Any]:
        return dict(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                    repeat_penalty=self.repeat_penalty, seed=self.seed)

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def _unsupported(self) -> list[tuple[str, bool]]:
        return [("n", self.n != 1), ("presence_penalty", self.presence_penalty != 0),
                ("frequency_penalty", self.frequency_penalty != 0), ("logit_bias", bool(self.logit_bias))]

    def check(self) -> None:
        for name, used in self._unsupported():
            if used:
                raise ApiError(400, f"{name} = {getattr(self, name)!r} is not supported by larosa-server "
                                    "(leave it out)", param=name, code="unsupported_parameter")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class ChatBody(_Body):
    messages: list[dict[str, Any]] = Field(min_length=1)
    temperature: float = 0.2            # create_chat_completion's defaults: same request, same answer
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None

    def _unsupported(self) -> list[tuple[str, bool]]:
        text_only = self.response_format in (None, {"type": "text"})
        return super()._unsupported() + [
            ("logprobs", bool(self.logprobs)), ("top_logprobs", self.top_logprobs is not None),
            ("response_format", not text_only), ("tools", bool(self.tools)),
            ("tool_choice", self.tool_choice not in (None, "none")),
            ("parallel_tool_calls", self.parallel_tool_calls is not None)]

    def check(self) -> None:
        super().check()
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ApiError(400, "give max_tokens or max_completion_tokens, not both", param="max_tokens")
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens


class CompletionBody(_Body):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = 16          # OpenAI's and llama-cpp-python's default
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None
    logprobs: int | None = None

    def _unsupported(self) -> list[tuple[str, bool]]:
        return super()._unsupported() + [("echo", self.echo), ("suffix", self.suffix is not None),
                                         ("best_of", self.best_of not in (None, 1)),
                                         ("logprobs", self.logprobs is not None)]


_Body.model_rebuild()
ChatBody.model_rebuild()
CompletionBody.model_rebuild()


def _validation_error(e: ValidationError) -> ApiError:
    err = e.errors()[0]
    loc = [str(x) for x in err["loc"]]
    if err["type"] == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON: {err['msg']}")
    if not loc:
        return ApiError(400, "the request body must be a JSON object")
    if err["type"] == "extra_forbidden":
        return ApiError(400, f"unrecognized request argument: {loc[0]}", param=loc[0])
    # a union's error names the member type tried (prompt.str): keep the field path only
    path = ".".join(x for x in loc if x not in ("str", "int", "float", "bool") and "[" not in x)
    return ApiError(400, f"{path or loc[0]}: {err['msg']}", param=loc[0])
