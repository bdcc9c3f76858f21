"""Chat: the model's template in a sandbox, create_chat_completion, and larosa-chat in a real terminal.

One converted SmolLM2-135M-Instruct (ChatML template in its GGUF) is shared by the whole file; replies
are kept to a few tokens because the machine has 2 shared cores.
"""
from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from importlib.metadata import entry_points

import jinja2
import pytest

from larosa.runtime import chat
from larosa.runtime.chat_cli import main as chat_main
from larosa.runtime.errors import LarosaError
from larosa.runtime.model import ContextError, Model

N_CTX = 64   # small on purpose: a reply can fill it in a few tokens
FRANCE = [{"role": "system", "content": "You are terse."},
          {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="session")
def chat_gguf(smollm2_q8) -> str:
    return smollm2_q8      # conftest.py: SmolLM2 converted once per session


@pytest.fixture(scope="module")
def model(chat_gguf) -> Model:
    return Model(chat_gguf, n_threads=2, n_ctx=N_CTX)


# -- templates ------------------------------------------------------------------------------------

def test_smollm2_template_renders_two_turns(model):
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Hi!"},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "What is 2+2?"}]
    expected = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\nHi!<|im_end|>\n"
                "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
                "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
                "<|im_start|>assistant\n")
    setup = chat.chat_setup(model)
    assert not setup.template.is_fallback and setup.notes == []
    assert setup.template.render(messages) == expected
    history_only = expected[:-len("<|im_start|>assistant\n")]
    assert setup.template.render(messages, add_generation_prompt=False) == history_only
    # tokens: special markers parsed as single tokens; SmolLM2's BOS is <|im_start|> and add_bos is
    # off, so the ids are exactly the template's (no BOS added in front)
    ids = chat.format_chat(model, messages)
    tk = model.tokenizer
    assert ids == model.tokenize(expected, add_bos=False, special=True)
    assert ids[0] == tk.bos_id and ids[1] != tk.bos_id
    assert ids.count(tk.eos_id) == 4 and setup.stop_ids == {tk.eos_id}   # <|im_end|> ends a turn


def test_bos_added_only_when_the_template_does_not_write_it(model, monkeypatch):
    tk = model.tokenizer
    monkeypatch.setattr(tk, "add_bos", True)   # pretend a model that wants a BOS (as llama does)
    msgs = [{"role": "user", "content": "hi"}]
    turns = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    with_bos, plain = chat.make_setup(model, "{{ bos_token }}" + turns), chat.make_setup(model, turns)
    a, b = chat.format_chat(model, msgs, setup=with_bos), chat.format_chat(model, msgs, setup=plain)
    assert a == b and a[0] == tk.bos_id and a.count(tk.bos_id) == 1
    assert a[1:] == model.tokenize("user: hi\n", add_bos=False)


def test_fallback_template_is_chatml_and_says_so(model):
    with pytest.warns(UserWarning, match="no chat template"):
        setup = chat.make_setup(model, "")      # as for a file without tokenizer.chat_template
    assert setup.template.is_fallback and "no chat template" in setup.notes[0]
    text = setup.template.render([{"role": "user", "content": "Hi"}])
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert setup.stop_ids == {model.tokenizer.eos_id}   # <|im_end|> is a control token here


