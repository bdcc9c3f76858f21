// select.wgsl's selection (same Params, same output words, same rules: Top-K ties to the lower
// index, threshold, budget, all) with subgroup operations, for adapters that grant `subgroups`.
// select.wgsl spends its time in barriers (a 256-thread scan is 17 of them, ~170 a selection) and
// in each thread's serial walk over a contiguous slice; here:
// - every subgroup owns a contiguous range of inputs and walks it in chunks of its width (lane l
//   takes input base + l: coalesced), four chunks a step (their loads in flight together), so the
//   compaction keeps index order with ballots (subgroupBallot, countOneBits) and only the
//   subgroups' totals cross a barrier;
// - mode 3 (every input: s = 0, dense inputs) skips keys, search and compaction: input i to slot i;
// - the keys are computed once: for n <= 4096 (a lane's inputs one step of four chunks) kept in
//   registers with x and the slots, in a pipeline of its own (override constant ONE, gpu_device.c),
//   else in a scratch buffer (keys), each thread reading back only the ones it wrote;
// - the k-th largest key T comes from a digit search, 8 bits a level from the top (4 levels at
//   most): a 256-bin histogram in workgroup memory (one atomic per chunk whose lanes share the
//   digit, as the exponent's bits mostly do), the bin found by subgroup scans; it stops early
//   when a digit's keys and those above make exactly the count (no tie to cut). A counting pass
//   then gives each subgroup its keys above T and equal to T; (12 / 12 / 7-bit digits, one level
//   fewer, measured slower on the H200: the 4096-bin clears and scans cost more)
// - 1024 threads: on a GPU every pass is a few dependent loads per thread, and their latency is
//   what a selection costs (256 threads: 4x as many, measured 43-80 us a selection on the H200).
// H200, 7B shape, GPU time per dependent dispatch (tools/gpu_kernel_bench.py): Top-K at s = 0.4
// 14.7-17.8 us (n = 4096) and 29 us (11008), all inputs 4.3-8.2 us (BENCHMARKS.md). Subgroups must
// be laid out by local index (lid / size), true of Vulkan's NVIDIA, AMD and Mesa drivers and
// Metal, of 4 lanes or more (WebGPU's minimum; gpu_device.c checks the workgroup limits); tests
// compare every mode with the CPU and with select.wgsl.
// (no `enable subgroups;`: naga takes subgroup builtins once the device grants the feature)

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
@group(0) @binding(6) var<storage, read_write> keys: array<u32>;   // scratch, n words

const WG: u32 = 1024u;
override ONE: bool = false;      // the pipeline for n <= 4096 (gpu_device.c): keys in registers
const MAX_SG: u32 = 256u;        // subgroups of 4 lanes or more
const MAX_GROUPS: u32 = 1024u;   // n <= 32768 (checked at load)
var<workgroup> hist: array<atomic<u32>, 256>;   // a digit's 256 bins
var<workgroup> tree: array<f32, 256>;
var<workgroup> sgc: array<vec2<u32>, MAX_SG>;  // per subgroup: keys above T, keys equal to T
var<workgroup> gmax: array<atomic<u32>, MAX_GROUPS>;
var<workgroup> bc: vec4<u32>;
var<workgroup> gid: array<f32, MAX_GROUPS>;   // per group: 1 / dx as code() takes it (set_groups)

fn key_of(i: u32, xi: f32, r: f32) -> u32 {   // xi = x[i]
    var v = xi * r;
    if (P.key_kind == 1u) { let g = gate[i]; v = g / (1.0 + exp(-g)); }
    var kf = abs(v);
    if (P.has_score != 0u) { kf = kf * score[i]; }
    return bitcast<u32>(kf) & 0x7fffffffu;
}

const INV: u32 = 0xffffffffu;   // no input (keys are below 2^31)

