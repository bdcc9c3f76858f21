// The inputs one block input reads for the current token: forward.c's lr_select on the GPU, one
// workgroup. Optionally RMS-normalizes x first (attn_in / mlp_in: the norm scale is folded into
// the weights), ranks the keys |x_i| * score_i (or |silu(gate_i)| * score_i, CATS), and keeps
//   mode 0 (Top-K): the k largest keys, ties to the lower index (lr_topk's rule);
//   mode 1 (threshold): every key above thr;
//   mode 2 (budget): Top-K of a count scaled to keep the token on its planned cost (budget_k);
//   mode 3 (all): every input (a dense product: adapters).
// Output, sel (u32 words): [0] count, [4 .. 4 + n) rows ascending, [4 + n .. 4 + 2n) their values
// (float bits; with quant: the Q8_0 codes of the selected inputs, as lr_qsel_build rounds them),
// [4 + 2n .. 4 + 2n + n / 32) dx per group of 32 inputs (quant; 0 where none is selected).
// The exact Top-K is a radix select on the keys' bits (non-negative floats order as integers):
// three passes of 11, 11 and 9 bits find the k-th largest key T, then each thread compacts its
// contiguous slice, taking keys above T and, in index order, the first `need` keys equal to T.

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

const WG: u32 = 256u;
const MAX_GROUPS: u32 = 1024u;   // n <= 32768 (checked at load)
var<workgroup> hist: array<atomic<u32>, 2048>;
var<workgroup> part: array<u32, 256>;
var<workgroup> fpart: array<f32, 256>;
var<workgroup> gmax: array<atomic<u32>, MAX_GROUPS>;
var<workgroup> bcast: array<u32, 4>;   // [0] digit prefix, [1] need, [2] k, [3] threshold bits

fn value(i: u32, r: f32) -> f32 { return x[i] * r; }

fn key_bits(i: u32, r: f32) -> u32 {
    var v = value(i, r);
    if (P.key_kind == 1u) { let g = gate[i]; v = g / (1.0 + exp(-g)); }
    var kf = abs(v);
    if (P.has_score != 0u) { kf = kf * score[i]; }
    return bitcast<u32>(kf) & 0x7fffffffu;
}

// exclusive sum over threads t' > t of part[t'] (a suffix scan), for thread t
fn suffix_excl(t: u32, v: u32) -> u32 {
    part[t] = v;
    workgroupBarrier();
    var s = v;
    for (var off = 1u; off < WG; off = off * 2u) {
        var add = 0u;
        if (t + off < WG) { add = part[t + off]; }
        workgroupBarrier();
        s = s + add;
        part[t] = s;
        workgroupBarrier();
    }
    let r = s - v;
    workgroupBarrier();
    return r;
}

fn prefix_excl(t: u32, v: u32) -> u32 {
    part[t] = v;
    workgroupBarrier();
    var s = v;
    for (var off = 1u; off < WG; off = off * 2u) {
        var add = 0u;
        if (t >= off) { add = part[t - off]; }
        workgroupBarrier();
        s = s + add;
        part[t] = s;
        workgroupBarrier();
    }
    let r = s - v;
    workgroupBarrier();
    return r;
}

