"""Chat on top of Model: the model's own chat template, rendered in a jinja2 sandbox, and an
OpenAI-shaped create_chat_completion (as llama-cpp-python offers it).

    m = Model("smollm2.larosa-q8_0.gguf")
    r = create_chat_completion(m, [{"role": "user", "content": "Hi"}], max_tokens=64, seed=1)
    print(r["choices"][0]["message"]["content"])

The template comes from the file (`tokenizer.chat_template`, copied from the source GGUF). It is
untrusted input: it renders in jinja2's ImmutableSandboxedEnvironment, tightened (sandbox.py) so that
reaching for a private attribute fails at once and a render has a budget of size, steps and time.
"""
from __future__ import annotations

import codecs
import json
import time
import uuid
import warnings
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterator, Mapping, Sequence

from jinja2 import TemplateError
from jinja2.exceptions import SecurityError
from jinja2.ext import loopcontrols

from .errors import LarosaError
from .generate import Sampling
from .gguf_file import Metadata
from .model import ContextError, Model
from .sandbox import BoundedSandbox

# The de-facto default (OpenAI's ChatML, used by SmolLM2, Qwen...), for files without a template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_END = "<|im_end|>"


class ChatTemplateError(LarosaError):
    """The chat template is malformed, or failed (or refused the conversation) while rendering."""


class TemplateSecurityError(ChatTemplateError):
    """The chat template tried something the sandbox forbids (private attributes, huge values, too
    much work: see sandbox.py)."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(f"the chat template refused the conversation: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False,
            separators: Any = None, sort_keys: bool = False) -> str:
    # jinja's own tojson escapes <, >, & for HTML; chat templates (as in transformers) want plain JSON
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii,
                      separators=tuple(separators) if separators else None, sort_keys=sort_keys)


class ChatTemplate:
    """A compiled chat template. Variables: messages, add_generation_prompt, bos_token, eos_token,
    tools and documents (None unless given), raise_exception(msg), strftime_now(fmt)."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "", is_fallback: bool = False):
        self.source, self.bos_token, self.eos_token = source, bos_token, eos_token
        self.is_fallback = is_fallback
        self._env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols],
                                   filters={"tojson": _tojson},
                                   globals={"raise_exception": _raise_exception, "strftime_now": _strftime_now})
        try:
            self._template = self._env.from_string(source)
        except TemplateError as e:
            raise ChatTemplateError(f"malformed chat template: {e}") from None

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
               **variables: Any) -> str:
        """The prompt text of a conversation; extra variables (tools=..., date_string=...) pass through."""
        ctx = {"tools": None, "documents": None, **variables}
        ctx.update(messages=_check_messages(messages), add_generation_prompt=add_generation_prompt,
                   bos_token=self.bos_token, eos_token=self.eos_token)
        try:
            return self._env.render(self._template, ctx)
        except ChatTemplateError:
            raise
        except SecurityError as e:
            raise TemplateSecurityError(f"chat template blocked by the sandbox: {e}") from None
        except (TemplateError, RecursionError, ArithmeticError, TypeError, ValueError,
                LookupError, AttributeError, MemoryError) as e:
            raise ChatTemplateError(f"chat template failed: {type(e).__name__}: {e}") from None


def _check_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Plain dict copies (the template cannot change the caller's), content as a string."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise ValueError(f"messages[{i}] must be a dict with a string 'role'")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content
                              if isinstance(p, Mapping) and p.get("type") == "text")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}]['content'] must be a string")
        out.append({**m, "content": content})
    return out


@dataclass
class ChatSetup:
    """What chatting with one model needs: its template and where its turns end."""
    template: ChatTemplate
    stop_ids: frozenset[int] = frozenset()      # end-of-turn tokens besides the vocabulary's EOG
    stop_strings: tuple[str, ...] = ()          # end-of-turn text when it is not a single token
    notes: list[str] = field(default_factory=list)


_setups: "weakref.WeakKeyDictionary[Model, ChatSetup]" = weakref.WeakKeyDictionary()


def chat_setup(model: Model) -> ChatSetup:
    """The model's chat template (or the ChatML fallback, noted in .notes), cached per model."""
    setup = _setups.get(model)
    if setup is None:
        setup = _setups[model] = make_setup(model)
    return setup


def _special_text(model: Model, token: int) -> str:
    if token < 0:
        return ""
    return model.tokenizer.piece(token, special=True).decode("utf-8", errors="replace")


def make_setup(model: Model, template: str | None = None) -> ChatSetup:
    """A ChatSetup for model with a given template source (None: the file's; empty: none, so the
    ChatML fallback, with a UserWarning and a note)."""
    tk = model.tokenizer
    if template is None:
        template = Metadata(model.file.reader, model.file.path).str("tokenizer.chat_template", default="")
    bos, eos = _special_text(model, tk.bos_id), _special_text(model, tk.eos_id)
    if template.strip():
        setup = ChatSetup(ChatTemplate(template, bos, eos))
    else:
        setup = ChatSetup(ChatTemplate(CHATML_TEMPLATE, bos, eos, is_fallback=True),
                          notes=["the model file has no chat template (tokenizer.chat_template): "
                                 "using ChatML"])
        warnings.warn(f"{model.file.path}: {setup.notes[0]}", UserWarning, stacklevel=2)
    end = _end_of_turn(model, setup.template)
    if end is not None:
        setup.stop_ids = frozenset({end})
    elif setup.template.is_fallback:
        setup.stop_strings = (CHATML_END,)   # ChatML's marker is plain text in this vocabulary
    return setup