// Four chunks a step: a lane's inputs i0 + c + {0, sg, 2 sg, 3 sg}, loaded together so that their
// latencies overlap (one chunk a step waited on each load in turn: 11 round trips a pass at n =
// 11008); ok: inside the subgroup's range and below n
fn quad(i0: u32, c: u32, sg: u32) -> vec4<u32> { return vec4<u32>(i0 + c) + vec4<u32>(0u, sg, 2u * sg, 3u * sg); }
fn quad_ok(c: u32, sg: u32, per_sg: u32, ii: vec4<u32>, n: u32) -> vec4<bool> {
    let cc = vec4<u32>(c) + vec4<u32>(0u, sg, 2u * sg, 3u * sg);
    return (cc < vec4<u32>(per_sg)) & (ii < vec4<u32>(n));
}
fn keys4(ii: vec4<u32>, ok: vec4<bool>, n: u32) -> vec4<u32> {
    let cl = min(ii, vec4<u32>(n - 1u));
    return select(vec4<u32>(INV), vec4<u32>(keys[cl.x], keys[cl.y], keys[cl.z], keys[cl.w]), ok);
}
fn count4(b: vec4<bool>) -> u32 { let v = select(vec4<u32>(0u), vec4<u32>(1u), b); return v.x + v.y + v.z + v.w; }

// x[i .. i + 3] (indices clamped below n), and their squares added into ss in order, those below j1
fn x4(i: u32, n: u32) -> vec4<f32> {
    let c = min(vec4<u32>(i) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(n - 1u));
    return vec4<f32>(x[c.x], x[c.y], x[c.z], x[c.w]);
}
fn sq4(ss: f32, v: vec4<f32>, i: u32, j1: u32) -> f32 {
    var s = ss;
    if (i < j1) { s = fma(v.x, v.x, s); }
    if (i + 1u < j1) { s = fma(v.y, v.y, s); }
    if (i + 2u < j1) { s = fma(v.z, v.z, s); }
    if (i + 3u < j1) { s = fma(v.w, v.w, s); }
    return s;
}

// a key into the digit histogram: one atomic for a chunk whose lanes share the digit
fn hist_add(kb: u32, known: u32, prefix: u32, sh: u32, lane: u32, sg: u32) {
    var d = 256u;
    if (kb != INV && (kb & known) == prefix) { d = (kb >> sh) & 255u; }
    let f = subgroupBroadcastFirst(d);
    if (subgroupAll(d == f)) {
        if (lane == 0u && f < 256u) { atomicAdd(&hist[f], sg); }
    } else if (d < 256u) {
        atomicAdd(&hist[d], 1u);
    }
}

// a Q8_0 group's max |value| (bits), for the values of a chunk (sg <= 32: inside one group)
fn group_max(i: u32, ok: bool, m: u32, lane: u32, sg: u32) {
    if (sg <= 32u) {
        let gm = subgroupMax(m);
        if (lane == 0u && ok) { atomicMax(&gmax[i / 32u], gm); }
    } else if (ok) {
        atomicMax(&gmax[i / 32u], m);
    }
}

// lr_qsel_build's codes: dx = max |x| / 127 of the group (NaN with a NaN or Inf), q = round(v / dx)
fn group_dx(g: u32) -> f32 {
    let mb = atomicLoad(&gmax[g]);
    var dx = bitcast<f32>(mb) / 127.0;
    if (mb >= 0x7f800000u) { dx = bitcast<f32>(0x7fc00000u); }
    return dx;
}
fn inv_dx(dx: f32) -> f32 {
    var id = 0.0;
    if (dx > 0.0) { id = 1.0 / dx; }
    if (id > 3.4028234e38) { id = 0.0; }
    return id;
}
// the code of v in a group whose 1 / dx is id (inv_dx)
fn code(v: f32, id: f32) -> f32 {
    var q = round(v * id);
    if (q != q) { q = 0.0; }
    return clamp(q, -127.0, 127.0);
}
// every group's dx into sel and its 1 / dx into gid, once (a division or two a group instead of
// a key); all threads call it after the group maxima are complete (its barrier publishes gid)
fn set_groups(lid: u32, G: u32, n: u32) {
    for (var g = lid; g < G; g += WG) {
        let dx = group_dx(g);
        sel[4u + 2u * n + g] = bitcast<u32>(dx);
        gid[g] = inv_dx(dx);
    }
    workgroupBarrier();
}

