"""larosa-chat: an interactive chat with a LaRoSA model in the terminal (llama-cli's flags).

Each reply streams as it is generated; the conversation is kept, and the model's cache re-uses it so
that a turn only evaluates what is new. Ctrl-C stops a reply; Ctrl-C at the prompt or Ctrl-D exits.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

from .cli import add_device_arg, add_kv_args
from .errors import LarosaError

PROG = "larosa-chat"
HELP = """commands:
  /help          this text
  /reset         forget the conversation (the system prompt stays)
  /sparsity S    switch to model sparsity S in [0, 1); the conversation is kept and re-evaluated
  /stats         speed of the last reply, sparsity, weight bytes read per token
  /exit          leave (Ctrl-D or Ctrl-C at the prompt too)
Ctrl-C during a reply stops it; the partial reply stays in the conversation."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Chat with a LaRoSA model (from larosa-convert).")
    p.add_argument("-m", "--model", required=True, help="LaRoSA GGUF")
    p.add_argument("-n", "--n-predict", type=int, default=-1,
                   help="most tokens per reply; -1: up to the context (default -1)")
    p.add_argument("-c", "--ctx-size", type=int, help="context size (default: min(model, 4096))")
    p.add_argument("-t", "--threads", type=int, default=min(os.cpu_count() or 1, 8), help="CPU threads")
    p.add_argument("--temp", type=float, default=0.8,
                   help="temperature; 0 greedy, < 0 a draw without top-k/top-p/min-p (default 0.8)")
    p.add_argument("--top-k", type=int, default=40, help="<= 0: off (default 40)")
    p.add_argument("--top-p", type=float, default=0.95, help=">= 1: off, 0: greedy (default 0.95)")
    p.add_argument("--min-p", type=float, default=0.05, help="0: off (default 0.05)")
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, help="sampling seed (default: random)")
    p.add_argument("--sparsity", type=float, help="model sparsity in [0, 1) (default: the file's)")
    p.add_argument("-sys", "--system-prompt", help="system message opening the conversation")
    add_device_arg(p)
    add_kv_args(p)
    return p


@contextmanager
def _sigint_as_flag() -> Iterator[threading.Event]:
    """While inside, Ctrl-C sets the flag instead of raising, so a reply stops between two tokens
    (the model's state stays consistent) and the session goes on."""
    hit = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield hit   # signal handlers can only be set from the main thread
        return
    old = signal.signal(signal.SIGINT, lambda signum, frame: hit.set())
    try:
        yield hit
    finally:
        signal.signal(signal.SIGINT, old)


