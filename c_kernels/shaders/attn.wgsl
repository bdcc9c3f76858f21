// Attention of one token (forward.c: lr_qkv_extras, lr_rope, lr_kv_write, lr_attend_head).
//
// rope_head: a head of q, k or v. q and k heads: the optional per-head RMSNorm (Qwen3's q/k
// norms), then RoPE on the pairs (2i, 2i + 1) with the token's cos / sin (computed on the CPU in
// double, as lr_rope_angles); q is written back, k and v into the cache row of position pos (f16:
// rounded as lr_kv_store, two values per u32; or f32).
// attend: one workgroup per query head: rope_head for its q head and its group's k and v heads
// (once a kernel of its own, rope_kv: a dispatch fewer a layer now), then over the positions
// 0..pos: scores q . K[t] / sqrt(hd), softmax, out = sum_t w[t] V[t]; grouped-query: head h reads
// kv head h / (nh / nkv).

struct Params { nh: u32, nkv: u32, hd: u32, f16: u32, has_qn: u32, has_kn: u32, n_ctx: u32, pad: u32, eps: f32 }
struct Step { pos: u32, pad0: u32, pad1: u32, pad2: u32, cs: array<vec2<f32>> }   // (cos, sin) per pair

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> step: Step;
@group(0) @binding(2) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(3) var<storage, read> qn: array<f32>;
@group(0) @binding(4) var<storage, read> kn: array<f32>;
@group(0) @binding(5) var<storage, read_write> kc: array<u32>;   // [n_ctx][nkv hd] f16 pairs or f32
@group(0) @binding(6) var<storage, read_write> vc: array<u32>;
@group(0) @binding(7) var<storage, read_write> att: array<f32>;  // [nh][n_ctx] scores, then weights
@group(0) @binding(8) var<storage, read_write> ao: array<f32>;   // [nh hd]

const WG: u32 = 512u;   // positions in parallel (scores), and position parts x value pairs
var<workgroup> red: array<f32, 512>;