// mode 3: input i (ok) into slot i, its value v (or, with quant, its group's max |v|)
fn put_all(i: u32, ok: bool, v: f32, n: u32, lane: u32, sg: u32) {
    if (ok) {
        sel[4u + i] = i;
        if (P.quant == 0u) { sel[4u + n + i] = bitcast<u32>(v); }
    }
    if (P.quant != 0u) { group_max(i, ok, select(0u, bitcast<u32>(abs(v)), ok), lane, sg); }
}
// mode 3 with quant: the code of input i (set_groups wrote the groups' dx)
fn put_code(i: u32, ok: bool, v: f32, n: u32) {
    if (ok) { sel[4u + n + i] = bitcast<u32>(code(v, gid[i / 32u])); }
}

// a ballot's lanes below `lane`, and all of them: the scans of a 0 / 1 value without a scan's steps
// (lane l is bit l % 32 of word l / 32)
fn below(b: vec4<u32>, lane: u32) -> u32 {
    if (lane < 32u) { return countOneBits(b.x & ((1u << lane) - 1u)); }   // the other words: lanes >= 32
    let lo = vec4<u32>(0u, 32u, 64u, 96u);
    let l = vec4<u32>(lane);
    let full = l >= lo + vec4<u32>(32u);
    let part = (vec4<u32>(1u) << ((l - lo) & vec4<u32>(31u))) - vec4<u32>(1u);
    let m = select(select(vec4<u32>(0u), part, l >= lo), vec4<u32>(0xffffffffu), full);
    let c = countOneBits(b & m);
    return c.x + c.y + c.z + c.w;
}
fn ones(b: vec4<u32>) -> u32 { let c = countOneBits(b); return c.x + c.y + c.z + c.w; }

// one chunk of the compaction: the lane's input i (ok) with key kb and value xv * r
struct Cut { topk: bool, tb: u32, teq: u32, eq_take: u32, r: f32 }
fn compact(i: u32, ok: bool, kb: u32, xv: f32, cut: Cut, n: u32, lane: u32, sg: u32, base: ptr<function, u32>,
           eq_seen: ptr<function, u32>) -> u32 {   // the slot of input i, INV when not taken
    var take = false; var eq = false;
    if (ok) {
        if (cut.topk) { take = kb > cut.tb; eq = kb == cut.teq; }
        else if (P.mode == 1u) { take = bitcast<f32>(kb) > P.thr; }
        else { take = true; }
    }
    let be = subgroupBallot(eq);
    let rank = *eq_seen + below(be, lane);
    take = take || (eq && rank < cut.eq_take);
    let bt = subgroupBallot(take);
    let o = *base + below(bt, lane);
    var m = 0u;
    if (take) {
        let v = xv * cut.r;
        sel[4u + o] = i;
        sel[4u + n + o] = bitcast<u32>(v);
        m = bitcast<u32>(abs(v));
    }
    if (P.quant != 0u) { group_max(i, ok, m, lane, sg); }
    *base += ones(bt);
    *eq_seen += ones(be);
    return select(INV, o, take);
}

