// The inputs one block input reads for the current token: forward.c's lr_select on the GPU, one
// workgroup of 1024 threads. Optionally RMS-normalizes x first (attn_in / mlp_in: the norm scale is
// folded into the weights), ranks the keys |x_i| * score_i (or |silu(gate_i)| * score_i, CATS), and
// keeps
//   mode 0 (Top-K): the k largest keys, ties to the lower index (lr_topk's rule);
//   mode 1 (threshold): every key above thr;
//   mode 2 (budget): Top-K of a count scaled to keep the token on its planned cost (budget_k);
//   mode 3 (all): every input (a dense product: adapters).
// Output, sel (u32 words): [0] count, [4 .. 4 + n) rows ascending, [4 + n .. 4 + 2n) their values
// (float bits; with quant: the Q8_0 codes of the selected inputs, as lr_qsel_build rounds them),
// [4 + 2n .. 4 + 2n + n / 32) dx per group of 32 inputs (quant; 0 where none is selected).
//
// Exact Top-K by radix select on the keys' bits (non-negative floats order as integers): three
// passes of 11, 11 and 9 bits narrow the k-th largest key T down to one value, then each thread
// compacts its contiguous slice of inputs, taking keys above T and, in index order, the first
// `need` keys equal to T. The selection is a chain of small steps on one workgroup, so it is
// latency-bound: each thread keeps its slice's keys and values in registers (read from memory
// once), and the scans over threads and histogram bins are two-level (32 sums of 32 by 32
// threads, then one thread) with three barriers each rather than a log-step scan's twenty.
// Reference: lr_topk_impl (kernels.c), lr_select and budget_k (forward.c).

struct Params {
    n: u32, mode: u32, k: u32, quant: u32,
    norm: u32, key_kind: u32, has_score: u32, stat: u32,   // key_kind 1: CATS gate key; stat 4: none
    thr: f32, eps: f32, plan: f32, cost: f32,
    remain: f32, first: u32, last: u32, pad: u32,
}
struct State { over: f32, rows: array<atomic<u32>, 4> }

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> score: array<f32>;
@group(0) @binding(3) var<storage, read> gate: array<f32>;
@group(0) @binding(4) var<storage, read_write> sel: array<u32>;
@group(0) @binding(5) var<storage, read_write> state: State;

const WG: u32 = 1024u;
const PER: u32 = 32u;            // inputs per thread at most: n <= 32768 (checked at load)
var<workgroup> hist: array<atomic<u32>, 2048>;
var<workgroup> cnt: array<u32, 1024>;     // per-thread counts of a scan
var<workgroup> sums: array<u32, 72>;      // 32 or 64 partial sums, then [64] total, [65..67] results
var<workgroup> fval: array<f32, 1024>;    // per-thread sums of squares, then dx per group
var<workgroup> gmax: array<atomic<u32>, 1024>;

// exclusive sum of v over the threads before t, and the total over all threads
fn prefix(t: u32, v: u32, total: ptr<function, u32>) -> u32 {
    cnt[t] = v;
    workgroupBarrier();
    if (t < 32u) {
        var s = 0u;
        for (var j = 0u; j < 32u; j++) { s += cnt[32u * t + j]; }
        sums[t] = s;
    }
    workgroupBarrier();
    if (t == 0u) {
        var s = 0u;
        for (var g = 0u; g < 32u; g++) { let v = sums[g]; sums[g] = s; s += v; }
        sums[64] = s;
    }
    workgroupBarrier();
    var r = sums[t / 32u];
    for (var j = t / 32u * 32u; j < t; j++) { r += cnt[j]; }
    *total = sums[64];
    workgroupBarrier();
    return r;
}

// the bin of the histogram (bins of it) holding the need-th largest key, counted from the top, and
// how many keys of that bin are still needed: into sums[65], sums[66]
fn find_bin(t: u32, bins: u32, need: u32) {
    let w = bins / 64u;
    if (t < 64u) {
        var s = 0u;
        for (var j = 0u; j < w; j++) { s += atomicLoad(&hist[t * w + j]); }
        sums[t] = s;
    }
    workgroupBarrier();
    if (t == 0u) {
        var acc = 0u;
        var g = 64u;
        loop {
            if (g == 0u) { break; }
            g -= 1u;
            if (acc + sums[g] >= need) { break; }
            acc += sums[g];
        }
        var b = g * w + w;
        loop {
            if (b == g * w) { break; }
            b -= 1u;
            let h = atomicLoad(&hist[b]);
            if (acc + h >= need) { break; }
            acc += h;
        }
        sums[65] = b;
        sums[66] = need - acc;
    }
    workgroupBarrier();
}

