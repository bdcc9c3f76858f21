"""(issue 17, RESULTS.md "Both models at 16 windows") Perplexity at (near) equal measured skipped bytes, through the C runtime (larosa.runtime.Model).
usage: python tools/ppl_equal_bytes.py MODEL MODE CTX CHUNKS OUT -f TEXT --s S | --target T [--probe N] [--s0 S0]
MODE: file (the file's default selection), budget, nobudget (plain thresholds), topk (Top-K of the file's
keys), topk_abs (Top-K of |x|, the file's score tensors unused).
With --target, s is solved by two secant steps on probe runs (the first N windows, or one short
window for Top-K, whose skipped fraction does not depend on the tokens), then the scored run."""
import argparse, json, math, sys, time
from larosa.runtime.model import Model
from larosa.runtime import perplexity as P

a = argparse.ArgumentParser()
a.add_argument("model"); a.add_argument("mode"); a.add_argument("ctx", type=int); a.add_argument("chunks", type=int)
a.add_argument("out"); a.add_argument("--s", type=float); a.add_argument("--target", type=float)
a.add_argument("--s0", type=float); a.add_argument("--probe", type=int, default=1)
a.add_argument("-f", required=True, help="text file: the first 149,288 bytes of wiki.test.raw in RESULTS")
x = a.parse_args()
kw = {"file": {}, "budget": {"budget": True}, "nobudget": {"budget": False}, "topk": {"topk": True},
      "topk_abs": {"topk": True, "scores": False}}[x.mode]
m = Model(x.model, n_threads=1, n_ctx=x.ctx, **kw)
text = open(x.f, encoding="utf-8", errors="replace").read()
ids = m.tokenizer.encode(text)
bos = m.tokenizer.bos_id if m.tokenizer.add_bos else None
fn = P.larosa_logits(m)
log = {"model": x.model, "mode": x.mode, "budget": m.budget, "topk": m.topk, "scores": m.scores,
       "auto_selection": m.file.auto_selection, "ctx": x.ctx, "probes": []}

def frac(s, windows):
    m.set_sparsity(s); m.skipped_fraction(reset=True)
    r = P.score(windows, fn, progress=False)
    f = m.skipped_fraction(reset=True)
    log["probes"].append({"s": s, "skipped": f, "windows": len(windows), "ctx": windows.shape[1], "ppl": r.ppl})
    print(f"probe s={s:.5f} skipped={f:.5f}", file=sys.stderr, flush=True)
    return f

if x.target is not None and (m.topk or not m.file.thr_table):
    pw = P.make_windows(ids, 64, 1, bos)     # Top-K: every token reads the same rows; bisection on a step function
    lo, hi = 0.0, 0.95
    best = None
    for _ in range(18):
        mid = (lo + hi) / 2
        f = frac(mid, pw)
        if best is None or abs(f - x.target) < abs(best[1] - x.target):
            best = (mid, f)
        lo, hi = (mid, hi) if f < x.target else (lo, mid)
    s = best[0]
    log["probes"] = log["probes"][-3:]
elif x.target is not None:
    pw = P.make_windows(ids, 64, 1, bos) if m.topk or not m.file.thr_table else P.make_windows(ids, x.ctx, x.probe, bos)
    s0 = x.s0 if x.s0 is not None else x.target
    f0 = frac(s0, pw)
    s1 = s0 * x.target / f0 if f0 > 0 else s0 + 0.02
    f1 = frac(s1, pw)
    s = s1 + (x.target - f1) * (s1 - s0) / (f1 - f0) if abs(f1 - f0) > 1e-6 else s1
    if abs(f1 - x.target) > 2e-4:
        f2 = frac(s, pw)
        if abs(f2 - x.target) > 2e-4 and abs(f2 - f1) > 1e-6:
            s = s + (x.target - f2) * (s - s1) / (f2 - f1)
    else:
        s = s1
else:
    s = x.s
m.set_sparsity(s); m.skipped_fraction(reset=True)
w = P.make_windows(ids, x.ctx, x.chunks, bos)
per = [P.score(w[i:i + 1], fn, progress=False) for i in range(len(w))]   # one window at a time: paired comparisons
total, count = 0.0, 0
for q in per:
    total += q.nll * q.tokens; count += q.tokens
r = P.Result(ppl=math.exp(total / count), nll=total / count, tokens=count, windows=len(w),
             seconds=sum(q.seconds for q in per))
log.update({"s": s, "target": x.target, "ppl": r.ppl, "nll": r.nll, "tokens": r.tokens, "windows": r.windows,
            "window_nll": [q.nll for q in per], "window_tokens": [q.tokens for q in per],
            "skipped_fraction": m.skipped_fraction(reset=True), "seconds": r.seconds,
            "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())})
json.dump(log, open(x.out, "w")); print(json.dumps(log))