HOSTILE = {
    "globals of a builtin": "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
    "subclasses": "{{ ().__class__.__base__.__subclasses__() }}",
    "bare dunder": "{{ ''.__class__ }}",
    "mutating the messages": "{{ messages.append({'role': 'user', 'content': 'x'}) }}",
    "huge string": "{{ 'x' * 10**9 }}",
    "huge power": "{{ 9 ** 99999999 }}",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_template_is_blocked(model, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    template = chat.ChatTemplate(HOSTILE[name].replace("MARKER", str(tmp_path / "pwned")))
    with pytest.raises(chat.TemplateSecurityError, match="sandbox"):
        template.render([{"role": "user", "content": "hi"}])
    assert not (tmp_path / "pwned").exists() and os.listdir(tmp_path) == []


def test_hostile_payload_is_real_outside_the_sandbox():
    # the same attribute path reaches the os module in a plain jinja2 environment
    assert jinja2.Environment().from_string("{{ cycler.__init__.__globals__.os.sep }}").render() == os.sep
    assert issubclass(chat.TemplateSecurityError, chat.ChatTemplateError)
    assert issubclass(chat.ChatTemplateError, LarosaError)


def test_template_errors_are_clear(model):
    with pytest.raises(chat.ChatTemplateError, match="malformed"):
        chat.ChatTemplate("{% for m in messages %}{{ m.content }")
    refusing = chat.ChatTemplate("{% if messages[0].role != 'system' %}"
                                 "{{ raise_exception('system first') }}{% endif %}")
    with pytest.raises(chat.ChatTemplateError, match="refused the conversation: system first"):
        refusing.render([{"role": "user", "content": "hi"}])
    with pytest.raises(chat.ChatTemplateError, match="Range too big|MAX_RANGE"):
        chat.ChatTemplate("{% for i in range(10**7) %}{% endfor %}").render([])
    with pytest.raises(ValueError, match="role"):
        chat.format_chat(model, [{"content": "no role"}])
    # variables common templates use
    t = chat.ChatTemplate("{{ bos_token }}|{{ eos_token }}|{{ tools is none }}|"
                          "{{ strftime_now('%Y') | length }}|{{ messages[0] | tojson }}",
                          bos_token="<s>", eos_token="</s>")
    rendered = t.render([{"role": "user", "content": "é<"}])
    assert rendered == '<s>|</s>|True|4|{"role": "user", "content": "é<"}'


# -- create_chat_completion ---------------------------------------------------------------------

def test_completion_shape_and_same_seed_same_text(model):
    model.reset()
    runs = [chat.create_chat_completion(model, FRANCE, max_tokens=8, temperature=0.9, seed=7)
            for _ in range(2)]   # the second run re-uses the cached prompt: same text all the same
    r = runs[0]
    assert r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-") and r["id"] != runs[1]["id"]
    assert isinstance(r["created"], int) and r["model"] == model.file.path
    (choice,) = r["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    assert content and content == runs[1]["choices"][0]["message"]["content"]
    u = r["usage"]
    assert u["prompt_tokens"] == len(chat.format_chat(model, FRANCE))
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert (choice["finish_reason"], u["completion_tokens"] == 8) in {("length", True), ("stop", False)}

    stream = chat.create_chat_completion(model, FRANCE, max_tokens=8, temperature=0.9, seed=7, stream=True)
    chunks = list(stream)
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    last = chunks[-1]["choices"][0]
    assert last["delta"] == {} and last["finish_reason"] == choice["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == content


def test_end_of_turn_and_stop_strings(model):
    r = chat.create_chat_completion(model, FRANCE, max_tokens=20, temperature=0)
    text = r["choices"][0]["message"]["content"]
    # greedy SmolLM2 answers in one short sentence and ends its turn with <|im_end|> (EOG)
    assert "Paris" in text and "<|im_end|>" not in text
    assert r["choices"][0]["finish_reason"] == "stop" and r["usage"]["completion_tokens"] < 20
    cut = chat.create_chat_completion(model, FRANCE, max_tokens=20, temperature=0, stop=["Paris", "zzz"])
    assert cut["choices"][0]["message"]["content"] == text[:text.index("Paris")]
    assert cut["choices"][0]["finish_reason"] == "stop"


def test_context_overflow_is_explicit(model):
    long = [{"role": "user", "content": "word " * N_CTX}]
    with pytest.raises(ContextError, match=f"n_ctx = {N_CTX}"):
        chat.create_chat_completion(model, long, max_tokens=4)
    story = [{"role": "user", "content": "Write a long story about a dragon."}]
    r = chat.create_chat_completion(model, story, temperature=0)   # max_tokens None: up to n_ctx
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["total_tokens"] == N_CTX


# -- larosa-chat ----------------------------------------------------------------------------------

def test_entry_point_and_one_line_errors(tmp_path, capsys):
    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "larosa-chat"]
    assert ep.load() is chat_main
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    assert chat_main(["-m", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("larosa-chat: error:") and "not a GGUF" in err
    cmd = [sys.executable, "-m", "larosa.runtime.chat_cli", "-m", str(tmp_path / "missing.gguf")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stdout == "" and "Traceback" not in p.stderr
    assert p.stderr.strip().count("\n") == 0 and "no such file" in p.stderr


# The child becomes a session leader with the pty as controlling terminal, so Ctrl-C typed on the
# master reaches it as SIGINT through the line discipline, as in a real terminal.
_LAUNCH = ("import fcntl, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
           "from larosa.runtime.chat_cli import main; sys.exit(main(sys.argv[1:]))")


class Terminal:
    """A child process on a pseudo-terminal, with expect-style reading."""

    def __init__(self, args: list[str]):
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))  # no line wrapping
        env = {**os.environ, "TERM": "dumb"}
        self.proc = subprocess.Popen([sys.executable, "-c", _LAUNCH, *args], stdin=slave, stdout=slave,
                                     stderr=slave, start_new_session=True, env=env)
        os.close(slave)
        self.fd, self.out, self.pos = master, b"", 0

    def expect(self, pattern: str, timeout: float = 60) -> re.Match:
        """Waits for pattern in the output after the previous match."""
        rx, end = re.compile(pattern.encode(), re.S), time.monotonic() + timeout
        while True:
            m = rx.search(self.out, self.pos)
            if m:
                self.pos = m.end()
                return m
            left = end - time.monotonic()
            if left <= 0 or not self._read(left):
                seen = self.out[self.pos:].decode(errors="replace")
                raise AssertionError(f"no {pattern!r} in the terminal output:\n{seen}")

    def _read(self, timeout: float) -> bool:
        if not select.select([self.fd], [], [], timeout)[0]:
            return False
        try:
            data = os.read(self.fd, 4096)
        except OSError:   # EIO: the child closed the terminal
            return False
        self.out += data
        return bool(data)

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.fd)


PROMPT = r"\r?\n> "


def test_terminal_session(chat_gguf):
    t = Terminal(["-m", chat_gguf, "-c", "512", "-t", "2", "-n", "200", "--temp", "0", "-sys", "Be brief."])

    def command(line: str, *patterns: str) -> list[re.Match]:
        t.send(line + "\r")
        found = [t.expect(p) for p in patterns]
        t.expect(PROMPT)
        return found

    try:
        t.expect(r"sparsity 0\.4.*/help for commands")
        t.expect(r"> ")
        # the streamed answer, ended by <|im_end|> (no "-n" cut)
        command("What is the capital of France?", r"France\?\r?\n.*Paris")
        assert b"[reply cut" not in t.out

        speed, weights, conv = command("/stats", r"prompt (\d+) tokens at ([\d.]+) tok/s, "
                                       r"decode (\d+) tokens at ([\d.]+) tok/s",
                                       r"sparsity 0\.4, ([\d.]+) MiB of weights per token",
                                       r"conversation: 3 messages")
        assert int(speed[1]) > 10 and int(speed[3]) > 0 and float(speed[4]) > 0 and float(weights[1]) > 50

        (m,) = command("/sparsity 0.25", r"sparsity 0\.25, [\d.]+ MiB of weights per token; "
                                         r"conversation re-evaluated: (\d+) tokens")
        assert int(m[1]) > 20
        command("/stats", r"sparsity 0\.25,.*conversation: 3 messages, \d+ of 512")

        # a long reply, interrupted with Ctrl-C once it streams: the session goes on
        t.send("Write a very long story about a dragon who loves books.\r")
        t.expect(r"loves books\.\r?\n\S.{8}")
        t.send("\x03")
        t.expect(r"\[interrupted\]" + PROMPT)
        assert t.proc.poll() is None
        command("/stats", r"conversation: 5 messages")     # the partial reply stayed in the conversation

        command("/reset", r"\[conversation cleared\]")
        command("/stats", r"conversation: 1 message, 0 of 512")
        t.send("\x04")                                     # Ctrl-D at the prompt
        assert t.proc.wait(timeout=30) == 0
    finally:
        t.close()


def test_ctrl_c_at_the_prompt_exits_cleanly(chat_gguf):
    t = Terminal(["-m", chat_gguf, "-c", "128", "-t", "1"])
    try:
        t.expect(r"/help for commands.*> ")
        # readline writes the prompt just before it starts waiting for a key; a Ctrl-C that lands in
        # between is only seen at the next key (Python checks signals when the wait is interrupted),
        # so give it the moment a human always does
        time.sleep(0.5)
        t.send("\x03")
        assert t.proc.wait(timeout=30) == 0
        assert b"Traceback" not in t.out
    finally:
        t.close()
