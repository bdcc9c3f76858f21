"""Embedding larosa in an application: load once, stream a chat reply, report the speed.

    python examples/embedded_app.py smollm2.larosa-q8_0.gguf "Why is the sky blue?"
"""
import sys

from larosa.runtime import Model, create_chat_completion

model = Model(sys.argv[1], sparsity=0.4, n_threads=2)
messages = [{"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": sys.argv[2] if len(sys.argv) > 2 else "Name three uses of a CPU."}]
for chunk in create_chat_completion(model, messages, max_tokens=128, seed=0, stream=True):
    print(chunk["choices"][0]["delta"].get("content", ""), end="", flush=True)
t = model.timings
print(f"\n[prompt {t.prompt_tokens} tok at {t.prompt_tps:.1f} tok/s, decode {t.decode_tokens} tok at "
      f"{t.decode_tps:.1f} tok/s, {model.bytes_per_token() / 2**20:.0f} MiB weights/token]", file=sys.stderr)
