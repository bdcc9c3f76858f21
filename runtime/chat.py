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

import json
import re
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

from . import format as F
from .errors import LarosaError
from .generate import Sampling, TextScan, text_pieces
from .gguf_file import Metadata
from .model import ContextError, Model
from .tokenizer import Tokenizer
from .sandbox import BoundedSandbox

# The de-facto default (OpenAI's ChatML, used by SmolLM2, Qwen...), for files without a template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_END = "<|im_end|>"
# Gemma's turn format, for Gemma files without a template (llama.cpp's own Gemma 3 270M GGUF has
# none): the shape of Gemma 3's published template (a system message opens the first user turn,
# the assistant's role is "model", turns end with <end_of_turn>, which is a control token)
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# source architecture (larosa.source.architecture) -> its turn format, for files without a template
FAMILY_TEMPLATES = {"gemma2": ("Gemma", GEMMA_TEMPLATE), "gemma3": ("Gemma", GEMMA_TEMPLATE)}
SYSTEM_FOLD_NOTE = ("the chat template has no system role (it refuses or drops a system message): "
                    "the system message is put at the start of the first user message")


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

    def render_with_spans(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                          control_texts: Sequence[str] = (), **variables: Any) -> tuple[str, list[tuple[int, int]]]:
        """render(), and the [start, end) character spans of the text that came from the caller's
        data (every string of the messages, tools and documents), so that the tokenizer can keep
        them plain text: a message saying "<|im_end|>" must not close its turn.

        How: the data is rendered again with each string wrapped in two marker characters (around
        its text, inside its leading and trailing whitespace, so that trim still works); the
        markers give the spans, and the text without them must equal the plain render. Strings
        that are plain names (roles, types: letters, digits, _.:-) stay unwrapped, since templates
        compare them. A template that rewrites the text in a way the markers disturb (slicing,
        counting) gets the markers around the control-token texts alone; if that fails too and
        some string holds control_texts, ChatTemplateError: the origin of the text is unknown."""
        text = self.render(messages, add_generation_prompt, **variables)
        data = {"messages": messages, **{k: variables[k] for k in ("tools", "documents") if k in variables}}
        found = [c for c in control_texts if c and _holds(data, c)]
        s, e = _markers(self.source + text)
        for only_controls in (False, True):
            if only_controls and not found:
                return text, []          # nothing to protect but the edges; plain render
            marked = _mark(data, s, e, found, only_controls)
            try:
                rendered = self.render(marked["messages"], add_generation_prompt,
                                       **{**variables, **{k: v for k, v in marked.items() if k != "messages"}})
            except ChatTemplateError:
                continue
            spans = _spans(rendered, s, e)
            if spans is not None and rendered.replace(s, "").replace(e, "") == text:
                return text, spans
        raise ChatTemplateError(
            f"a message holds control-token text ({found[0]!r}) and the chat template rewrites the "
            "messages in a way that hides which text came from them: remove that text from the message")


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.:-]{0,64}")


def _holds(value: Any, needle: str) -> bool:
    if isinstance(value, str):
        return needle in value
    if isinstance(value, Mapping):
        return any(_holds(v, needle) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds(v, needle) for v in value)
    return False


def _markers(used: str) -> tuple[str, str]:
    """Two Unicode noncharacters (U+FDD0..U+FDEF, never assigned) that the text does not use."""
    free = [c for c in map(chr, range(0xFDD0, 0xFDF0)) if c not in used]
    if len(free) < 2:
        raise ChatTemplateError("the conversation uses every character in U+FDD0..U+FDEF")
    return free[0], free[1]


def _mark(value: Any, s: str, e: str, controls: Sequence[str], only_controls: bool) -> Any:
    """value with its strings wrapped in s...e (see render_with_spans); copies, never changes it."""
    if isinstance(value, str):
        if only_controls:
            if not controls:
                return value
            rx = "|".join(re.escape(c) for c in sorted(controls, key=len, reverse=True))
            return re.sub(rx, lambda m: s + m.group(0) + e, value)
        core = value.strip()
        if not core or (_PLAIN_NAME.fullmatch(value) and not any(c in value for c in controls)):
            return value
        lead = len(value) - len(value.lstrip())
        return value[:lead] + s + core + e + value[lead + len(core):]
    if isinstance(value, Mapping):
        return {k: _mark(v, s, e, controls, only_controls) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_mark(v, s, e, controls, only_controls) for v in value]
    return value