class ChatSession:
    """The REPL's state: the model, the conversation and the sampling options."""

    def __init__(self, model, args: argparse.Namespace):
        self.model, self.args = model, args
        self.system = [{"role": "system", "content": args.system_prompt}] if args.system_prompt else []
        self.history: list[dict[str, Any]] = list(self.system)

    def say(self, text: str) -> None:
        print(text, flush=True)

    def run(self) -> int:
        while True:
            try:
                line = input("> ")
            except (EOFError, KeyboardInterrupt):
                print(flush=True)
                return 0
            line = line.strip()
            if not line:
                continue
            try:
                if line.startswith("/"):
                    if self.command(line) == "exit":
                        return 0
                else:
                    self.reply(line)
            except KeyboardInterrupt:   # outside a reply (a command): back to the prompt
                self.say("\n[interrupted]")

    # -- commands ------------------------------------------------------------------------------
    def command(self, line: str) -> str | None:
        name, _, arg = line.partition(" ")
        if name in ("/exit", "/quit"):
            return "exit"
        if name == "/help":
            self.say(HELP)
        elif name == "/reset":
            self.history = list(self.system)
            self.model.reset()
            self.say("[conversation cleared]")
        elif name == "/stats":
            self.stats()
        elif name == "/sparsity":
            self.sparsity(arg.strip())
        else:
            self.say(f"[unknown command {name}; /help lists them]")
        return None

    def stats(self) -> None:
        m, t, n = self.model, self.model.timings, len(self.history)
        self.say(f"[last reply: prompt {t.prompt_tokens} tokens at {t.prompt_tps:.1f} tok/s, "
                 f"decode {t.decode_tokens} tokens at {t.decode_tps:.1f} tok/s]\n"
                 f"[sparsity {m.sparsity:g}, {m.bytes_per_token() / 2**20:.1f} MiB of weights per token, "
                 f"{m.n_threads} threads]\n"
                 f"[conversation: {n} message{'' if n == 1 else 's'}, "
                 f"{len(m.tokens)} of {m.n_ctx} context tokens cached]")

    def sparsity(self, arg: str) -> None:
        from .chat import format_chat
        try:
            self.model.set_sparsity(float(arg))
        except (ValueError, LarosaError) as e:
            self.say(f"[cannot set sparsity {arg!r}: {e}]")
            return
        m = self.model
        msg = f"[sparsity {m.sparsity:g}, {m.bytes_per_token() / 2**20:.1f} MiB of weights per token"
        if self.history:  # the cache was dropped: rebuild it now so the next reply starts at once
            try:
                t0 = time.perf_counter()
                ids = format_chat(self.model, self.history, add_generation_prompt=False)
                self.model.eval_prompt(ids)
                msg += f"; conversation re-evaluated: {len(ids)} tokens in {time.perf_counter() - t0:.1f} s"
            except KeyboardInterrupt:
                msg += "; re-evaluation interrupted, the next reply will do it"
            except LarosaError as e:
                msg += f"; re-evaluation failed: {e}"
        self.say(msg + "]")

    # -- replies -------------------------------------------------------------------------------
    def reply(self, text: str) -> None:
        from .model import ContextError
        with _sigint_as_flag() as interrupted:   # from here on Ctrl-C ends the reply, not the session
            self.history.append({"role": "user", "content": text})
            try:
                stream = self._stream()
            except LarosaError as e:   # context overflow, template refusal: the turn is dropped
                self.history.pop()
                hint = " (/reset starts over)" if isinstance(e, ContextError) else ""
                self.say(f"[error: {e}]{hint}")
                return
            parts: list[str] = []
            finish = None
            try:
                for chunk in stream:
                    choice = chunk["choices"][0]
                    piece = choice["delta"].get("content")
                    if piece:
                        parts.append(piece)
                        sys.stdout.write(piece)
                        sys.stdout.flush()
                    finish = choice["finish_reason"] or finish
                    if interrupted.is_set():
                        break
            except LarosaError as e:
                self.say(f"\n[error: {e}]")
            finally:
                stream.close()
            self.history.append({"role": "assistant", "content": "".join(parts)})
        print(flush=True)
        if interrupted.is_set():
            self.say("[interrupted]")
        elif finish == "length":
            full = len(self.model.tokens) + 1 >= self.model.n_ctx
            self.say("[context full: /reset or a larger -c]" if full else "[reply cut at -n tokens]")

    def _stream(self) -> Iterator[dict[str, Any]]:
        from .chat import create_chat_completion
        a = self.args
        return create_chat_completion(
            self.model, self.history, max_tokens=None if a.n_predict < 0 else a.n_predict,
            temperature=a.temp, top_k=a.top_k, top_p=a.top_p, min_p=a.min_p,
            repeat_penalty=a.repeat_penalty, seed=a.seed, stream=True)


def _check_template(model, system_prompt: str | None) -> None:
    """Refuses at start-up a chat the template would refuse at every turn (a template that raises on
    any conversation, or on this system prompt even folded into the first user message)."""
    from .chat import ChatTemplateError, format_chat
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    try:
        format_chat(model, system + [{"role": "user", "content": "Hello"}])
    except ChatTemplateError as e:
        what = "a conversation with this system prompt" if system else "a one-message conversation"
        raise LarosaError(f"the model's chat template refuses {what}, so every turn would fail: {e}") from None


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        from .chat import SYSTEM_FOLD_NOTE, chat_setup
        from .generate import Sampling
        from .model import Model
        if a.threads < 1:
            raise LarosaError("-t must be >= 1")
        Sampling(temperature=a.temp, top_k=a.top_k, top_p=a.top_p, min_p=a.min_p,
                 repeat_penalty=a.repeat_penalty)   # bad options fail before the model loads
        model = Model(a.model, sparsity=a.sparsity, n_threads=a.threads, n_ctx=a.ctx_size,
                      type_k=a.cache_type_k, type_v=a.cache_type_v, device=a.device)
        with warnings.catch_warnings():   # the template's warnings: printed as notes below
            warnings.simplefilter("ignore")
            setup = chat_setup(model)     # a broken template fails here, not at the first message
            _check_template(model, a.system_prompt)
    except (LarosaError, ValueError, OSError, ImportError) as e:   # ImportError: C library not built
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    notes = setup.notes + ([f"{SYSTEM_FOLD_NOTE} (-sys)"] if a.system_prompt and not setup.system_role else [])
    for note in notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    print(f"{PROG}: {os.path.basename(model.file.path)}, sparsity {model.sparsity:g}, n_ctx {model.n_ctx}, "
          f"{model.n_threads} threads. /help for commands, Ctrl-C stops a reply, Ctrl-D exits.",
          file=sys.stderr, flush=True)
    try:
        import readline  # noqa: F401  line editing and history at the prompt, where available
    except ImportError:
        pass
    return ChatSession(model, a).run()


if __name__ == "__main__":
    sys.exit(main())