@compute @workgroup_size(1024)
fn main(@builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    let n = P.n;
    let per = (n + WG - 1u) / WG;
    let i0 = min(t * per, n);
    let m = min(i0 + per, n) - i0;   // this thread's inputs: i0 .. i0 + m

    // the slice's values, read once
    var xv: array<f32, 32>;
    var ss = 0.0;
    for (var e = 0u; e < m; e++) { let v = x[i0 + e]; xv[e] = v; ss = fma(v, v, ss); }
    // RMSNorm (no scale): r = 1 / sqrt(mean(x^2) + eps)
    var r = 1.0;
    if (P.norm != 0u) {
        fval[t] = ss;
        workgroupBarrier();
        if (t < 32u) {
            var s = 0.0;
            for (var j = 0u; j < 32u; j++) { s += fval[32u * t + j]; }
            fval[t * 32u] = s;   // the first of each 32 is read by thread 0 only after the barrier
        }
        workgroupBarrier();
        if (t == 0u) {
            var s = 0.0;
            for (var g = 0u; g < 32u; g++) { s += fval[32u * g]; }
            fval[1] = s;
        }
        workgroupBarrier();
        r = 1.0 / sqrt(fval[1] / f32(n) + P.eps);
        workgroupBarrier();
    }
    var kb: array<u32, 32>;
    for (var e = 0u; e < m; e++) {
        xv[e] = xv[e] * r;
        var v = xv[e];
        let i = i0 + e;
        if (P.key_kind == 1u) { let g = gate[i]; v = g / (1.0 + exp(-g)); }
        var kf = abs(v);
        if (P.has_score != 0u) { kf = kf * score[i]; }
        kb[e] = bitcast<u32>(kf) & 0x7fffffffu;
    }

    // how many inputs to keep
    var k = n;
    var total = 0u;
    if (P.mode == 0u) { k = min(P.k, n); }
    if (P.mode == 2u) {
        var c = 0u;
        if (P.last == 0u) {
            for (var e = 0u; e < m; e++) { c += select(0u, 1u, bitcast<f32>(kb[e]) > P.thr); }
            prefix(t, c, &total);
        }
        if (t == 0u) {
            var over = state.over;
            if (P.first != 0u) { over = 0.0; }
            var want: f32;
            if (P.last != 0u) { want = P.plan - over / P.cost; }
            else { want = f32(total) * (1.0 - over / P.remain); }
            var kk: u32;
            if (want < 1.0) { kk = 1u; } else if (want > f32(n)) { kk = n; } else { kk = u32(round(want)); }
            state.over = over + (f32(kk) - P.plan) * P.cost;
            sums[67] = kk;
        }
        k = workgroupUniformLoad(&sums[67]);
    }

    // the threshold key T and how many keys equal to T to take (Top-K modes, k < n)
    let topk = (P.mode == 0u || P.mode == 2u) && k < n;
    var tbits = 0u;
    var need = k;
    if (topk) {
        var prefix_bits = 0u;
        for (var ps = 0u; ps < 3u; ps++) {
            var shift = 20u; var bins = 2048u; var known = 0u;   // bits above the digit already fixed
            if (ps == 1u) { shift = 9u; known = 0xfff00000u; }
            if (ps == 2u) { shift = 0u; bins = 512u; known = 0xfffffe00u; }
            atomicStore(&hist[t], 0u);
            atomicStore(&hist[t + 1024u], 0u);
            workgroupBarrier();
            for (var e = 0u; e < m; e++) {
                if ((kb[e] & known) == prefix_bits) { atomicAdd(&hist[(kb[e] >> shift) & (bins - 1u)], 1u); }
            }
            workgroupBarrier();
            find_bin(t, bins, need);
            prefix_bits = prefix_bits | (workgroupUniformLoad(&sums[65]) << shift);
            need = workgroupUniformLoad(&sums[66]);
        }
        tbits = prefix_bits;
    }

    // compaction, each thread its slice in index order
    var n_gt = 0u; var n_eq = 0u;
    for (var e = 0u; e < m; e++) {
        if (topk) { n_gt += select(0u, 1u, kb[e] > tbits); n_eq += select(0u, 1u, kb[e] == tbits); }
        else if (P.mode == 1u) { n_gt += select(0u, 1u, bitcast<f32>(kb[e]) > P.thr); }
        else { n_gt += 1u; }
    }
    var eq_take = 0u;
    if (topk) {
        let eq_before = prefix(t, n_eq, &total);
        if (eq_before < need) { eq_take = min(n_eq, need - eq_before); }
    }
    let mine = n_gt + eq_take;
    let o0 = prefix(t, mine, &total);
    atomicStore(&gmax[t], 0u);
    workgroupBarrier();
    var o = o0;
    var eq_seen = 0u;
    for (var e = 0u; e < m; e++) {
        var take = true;
        if (topk) {
            take = kb[e] > tbits;
            if (kb[e] == tbits) { take = eq_seen < eq_take; eq_seen += 1u; }
        } else if (P.mode == 1u) {
            take = bitcast<f32>(kb[e]) > P.thr;
        }
        kb[e] = select(0u, 1u, take);   // from here on: taken or not
        if (take) {
            sel[4u + o] = i0 + e;
            sel[4u + n + o] = bitcast<u32>(xv[e]);
            if (P.quant != 0u) { atomicMax(&gmax[(i0 + e) / 32u], bitcast<u32>(abs(xv[e]))); }
            o += 1u;
        }
    }
    if (t == 0u) {
        sel[0] = total;
        if (P.stat < 4u) { atomicAdd(&state.rows[P.stat], total); }
    }
    if (P.quant == 0u) { return; }
    // Q8_0 codes of the selected values per group of 32: dx = max |x| / 127, q = round(x / dx)
    // (lr_qsel_build: a group with a NaN or Inf gets dx NaN, a tiny max zero codes)
    workgroupBarrier();
    if (t < n / 32u) {
        let mx = atomicLoad(&gmax[t]);
        var dx = bitcast<f32>(mx) / 127.0;
        if (mx >= 0x7f800000u) { dx = bitcast<f32>(0x7fc00000u); }
        sel[4u + 2u * n + t] = bitcast<u32>(dx);
        fval[t] = dx;
    }
    workgroupBarrier();
    o = o0;
    for (var e = 0u; e < m; e++) {
        if (kb[e] == 0u) { continue; }
        let dx = fval[(i0 + e) / 32u];
        var id = 0.0;
        if (dx > 0.0) { id = 1.0 / dx; }
        if (id > 3.4028234e38) { id = 0.0; }
        var q = round(xv[e] * id);
        if (q != q) { q = 0.0; }
        sel[4u + n + o] = bitcast<u32>(clamp(q, -127.0, 127.0));
        o += 1u;
    }
}