def _spans(marked: str, s: str, e: str) -> list[tuple[int, int]] | None:
    """[start, end) spans of the text between s and e, in the text without the markers; None when
    the markers do not pair up (the template cut a string)."""
    spans, at, start = [], 0, None
    for ch in marked:
        if ch == s:
            if start is not None:
                return None
            start = at
        elif ch == e:
            if start is None:
                return None
            spans.append((start, at))
            start = None
        else:
            at += 1
    return spans if start is None else None


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
    system_role: bool = True                    # False: the template refuses or drops system messages
    folded_warned: bool = False


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
    family's turn format (FAMILY_TEMPLATES) or else the ChatML fallback, with a UserWarning and a
    note)."""
    tk = model.tokenizer
    if template is None:
        template = Metadata(model.file.reader, model.file.path).str("tokenizer.chat_template", default="")
    bos, eos = _special_text(model, tk.bos_id), _special_text(model, tk.eos_id)
    family = FAMILY_TEMPLATES.get(Metadata(model.file.reader, model.file.path).str(F.K_SOURCE_ARCH, default=""))
    if template.strip():
        setup = ChatSetup(ChatTemplate(template, bos, eos))
    elif family is not None:
        setup = ChatSetup(ChatTemplate(family[1], bos, eos),
                          notes=[f"the model file has no chat template (tokenizer.chat_template): "
                                 f"using {family[0]}'s turn format"])
        warnings.warn(f"{model.file.path}: {setup.notes[0]}", UserWarning, stacklevel=2)
    else:
        setup = ChatSetup(ChatTemplate(CHATML_TEMPLATE, bos, eos, is_fallback=True),
                          notes=["the model file has no chat template (tokenizer.chat_template): "
                                 "using ChatML"])
        warnings.warn(f"{model.file.path}: {setup.notes[0]}", UserWarning, stacklevel=2)
    setup.system_role = _has_system_role(setup.template)
    end = _end_of_turn(model, setup.template)
    if end is not None:
        setup.stop_ids = frozenset({end})
    elif setup.template.is_fallback:
        setup.stop_strings = (CHATML_END,)   # ChatML's marker is plain text in this vocabulary
    return setup


def _has_system_role(template: ChatTemplate) -> bool:
    """Whether the template writes a system message given before a user message (Mistral v0.1's
    raises "roles must alternate", some templates drop it without a word)."""
    probe = "larosa system probe 7f3a"
    try:
        text = template.render([{"role": "system", "content": probe}, {"role": "user", "content": "hi"}])
    except ChatTemplateError:
        return False
    return probe in text


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


def encode_chat(tokenizer: Tokenizer, template: ChatTemplate, messages: Sequence[Mapping[str, Any]],
                add_generation_prompt: bool = True, **variables: Any) -> list[int]:
    """Token ids of a conversation as template writes it. The template's own markup is parsed for
    special tokens (<|im_start|>, <start_of_turn>...); the text of the messages (every field, any
    role), tools and documents is plain text, as tokenizer.encode(..., special=False) reads it, so
    that no message can write a control token. For a conversation whose messages hold no
    control-token text the ids are those of the whole text with special parsing. BOS is added only
    when the vocabulary wants one and the text does not begin with it already (a template that
    writes {{ bos_token }} gets no second one)."""
    text, spans = template.render_with_spans(messages, add_generation_prompt,
                                             control_texts=tokenizer.control_texts(), **variables)
    ids = tokenizer.encode_protected(text, spans)
    if tokenizer.add_bos and tokenizer.bos_id >= 0 and (not ids or ids[0] != tokenizer.bos_id):
        ids = [tokenizer.bos_id] + ids
    return ids


def fold_system(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]] | None:
    """For a template without a system role: the conversation with a leading system message put at
    the start of the first user message (a blank line between), or None when there is nothing to
    fold (no leading system message, or no user message right after it)."""
    msgs = _check_messages(messages)
    if len(msgs) < 2 or msgs[0]["role"] != "system" or msgs[1]["role"] != "user":
        return None
    system, user = msgs[0]["content"], msgs[1]["content"]
    return [{**msgs[1], "content": f"{system}\n\n{user}" if system and user else system + user}] + msgs[2:]


def format_chat(model: Model, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                setup: ChatSetup | None = None, **variables: Any) -> list[int]:
    """Token ids of a conversation for model (encode_chat with the model's template, or setup's).
    A template without a system role (setup.system_role False) gets a leading system message
    folded into the first user message (fold_system), with a UserWarning the first time."""
    setup = setup or chat_setup(model)
    if not setup.system_role:
        folded = fold_system(messages)
        if folded is not None:
            messages = folded
            if not setup.folded_warned:
                setup.folded_warned = True
                warnings.warn(f"{model.file.path}: {SYSTEM_FOLD_NOTE}", UserWarning, stacklevel=2)
    return encode_chat(model.tokenizer, setup.template, messages, add_generation_prompt, **variables)


def _reply(model: Model, prompt: list[int], max_tokens: int, sampling: Sampling, stop: Sequence[str],
           setup: ChatSetup, run: TextScan) -> Iterator[str]:
    """Text pieces of the reply, which is detokenized on its own (Tokenizer.stream: a SentencePiece
    reply does not start with the space of its first token; UTF-8 safe); a tail that may begin a
    stop string is held back. Ends at an end-of-turn token or stop string (run.stopped: "stop"), or
    at max_tokens or a full context ("length")."""
    return text_pieces(model.generate_tokens(prompt, max_tokens, sampling), model.tokenizer.stream(),
                       lambda tok: model.tokenizer.is_eog(tok) or tok in setup.stop_ids, stop, run)


def create_chat_completion(
        model: Model, messages: Sequence[Mapping[str, Any]], max_tokens: int | None = None,
        temperature: float = 0.2, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
        repeat_penalty: float = 1.0, seed: int | None = None, stop: str | Sequence[str] | None = None,
        stream: bool = False, model_name: str | None = None, setup: ChatSetup | None = None,
) -> dict[str, Any] | Iterator[dict[str, Any]]:
    """An OpenAI-style chat completion: a "chat.completion" dict, or with stream=True an iterator of
    "chat.completion.chunk" dicts (first delta the role, then content, the last one the finish_reason).
    max_tokens None or <= 0: up to the context (llama-cpp-python's convention). Raises ContextError
    when the conversation leaves no room for a reply; a reply that fills the context ends with
    finish_reason "length". Same seed, same text. Sampling values: generate.Sampling.
    setup: another template (make_setup); completion_tokens counts the reply without its end token."""
    setup = setup or chat_setup(model)
    prompt = format_chat(model, messages, setup=setup)
    if len(prompt) >= model.n_ctx:
        raise ContextError(f"the conversation is {len(prompt)} tokens and leaves no room for a reply in "
                           f"the context of n_ctx = {model.n_ctx} tokens: shorten it or raise n_ctx")
    room = model.n_ctx - len(prompt)
    n = room if max_tokens is None or max_tokens <= 0 else min(max_tokens, room)
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    stops = [s for s in stops if s] + list(setup.stop_strings)
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                        repeat_penalty=repeat_penalty, seed=seed)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()),
            "model": model_name or model.file.path}
    run = TextScan()
    pieces = _reply(model, prompt, n, sampling, stops, setup, run)
    if stream:
        return _chunks(head, pieces, run)
    content = "".join(pieces)
    return {**head, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "logprobs": None, "finish_reason": "stop" if run.stopped else "length"}],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": run.tokens,
                      "total_tokens": len(prompt) + run.tokens}}


def _chunks(head: dict[str, Any], pieces: Iterator[str], run: TextScan) -> Iterator[dict[str, Any]]:
    def chunk(delta: dict[str, str], finish: str | None) -> dict[str, Any]:
        return {**head, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    try:
        yield chunk({"role": "assistant"}, None)
        for piece in pieces:
            yield chunk({"content": piece}, None)
        yield chunk({}, "stop" if run.stopped else "length")
    finally:
        pieces.close()   # a consumer that stops early also stops the generation