def _end_of_turn(model: Model, template: ChatTemplate) -> int | None:
    """The control token the template writes right after an assistant reply (<|im_end|>,
    <|eot_id|>, <end_of_turn>...), found by rendering a probe conversation."""
    mark = "\x00reply\x00"
    try:
        text = template.render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": mark}],
                               add_generation_prompt=False)
    except ChatTemplateError:
        return None  # a template with unusual rules: the vocabulary's EOG tokens remain
    at = text.find(mark)
    after = text[at + len(mark):].lstrip() if at >= 0 else ""
    if not after:
        return None
    tok = model.tokenize(after, add_bos=False, special=True)[0]
    is_control = model.tokenizer.piece(tok) == b"" and model.tokenizer.piece(tok, special=True) != b""
    return tok if is_control else None


def format_chat(model: Model, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                setup: ChatSetup | None = None, **variables: Any) -> list[int]:
    """Token ids of a conversation as the template (default: the model's) writes it. Special tokens
    in the text are parsed; BOS is added only when the model wants one and the text does not begin
    with it already (a template that writes {{ bos_token }} gets no second one)."""
    setup = setup or chat_setup(model)
    text = setup.template.render(messages, add_generation_prompt, **variables)
    ids = model.tokenize(text, add_bos=False, special=True)
    tk = model.tokenizer
    if tk.add_bos and tk.bos_id >= 0 and (not ids or ids[0] != tk.bos_id):
        ids = [tk.bos_id] + ids
    return ids


@dataclass
class _Run:
    """Outcome of one reply, filled while it streams."""
    finish_reason: str = "length"
    completion_tokens: int = 0


def _first_stop(text: str, stop: Sequence[str]) -> int:
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(hits) if hits else -1


def _reply(model: Model, prompt: list[int], max_tokens: int, sampling: Sampling, stop: Sequence[str],
           setup: ChatSetup, run: _Run) -> Iterator[str]:
    """Text pieces of the reply (UTF-8 safe; a tail that may begin a stop string is held back).
    Ends at an end-of-turn token or stop string ("stop"), or at max_tokens or a full context ("length")."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    hold = max((len(s) for s in stop), default=1) - 1
    pending = ""
    tokens = model.generate_tokens(prompt, max_tokens, sampling)
    try:
        for tok in tokens:
            if model.tokenizer.is_eog(tok) or tok in setup.stop_ids:
                run.finish_reason = "stop"
                break
            run.completion_tokens += 1
            pending += decoder.decode(model.tokenizer.piece(tok))
            at = _first_stop(pending, stop)
            if at >= 0:
                run.finish_reason = "stop"
                if pending[:at]:
                    yield pending[:at]
                return
            if len(pending) > hold:
                yield pending[:len(pending) - hold]
                pending = pending[len(pending) - hold:]
    finally:
        tokens.close()
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending


def create_chat_completion(
        model: Model, messages: Sequence[Mapping[str, Any]], max_tokens: int | None = None,
        temperature: float = 0.2, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
        repeat_penalty: float = 1.0, seed: int | None = None, stop: str | Sequence[str] | None = None,
        stream: bool = False, model_name: str | None = None, setup: ChatSetup | None = None,
) -> dict[str, Any] | Iterator[dict[str, Any]]:
    """An OpenAI-style chat completion: a "chat.completion" dict, or with stream=True an iterator of
    "chat.completion.chunk" dicts (first delta the role, then content, the last one the finish_reason).
    max_tokens None: up to the context. Raises ContextError when the conversation leaves no room for
    a reply; a reply that fills the context ends with finish_reason "length". Same seed, same text.
    setup: another template (make_setup); completion_tokens counts the reply without its end token."""
    setup = setup or chat_setup(model)
    prompt = format_chat(model, messages, setup=setup)
    if len(prompt) >= model.n_ctx:
        raise ContextError(f"the conversation is {len(prompt)} tokens and leaves no room for a reply in "
                           f"the context of n_ctx = {model.n_ctx} tokens: shorten it or raise n_ctx")
    room = model.n_ctx - len(prompt)
    if max_tokens is not None and max_tokens < 0:
        raise ValueError("max_tokens must be >= 0 (or None: up to the context)")
    n = room if max_tokens is None else min(max_tokens, room)
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    stops = [s for s in stops if s] + list(setup.stop_strings)
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                        repeat_penalty=repeat_penalty, seed=seed)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
            "model": model_name or model.file.path}
    run = _Run()
    pieces = _reply(model, prompt, n, sampling, stops, setup, run)
    if stream:
        return _chunks(head, pieces, run)
    content = "".join(pieces)
    return {**head, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "logprobs": None, "finish_reason": run.finish_reason}],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": run.completion_tokens,
                      "total_tokens": len(prompt) + run.completion_tokens}}


def _chunks(head: dict[str, Any], pieces: Iterator[str], run: _Run) -> Iterator[dict[str, Any]]:
    def chunk(delta: dict[str, str], finish: str | None) -> dict[str, Any]:
        return {**head, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    try:
        yield chunk({"role": "assistant"}, None)
        for piece in pieces:
            yield chunk({"content": piece}, None)
        yield chunk({}, run.finish_reason)
    finally:
        pieces.close()   # a consumer that stops early also stops the generation