fn wg_sum(t: u32, v: f32, n: u32) -> f32 {
    red[t] = v;
    workgroupBarrier();
    for (var off = n / 2u; off > 0u; off = off / 2u) {
        if (t < off) { red[t] = red[t] + red[t + off]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn wg_max(t: u32, v: f32, n: u32) -> f32 {
    red[t] = v;
    workgroupBarrier();
    for (var off = n / 2u; off > 0u; off = off / 2u) {
        if (t < off) { red[t] = max(red[t], red[t + off]); }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn store_pair(to_k: bool, row: u32, e: u32, a: f32, b: f32) {
    // elements e, e + 1 (e even) of cache row `row` (nkv hd values) of the keys or the values
    let i = row * P.nkv * P.hd + e;
    if (P.f16 != 0u) {
        let v = pack2x16float(vec2<f32>(a, b));
        if (to_k) { kc[i / 2u] = v; } else { vc[i / 2u] = v; }
    } else if (to_k) {
        kc[i] = bitcast<u32>(a); kc[i + 1u] = bitcast<u32>(b);
    } else {
        vc[i] = bitcast<u32>(a); vc[i + 1u] = bitcast<u32>(b);
    }
}

// head h of qkv (q heads, then k, then v): q back into qkv, k and v into the cache row pos
fn rope_head(h: u32, t: u32) {
    let hd = P.hd;
    let base = h * hd;   // q heads, then k heads, then v heads in qkv
    let is_q = h < P.nh;
    let is_k = !is_q && h < P.nh + P.nkv;
    var r = 1.0;
    if ((is_q && P.has_qn != 0u) || (is_k && P.has_kn != 0u)) {
        var ss = 0.0;
        for (var i = t; i < hd; i += WG) { let v = qkv[base + i]; ss = fma(v, v, ss); }
        ss = wg_sum(t, ss, WG);
        r = 1.0 / sqrt(ss / f32(hd) + P.eps);
    }
    let pos = step.pos;
    for (var p = t; p < hd / 2u; p += WG) {
        var x0 = qkv[base + 2u * p];
        var x1 = qkv[base + 2u * p + 1u];
        if (is_q && P.has_qn != 0u) { x0 = x0 * r * qn[2u * p]; x1 = x1 * r * qn[2u * p + 1u]; }
        if (is_k && P.has_kn != 0u) { x0 = x0 * r * kn[2u * p]; x1 = x1 * r * kn[2u * p + 1u]; }
        if (is_q || is_k) {
            let cs = step.cs[p];
            let y0 = x0 * cs.x - x1 * cs.y;
            let y1 = x0 * cs.y + x1 * cs.x;
            x0 = y0; x1 = y1;
        }
        if (is_q) { qkv[base + 2u * p] = x0; qkv[base + 2u * p + 1u] = x1; }
        else if (is_k) { store_pair(true, pos, (h - P.nh) * hd + 2u * p, x0, x1); }
        else { store_pair(false, pos, (h - P.nh - P.nkv) * hd + 2u * p, x0, x1); }
    }
}

fn k_dot(q0: u32, row: u32, kvh: u32) -> f32 {   // q . K[row] for kv head kvh
    let hd = P.hd;
    var s = 0.0;
    if (P.f16 != 0u) {
        let b = (row * P.nkv * hd + kvh * hd) / 2u;
        for (var i = 0u; i < hd / 2u; i++) {
            let k = unpack2x16float(kc[b + i]);
            s = fma(qkv[q0 + 2u * i], k.x, s);
            s = fma(qkv[q0 + 2u * i + 1u], k.y, s);
        }
    } else {
        let b = row * P.nkv * hd + kvh * hd;
        for (var i = 0u; i < hd; i++) { s = fma(qkv[q0 + i], bitcast<f32>(kc[b + i]), s); }
    }
    return s;
}

fn v_pair(row: u32, e: u32) -> vec2<f32> {   // values e, e + 1 of cache row `row`
    if (P.f16 != 0u) { return unpack2x16float(vc[(row * P.nkv * P.hd + e) / 2u]); }
    let b = row * P.nkv * P.hd + e;
    return vec2<f32>(bitcast<f32>(vc[b]), bitcast<f32>(vc[b + 1u]));
}

var<workgroup> vsum: array<vec2<f32>, 512>;

@compute @workgroup_size(512)
fn attend(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let h = wid.x;
    let t = lid.x;
    let hd = P.hd;
    let kvh = h / (P.nh / P.nkv);
    // rope_kv's work for this head first (one dispatch fewer a layer): q head h, and the k and v
    // heads of its group into the cache row pos; the workgroups of a group write the same bits there,
    // each reading back its own
    rope_head(h, t);
    rope_head(P.nh + kvh, t);
    rope_head(P.nh + P.nkv + kvh, t);
    storageBarrier();
    workgroupBarrier();
    let n = step.pos + 1u;
    let scale = 1.0 / sqrt(f32(hd));
    let a0 = h * P.n_ctx;
    var mx = -3.4028235e38;
    for (var p = t; p < n; p += WG) {
        let s = k_dot(h * hd, p, kvh) * scale;
        att[a0 + p] = s;
        mx = max(mx, s);
    }
    mx = wg_max(t, mx, WG);
    var sum = 0.0;
    for (var p = t; p < n; p += WG) { let e = exp(att[a0 + p] - mx); att[a0 + p] = e; sum += e; }
    sum = wg_sum(t, sum, WG);
    storageBarrier();
    workgroupBarrier();
    // values: thread = (pair, part); the parts split the positions, four loads in flight
    let pairs = hd / 2u;
    let parts = WG / pairs;
    let pr = t % pairs;
    let part = t / pairs;
    var acc = vec2<f32>(0.0);
    if (part < parts) {
        var p = part;
        for (; p + 3u * parts < n; p += 4u * parts) {
            let v0 = v_pair(p, kvh * hd + 2u * pr); let v1 = v_pair(p + parts, kvh * hd + 2u * pr);
            let v2 = v_pair(p + 2u * parts, kvh * hd + 2u * pr); let v3 = v_pair(p + 3u * parts, kvh * hd + 2u * pr);
            acc = fma(vec2<f32>(att[a0 + p]), v0, acc);
            acc = fma(vec2<f32>(att[a0 + p + parts]), v1, acc);
            acc = fma(vec2<f32>(att[a0 + p + 2u * parts]), v2, acc);
            acc = fma(vec2<f32>(att[a0 + p + 3u * parts]), v3, acc);
        }
        for (; p < n; p += parts) { acc = fma(vec2<f32>(att[a0 + p]), v_pair(p, kvh * hd + 2u * pr), acc); }
    }
    vsum[t] = acc;
    workgroupBarrier();
    if (t < pairs) {
        var s = vsum[t];
        for (var k = 1u; k < parts; k++) { s += vsum[k * pairs + t]; }
        s = s / sum;
        ao[h * hd + 2u * t] = s.x;
        ao[h * hd + 2u * t + 1u] = s.y;
    }
}