fn sum_f(t: u32, v: f32) -> f32 {
    fpart[t] = v;
    workgroupBarrier();
    for (var off = WG / 2u; off > 0u; off = off / 2u) {
        if (t < off) { fpart[t] = fpart[t] + fpart[t + off]; }
        workgroupBarrier();
    }
    let r = fpart[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    let n = P.n;
    let per = (n + WG - 1u) / WG;
    let i0 = min(t * per, n);
    let i1 = min(i0 + per, n);

    // RMSNorm (no scale): r = 1 / sqrt(mean(x^2) + eps)
    var r = 1.0;
    if (P.norm != 0u) {
        var ss = 0.0;
        for (var i = i0; i < i1; i++) { let v = x[i]; ss = fma(v, v, ss); }
        ss = sum_f(t, ss);
        r = 1.0 / sqrt(ss / f32(n) + P.eps);
    }

    // how many inputs to keep
    var k = n;
    if (P.mode == 0u) { k = min(P.k, n); }
    if (P.mode == 2u) {
        var c = 0u;
        if (P.last == 0u) {
            for (var i = i0; i < i1; i++) { c += select(0u, 1u, bitcast<f32>(key_bits(i, r)) > P.thr); }
            c = suffix_excl(t, c) + c;   // thread 0 holds the total
        }
        if (t == 0u) {
            var over = state.over;
            if (P.first != 0u) { over = 0.0; }
            var want: f32;
            if (P.last != 0u) { want = P.plan - over / P.cost; }
            else { want = f32(c) * (1.0 - over / P.remain); }
            var kk: u32;
            if (want < 1.0) { kk = 1u; } else if (want > f32(n)) { kk = n; } else { kk = u32(round(want)); }
            state.over = over + (f32(kk) - P.plan) * P.cost;
            bcast[2] = kk;
        }
        workgroupBarrier();
        k = workgroupUniformLoad(&bcast[2]);
    }

    // the threshold key T and how many keys equal to T to take (Top-K modes, k < n)
    let topk = (P.mode == 0u || P.mode == 2u) && k < n;
    var tbits = 0u;
    var need_eq = 0u;
    if (topk) {
        var prefix = 0u;
        var need = k;
        for (var ps = 0u; ps < 3u; ps++) {
            var shift = 20u; var bins = 2048u; var known = 0u;   // bits above the digit already fixed
            if (ps == 1u) { shift = 9u; known = 0xfff00000u; }
            if (ps == 2u) { shift = 0u; bins = 512u; known = 0xfffffe00u; }
            for (var b = t; b < 2048u; b += WG) { atomicStore(&hist[b], 0u); }
            workgroupBarrier();
            for (var i = i0; i < i1; i++) {
                let kb = key_bits(i, r);
                if ((kb & known) == prefix) { atomicAdd(&hist[(kb >> shift) & (bins - 1u)], 1u); }
            }
            workgroupBarrier();
            let per_b = bins / WG;   // 8 or 2 bins per thread
            var s = 0u;
            for (var b = 0u; b < per_b; b++) { s += atomicLoad(&hist[t * per_b + b]); }
            let above = suffix_excl(t, s);   // keys in higher bins
            if (above < need && above + s >= need) {
                var acc = above;
                for (var b = per_b; b > 0u; b--) {
                    let bin = t * per_b + b - 1u;
                    let h = atomicLoad(&hist[bin]);
                    if (acc + h >= need) { bcast[0] = prefix | (bin << shift); bcast[1] = need - acc; break; }
                    acc += h;
                }
            }
            workgroupBarrier();
            prefix = workgroupUniformLoad(&bcast[0]);
            need = workgroupUniformLoad(&bcast[1]);
        }
        tbits = prefix;
        need_eq = need;
    }

    // compaction: each thread its slice, in index order
    var n_gt = 0u; var n_eq = 0u;
    for (var i = i0; i < i1; i++) {
        var take = true;
        if (topk) { let kb = key_bits(i, r); n_gt += select(0u, 1u, kb > tbits); n_eq += select(0u, 1u, kb == tbits); }
        else if (P.mode == 1u) { n_gt += select(0u, 1u, bitcast<f32>(key_bits(i, r)) > P.thr); }
        else { n_gt += 1u; }
    }
    let eq_before = prefix_excl(t, n_eq);
    var eq_take = 0u;
    if (topk && eq_before < need_eq) { eq_take = min(n_eq, need_eq - eq_before); }
    let mine = n_gt + eq_take;
    var o = prefix_excl(t, mine);
    let G = n / 32u;
    for (var g = t; g < G; g += WG) { atomicStore(&gmax[g], 0u); }
    workgroupBarrier();
    var eq_seen = 0u;
    for (var i = i0; i < i1; i++) {
        var take = true;
        if (topk) {
            let kb = key_bits(i, r);
            take = kb > tbits;
            if (kb == tbits) { take = eq_seen < eq_take; eq_seen += 1u; }
        } else if (P.mode == 1u) {
            take = bitcast<f32>(key_bits(i, r)) > P.thr;
        }
        if (take) {
            let v = value(i, r);
            sel[4u + o] = i;
            sel[4u + n + o] = bitcast<u32>(v);
            if (P.quant != 0u) { atomicMax(&gmax[i / 32u], bitcast<u32>(abs(v))); }
            o += 1u;
        }
    }
    let total = suffix_excl(t, mine) + mine;   // thread 0: all selected
    if (t == 0u) {
        sel[0] = total;
        if (P.stat < 4u) { atomicAdd(&state.rows[P.stat], total); }
    }
    if (P.quant == 0u) { return; }
    // Q8_0 codes of the selected values per group of 32: dx = max |x| / 127, q = round(x / dx)
    // (lr_qsel_build: a group with a NaN or Inf gets dx NaN, a tiny max zero codes)
    workgroupBarrier();
    for (var g = t; g < G; g += WG) {
        let m = atomicLoad(&gmax[g]);
        var dx = bitcast<f32>(m) / 127.0;
        if (m >= 0x7f800000u) { dx = bitcast<f32>(0x7fc00000u); }
        sel[4u + 2u * n + g] = bitcast<u32>(dx);
    }
    storageBarrier();
    workgroupBarrier();
    o = prefix_excl(t, mine);
    for (var j = o; j < o + mine; j++) {
        let v = bitcast<f32>(sel[4u + n + j]);
        let dx = bitcast<f32>(sel[4u + 2u * n + sel[4u + j] / 32u]);
        var id = 0.0;
        if (dx > 0.0) { id = 1.0 / dx; }
        if (id > 3.4028234e38) { id = 0.0; }
        var q = round(v * id);
        if (q != q) { q = 0.0; }
        sel[4u + n + j] = bitcast<u32>(clamp(q, -127.0, 127.0));
    }
}
