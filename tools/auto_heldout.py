"""(issue 17, RESULTS.md) What --method auto would record at other levels: per selection (budget, topk, topk_abs: F.AUTO_SELECTIONS)
the held-out perplexity of an auto file, the paired per-token NLL difference (budget - each) with its standard error, and
the choice convert.auto_choice makes; on the converter's window (the 1024 tokens after the 8192 calibrated) and, with
N > 1024, more tokens after them, in windows of 1024.
usage: python tools/auto_heldout.py SOURCE.gguf AUTO_FILE.gguf OUT.json LEVELS(0.25,0.5) HELDOUT_TOKENS(1024)"""
import json, sys
import numpy as np
from larosa.converter import calibrate
from larosa.converter.convert import auto_choice
from larosa.runtime import format as F
from larosa.runtime.model import Model
src, path, out, levels, n_held = sys.argv[1], sys.argv[2], sys.argv[3], [float(v) for v in sys.argv[4].split(",")], int(sys.argv[5])
calib = calibrate.from_file(src, "/work/shared/data/calibration/wikitext2_raw_train_first1MB.txt", 8192, 2048, n_held)
held = calib.heldout
if held.shape[1] > 1024:   # one window of min(heldout, 2048): split into 1024-token windows
    held = held.reshape(-1, 1024)
res = {"file": path, "windows": held.shape, "levels": {}}
def nlls(m):
    out = []
    for w in held:
        m.reset(); lg = m.eval(w.tolist(), all_logits=True).astype(np.float64)[:-1]
        mx = lg.max(1, keepdims=True); lse = mx[:, 0] + np.log(np.exp(lg - mx).sum(1))
        out.append(lse - lg[np.arange(len(w) - 1), w[1:]])
    return np.concatenate(out)
for s in levels:
    r = {}
    for sel in F.AUTO_SELECTIONS:
        m = Model(path, n_ctx=1024, n_threads=1, budget=sel == "budget", topk=sel != "budget", scores=sel != "topk_abs",
                  sparsity=float(np.float32(s)))
        r[sel] = nlls(m); del m
    lv = {"tokens": int(len(r["budget"])), "choice": auto_choice(*[r[k] for k in F.AUTO_SELECTIONS])}
    for sel in F.AUTO_SELECTIONS:
        lv["ppl_" + sel] = float(np.exp(r[sel].mean()))
        if sel != "budget":
            d = r["budget"] - r[sel]
            lv["mean_diff_" + sel], lv["se_" + sel] = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))
    res["levels"][str(s)] = lv
    print(s, res["levels"][str(s)], flush=True)
json.dump(res, open(out, "w"))