@compute @workgroup_size(1024)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) lane: u32,
        @builtin(subgroup_size) sg: u32) {
    let n = P.n;
    let nsg = WG / sg;
    let s_id = lid / sg;
    let per_sg = (n + WG - 1u) / WG * sg;   // inputs per subgroup: a whole number of chunks
    let i0 = s_id * per_sg + lane;          // this lane's inputs: i0, i0 + sg, ... (below n)
    let G = n / 32u;
    for (var g = lid; g < G; g += WG) { atomicStore(&gmax[g], 0u); }   // ordered by the barriers below

    // RMSNorm (no scale): r = 1 / sqrt(mean(x^2) + eps), summed as select.wgsl sums (256 slices,
    // then a tree), so that both kernels give the same r on every device. (A sum in two floats
    // would match the CPU's double one more often on NVIDIA, but lavapipe neither fuses fma nor
    // keeps a two-sum's error: no error-free transform holds there.)
    var r = 1.0;
    if (P.norm != 0u) {
        let per = (n + 255u) / 256u;
        var ss = 0.0;
        if (lid < 256u) {
            let j0 = min(lid * per, n);
            let j1 = min(j0 + per, n);
            for (var i = j0; i < j1; i += 16u) {   // sixteen loads in flight (a slice at n <= 4096), added in index order
                let v0 = x4(i, n); let v1 = x4(i + 4u, n); let v2 = x4(i + 8u, n); let v3 = x4(i + 12u, n);
                ss = sq4(ss, v0, i, j1); ss = sq4(ss, v1, i + 4u, j1);
                ss = sq4(ss, v2, i + 8u, j1); ss = sq4(ss, v3, i + 12u, j1);
            }
            tree[lid] = ss;
        }
        workgroupBarrier();
        // the tree's levels across subgroups with barriers, then the levels inside subgroup 0 by
        // shuffles (lane l adds lane l + off, as tree[l] + tree[l + off]: the same sums, 5 barriers
        // fewer on 32 lanes)
        for (var off = 128u; off >= sg; off = off / 2u) {
            if (lid < off) { tree[lid] = tree[lid] + tree[lid + off]; }
            workgroupBarrier();
        }
        if (s_id == 0u) {
            var v = tree[min(lane, 255u)];
            for (var off = min(sg, 256u) / 2u; off > 0u; off = off / 2u) { v = v + subgroupShuffleDown(v, off); }
            if (lane == 0u) { tree[0] = v; }
        }
        workgroupBarrier();
        r = 1.0 / sqrt(tree[0] / f32(n) + P.eps);
    }

    // mode 3 (every input: s = 0, dense inputs, adapters): no keys, no search, no scans; input i
    // goes to slot i, values and codes as below (the same words)
    if (P.mode == 3u) {
        workgroupBarrier();   // gmax cleared
        for (var b = 0u; b < n; b += 4u * WG) {
            let ii = vec4<u32>(b + lid) + vec4<u32>(0u, WG, 2u * WG, 3u * WG);
            let ok = ii < vec4<u32>(n);
            let cl = min(ii, vec4<u32>(n - 1u));
            let v = vec4<f32>(x[cl.x], x[cl.y], x[cl.z], x[cl.w]) * r;
            put_all(ii.x, ok.x, v.x, n, lane, sg); put_all(ii.y, ok.y, v.y, n, lane, sg);
            put_all(ii.z, ok.z, v.z, n, lane, sg); put_all(ii.w, ok.w, v.w, n, lane, sg);
        }
        if (lid == 0u) {
            sel[0] = n;
            if (P.stat < 4u) { atomicAdd(&state.rows[P.stat], n); }
        }
        if (P.quant == 0u) { return; }
        workgroupBarrier();
        set_groups(lid, G, n);
        for (var b = 0u; b < n; b += 4u * WG) {
            let ii = vec4<u32>(b + lid) + vec4<u32>(0u, WG, 2u * WG, 3u * WG);
            let ok = ii < vec4<u32>(n);
            let cl = min(ii, vec4<u32>(n - 1u));
            let v = vec4<f32>(x[cl.x], x[cl.y], x[cl.z], x[cl.w]) * r;
            put_code(ii.x, ok.x, v.x, n); put_code(ii.y, ok.y, v.y, n);
            put_code(ii.z, ok.z, v.z, n); put_code(ii.w, ok.w, v.w, n);
        }
        return;
    }

    // the keys, once; the count of keys above the threshold (mode 1's selection, the budget's count)
    // one: a lane's inputs are one step of four chunks (n <= 4096 on 32 lanes): its keys and x stay in
    // registers (kreg, xreg) for every pass, and its slots (oreg) for the codes; else keys in a buffer
    let one = ONE && per_sg <= 4u * sg;
    var kreg = vec4<u32>(INV); var xreg = vec4<f32>(0.0); var oreg = vec4<u32>(INV);
    var above = 0u; var valid = 0u;
    for (var c = 0u; c < per_sg; c += 4u * sg) {
        let ii = quad(i0, c, sg);
        let ok = quad_ok(c, sg, per_sg, ii, n);
        let cl = min(ii, vec4<u32>(n - 1u));
        let xv = vec4<f32>(x[cl.x], x[cl.y], x[cl.z], x[cl.w]);
        let kb = vec4<u32>(key_of(cl.x, xv.x, r), key_of(cl.y, xv.y, r), key_of(cl.z, xv.z, r), key_of(cl.w, xv.w, r));
        if (one) {
            kreg = select(vec4<u32>(INV), kb, ok); xreg = xv;
        } else {
            if (ok.x) { keys[ii.x] = kb.x; }
            if (ok.y) { keys[ii.y] = kb.y; }
            if (ok.z) { keys[ii.z] = kb.z; }
            if (ok.w) { keys[ii.w] = kb.w; }
        }
        above += count4(ok & (bitcast<vec4<f32>>(kb) > vec4<f32>(P.thr)));
        valid += count4(ok);
    }
    let sg_above = subgroupAdd(above);

    // how many inputs to keep
    var k = n;
    if (P.mode == 0u) { k = min(P.k, n); }
    if (P.mode == 2u) {
        if (lane == 0u) { sgc[s_id] = vec2<u32>(sg_above, 0u); }
        workgroupBarrier();
        var cnt = 0u;
        if (s_id == 0u) {   // subgroup 0 adds the subgroups' counts, lane l those of its run (integers)
            let m = (nsg + sg - 1u) / sg;
            var c = 0u;
            for (var s = lane * m; s < min(lane * m + m, nsg); s++) { c += sgc[s].x; }
            cnt = subgroupAdd(c);
        }
        if (lid == 0u) {
            var over = state.over;
            if (P.first != 0u) { over = 0.0; }
            var want: f32;
            if (P.last != 0u) { want = P.plan - over / P.cost; }
            else { want = f32(cnt) * (1.0 - over / P.remain); }
            var kk: u32;
            if (want < 1.0) { kk = 1u; } else if (want > f32(n)) { kk = n; } else { kk = u32(round(want)); }
            state.over = over + (f32(kk) - P.plan) * P.cost;
            bc = vec4<u32>(kk, 0u, 0u, 0u);
        }
        k = workgroupUniformLoad(&bc).x;
    }

    // T: keys above tb are all taken, and the first need_eq keys equal to teq (index order).
    // my_gt / my_eq: this subgroup's keys above tb / equal to teq (lane 0 keeps them)
    let topk = (P.mode == 0u || P.mode == 2u) && k < n;
    var tb = 0u; var teq = 0xffffffffu; var need_eq = 0u;
    var my_gt = subgroupAdd(valid); var my_eq = 0u;        // all
    if (P.mode == 1u) { my_gt = sg_above; }
    if (topk) {
        var prefix = 0u; var known = 0u; var need = k;
        for (var lev = 0u; lev < 4u; lev++) {
            let sh = 24u - 8u * lev;
            if (lid < 256u) { atomicStore(&hist[lid], 0u); }
            workgroupBarrier();
            for (var c = 0u; c < per_sg; c += 4u * sg) {
                let ii = quad(i0, c, sg);
                var kb = kreg;
                if (!one) { kb = keys4(ii, quad_ok(c, sg, per_sg, ii, n), n); }
                hist_add(kb.x, known, prefix, sh, lane, sg);
                hist_add(kb.y, known, prefix, sh, lane, sg);
                hist_add(kb.z, known, prefix, sh, lane, sg);
                hist_add(kb.w, known, prefix, sh, lane, sg);
            }
            workgroupBarrier();
            // thread t < 256 holds bin 255 - t: the keys in it and in the bins above, by scans
            var h = 0u; var incl = 0u;
            if (lid < 256u) {
                h = atomicLoad(&hist[255u - lid]);
                incl = subgroupInclusiveAdd(h);
                if (lane == sg - 1u) { sgc[s_id] = vec2<u32>(incl, 0u); }
            }
            workgroupBarrier();
            if (lid < 256u) {
                for (var s = 0u; s < s_id; s++) { incl += sgc[s].x; }
                if (incl >= need && incl - h < need) {
                    bc = vec4<u32>(prefix | ((255u - lid) << sh), need - (incl - h), select(0u, 1u, incl == need), 0u);
                }
            }
            let b = workgroupUniformLoad(&bc);
            prefix = b.x; need = b.y;
            known = known | (255u << sh);
            if (b.z != 0u) {   // the bin's keys complete the count: take every key >= prefix
                tb = prefix - 1u;   // prefix > 0: not every key is taken
                teq = 0xffffffffu; need_eq = 0u;
                break;
            }
            tb = prefix; teq = prefix; need_eq = need;
        }
        var gt = 0u; var eq = 0u;   // this subgroup's keys above tb and equal to teq
        for (var c = 0u; c < per_sg; c += 4u * sg) {
            let ii = quad(i0, c, sg);
            let ok = quad_ok(c, sg, per_sg, ii, n);
            var kb = kreg;
            if (!one) { kb = keys4(ii, ok, n); }
            gt += count4(ok & (kb > vec4<u32>(tb)));
            eq += count4(ok & (kb == vec4<u32>(teq)));
        }
        my_gt = subgroupAdd(gt); my_eq = subgroupAdd(eq);
    }

    // compaction in index order: each subgroup its range, at the offset of the subgroups before it
    if (lane == 0u) { sgc[s_id] = vec2<u32>(my_gt, my_eq); }
    workgroupBarrier();
    // subgroup 0 gives each subgroup s its offset and its share of the keys equal to T (the first
    // need_eq of them in index order) into sgc[s], the total into bc: lane l takes the run of
    // subgroups [l m, l m + m) (m = 1 on 32 lanes), the runs joined by scans (integers: exact).
    // (every thread walked all subgroups before: 32 shared loads each, ~1 us a selection on the H200)
    if (s_id == 0u) {
        let m = (nsg + sg - 1u) / sg;
        let s0 = lane * m; let s1 = min(s0 + m, nsg);
        var ys = 0u; var xs = 0u;
        for (var s = s0; s < s1; s++) { ys += sgc[s].y; }
        let eq0 = subgroupExclusiveAdd(ys);
        var eqb = eq0;
        for (var s = s0; s < s1; s++) {
            let v = sgc[s];
            xs += v.x + min(v.y, need_eq - min(need_eq, eqb));
            eqb += v.y;
        }
        var b = subgroupExclusiveAdd(xs);
        let tot = subgroupAdd(xs);
        eqb = eq0;
        for (var s = s0; s < s1; s++) {
            let v = sgc[s];
            let tk = min(v.y, need_eq - min(need_eq, eqb));
            sgc[s] = vec2<u32>(b, tk);
            b += v.x + tk;
            eqb += v.y;
        }
        if (lane == 0u) { bc = vec4<u32>(tot, 0u, 0u, 0u); }
    }
    workgroupBarrier();
    let base0 = sgc[s_id];
    var base = base0.x; let eq_take = base0.y; let total = bc.x;
    let cut = Cut(topk, tb, teq, eq_take, r);
    var eq_seen = 0u;
    for (var c = 0u; c < per_sg; c += 4u * sg) {
        let ii = quad(i0, c, sg);
        let ok = quad_ok(c, sg, per_sg, ii, n);
        var kb = kreg; var xv = xreg;
        if (!one) {
            kb = keys4(ii, ok, n);
            let cl = min(ii, vec4<u32>(n - 1u));
            xv = vec4<f32>(x[cl.x], x[cl.y], x[cl.z], x[cl.w]);
        }
        let live = (vec4<u32>(c) + vec4<u32>(0u, sg, 2u * sg, 3u * sg)) < vec4<u32>(per_sg);   // whole chunks
        oreg.x = compact(ii.x, ok.x, kb.x, xv.x, cut, n, lane, sg, &base, &eq_seen);
        if (live.y) { oreg.y = compact(ii.y, ok.y, kb.y, xv.y, cut, n, lane, sg, &base, &eq_seen); }
        if (live.z) { oreg.z = compact(ii.z, ok.z, kb.z, xv.z, cut, n, lane, sg, &base, &eq_seen); }
        if (live.w) { oreg.w = compact(ii.w, ok.w, kb.w, xv.w, cut, n, lane, sg, &base, &eq_seen); }
    }
    if (lid == 0u) {
        sel[0] = total;
        if (P.stat < 4u) { atomicAdd(&state.rows[P.stat], total); }
    }
    if (P.quant == 0u) { return; }
    // Q8_0 codes of the selected values per group of 32: dx = max |x| / 127, q = round(x / dx)
    // (lr_qsel_build: a group with a NaN or Inf gets dx NaN, a tiny max zero codes)
    workgroupBarrier();
    set_groups(lid, G, n);
    if (one) {   // this lane's taken inputs, from its registers
        let ii = quad(i0, 0u, sg);
        let v = xreg * r;
        if (oreg.x != INV) { sel[4u + n + oreg.x] = bitcast<u32>(code(v.x, gid[ii.x / 32u])); }
        if (oreg.y != INV) { sel[4u + n + oreg.y] = bitcast<u32>(code(v.y, gid[ii.y / 32u])); }
        if (oreg.z != INV) { sel[4u + n + oreg.z] = bitcast<u32>(code(v.z, gid[ii.z / 32u])); }
        if (oreg.w != INV) { sel[4u + n + oreg.w] = bitcast<u32>(code(v.w, gid[ii.w / 32u])); }
        return;
    }
    storageBarrier();
    for (var b = 0u; b < total; b += 4u * WG) {
        let jj = vec4<u32>(b + lid) + vec4<u32>(0u, WG, 2u * WG, 3u * WG);
        let ok = jj < vec4<u32>(total);
        let cl = min(jj, vec4<u32>(total - 1u));
        let v = bitcast<vec4<f32>>(vec4<u32>(sel[4u + n + cl.x], sel[4u + n + cl.y], sel[4u + n + cl.z], sel[4u + n + cl.w]));
        let row = vec4<u32>(sel[4u + cl.x], sel[4u + cl.y], sel[4u + cl.z], sel[4u + cl.w]);
        if (ok.x) { sel[4u + n + jj.x] = bitcast<u32>(code(v.x, gid[row.x / 32u])); }
        if (ok.y) { sel[4u + n + jj.y] = bitcast<u32>(code(v.y, gid[row.y / 32u])); }
        if (ok.z) { sel[4u + n + jj.z] = bitcast<u32>(code(v.z, gid[row.z / 32u])); }
        if (ok.w) { sel[4u + n + jj.w] = bitcast<u32>(code(v.w, gid[row.w / 32u])); }
    }
}
