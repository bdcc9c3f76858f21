// The head: logits[v] = W[v, :] . h for the output-major head W [vocab, d], h = RMSNorm(x) * g_out.
// head_prep (one workgroup): h, and for a Q8_0 / Q4_0 head its Q8_0 blocks (llama.cpp's
// activations, lr_quantize_blocks: dx = max |h| / 127 per 32, codes packed four to a word).
// head_f16 / head_f32: 32 threads per row, 8 rows per workgroup; each thread reads 16-byte pieces
// of its row (neighbours read neighbouring pieces), then the row's 32 partial sums are added in a
// tree. head_q8 / head_q4: below (64 rows a workgroup, integer dots of packed codes). The quantized
// heads are stored repacked at load (gpu.c): codes [rows][d] (Q8_0: int8; Q4_0: ggml's 16 bytes per block, element j low nibble, j + 16 high), scales [rows][d / 32] f16.
// Reference: qdot_ref (qmatvec.c), dot_rows (kernels.c).

struct Params { rows: u32, cols: u32, row0: u32, has_norm: u32, eps: f32, quant: u32, pad0: u32, pad1: u32 }

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gnorm: array<f32>;
@group(0) @binding(3) var<storage, read_write> hq: array<f32>;   // [d] h or its codes, then [d / 32] dx
@group(0) @binding(4) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read> scale: array<u32>;
@group(0) @binding(6) var<storage, read_write> logits: array<f32>;

var<workgroup> red: array<f32, 256>;
var<workgroup> pk: array<u32, 8>;   // head_prep: dx of a piece's blocks

// head_prep: 256 threads; the norm's sum in 256 strided slices and a tree, then per piece of 256
// inputs (8 blocks) the values, each block's max |h| over 32 threads in workgroup memory, and the
// codes: the same values as one thread a block (max is exact), without a thread's serial walk.
// Quantized heads get the codes packed four to a word (hq[0 .. d / 4), low byte first) and dx at
// hq[d + b]; float heads h itself in hq[0 .. d).
@compute @workgroup_size(256)
fn head_prep(@builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    let d = P.cols;
    var ss = 0.0;
    for (var i = t; i < d; i += 256u) { let v = x[i]; ss = fma(v, v, ss); }
    red[t] = ss;
    workgroupBarrier();
    for (var off = 128u; off > 0u; off = off / 2u) {
        if (t < off) { red[t] = red[t] + red[t + off]; }
        workgroupBarrier();
    }
    let r = 1.0 / sqrt(red[0] / f32(d) + P.eps);
    workgroupBarrier();
    for (var i0 = 0u; i0 < d; i0 += 256u) {   // d % 64 == 0: a piece is whole blocks (the last may be short)
        let i = i0 + t;
        var v = 0.0;
        if (i < d) {
            v = x[i] * r;
            if (P.has_norm != 0u) { v = v * gnorm[i]; }
            if (P.quant == 0u) { hq[i] = v; }
        }
        if (P.quant == 0u) { continue; }
        red[t] = abs(v);
        workgroupBarrier();
        if (t % 32u == 0u) {   // the block's max |h|; NaN (or Inf) makes dx NaN as lr_quantize_blocks
            var amax = 0.0;
            var finite = true;
            for (var j = 0u; j < 32u; j++) { let a = red[t + j]; finite = finite && a <= 3.4028235e38; amax = max(amax, a); }
            var dx = amax / 127.0;
            if (!finite) { dx = bitcast<f32>(0x7fc00000u); }
            pk[t / 32u] = bitcast<u32>(dx);
        }
        workgroupBarrier();
        let dx = bitcast<f32>(pk[t / 32u]);
        var id = 0.0;
        if (dx > 0.0) { id = 1.0 / dx; }
        if (id > 3.4028235e38) { id = 0.0; }
        var q = round(v * id);
        if (q != q) { q = 0.0; }
        red[t] = clamp(q, -127.0, 127.0);
        workgroupBarrier();
        if (t % 4u == 0u && i < d) {   // four codes into a word
            let c = vec4<i32>(i32(red[t]), i32(red[t + 1u]), i32(red[t + 2u]), i32(red[t + 3u]));
            hq[i / 4u] = bitcast<f32>(pack4xI8(c));
        }
        if (t % 32u == 0u && i < d) { hq[d + i / 32u] = dx; }
        workgroupBarrier();
    }
}

fn xv(i: u32) -> vec4<f32> { return vec4<f32>(hq[i], hq[i + 1u], hq[i + 2u], hq[i + 3u]); }
fn scale_of(r: u32, b: u32) -> f32 {   // f16 scale of block b of local row r
    let i = r * (P.cols / 32u) + b;
    let s = unpack2x16float(scale[i / 2u]);
    return select(s.x, s.y, (i & 1u) == 1u);
}

// the row's 32 partial sums (threads 32 j .. 32 j + 31 of the workgroup) into logits
fn finish(lane: u32, row: u32, t: u32, s: f32) {
    red[t] = s;
    workgroupBarrier();
    for (var off = 16u; off > 0u; off = off / 2u) {
        if (lane < off) { red[t] = red[t] + red[t + off]; }
        workgroupBarrier();
    }
    if (lane == 0u && row < P.rows) { logits[P.row0 + row] = red[t]; }
}

// head_q8 / head_q4: 64 rows a workgroup, 8 a group of 32 threads; the packed codes of h in
// workgroup memory (pieces of XV vec4 words), each thread 16 bytes of each of its group's 8 rows at
// a time (8 loads in flight), the integer dot of their codes with h's (dot4I8Packed: exact) times
// the block's scale * dx; then a row's 32 partial sums added in lane order.
const XV: u32 = 256u;         // vec4 words of packed h per piece: 4096 inputs
const HR: u32 = 64u;          // rows per workgroup (gpu_internal.h's HEAD_ROWS)
var<workgroup> xs: array<vec4<u32>, XV>;
var<workgroup> part: array<f32, 2048>;   // [row][lane]

fn sc_dx(row: u32, b: u32) -> f32 { return scale_of(row, b) * hq[P.cols + b]; }

fn head_rows(wid: u32, t: u32) -> array<u32, 8> {   // the group's rows, the last one repeated past the end
    let r0 = wid * HR + (t / 32u) * 8u;
    var rr: array<u32, 8>;
    for (var k = 0u; k < 8u; k++) { rr[k] = min(r0 + k, P.rows - 1u); }
    return rr;
}
fn head_finish(wid: u32, t: u32, s0: vec4<f32>, s1: vec4<f32>) {
    let lane = t % 32u; let g = t / 32u;
    let base = g * 256u + lane;
    part[base] = s0.x; part[base + 32u] = s0.y; part[base + 64u] = s0.z; part[base + 96u] = s0.w;
    part[base + 128u] = s1.x; part[base + 160u] = s1.y; part[base + 192u] = s1.z; part[base + 224u] = s1.w;
    workgroupBarrier();
    if (t < HR) {
        var s = 0.0;
        for (var l = 0u; l < 32u; l++) { s += part[t * 32u + l]; }
        let row = wid * HR + t;
        if (row < P.rows) { logits[P.row0 + row] = s; }
    }
}
fn load_piece(t: u32, p0: u32, n: u32) {   // h's vec4 words p0 .. p0 + XV (below n)
    workgroupBarrier();
    for (var i = t; i < XV && p0 + i < n; i += 256u) {
        let o = 4u * (p0 + i);
        xs[i] = vec4<u32>(bitcast<u32>(hq[o]), bitcast<u32>(hq[o + 1u]), bitcast<u32>(hq[o + 2u]), bitcast<u32>(hq[o + 3u]));
    }
    workgroupBarrier();
}
fn dot16(v: vec4<u32>, x: vec4<u32>) -> i32 {
    return dot4I8Packed(v.x, x.x) + dot4I8Packed(v.y, x.y) + dot4I8Packed(v.z, x.z) + dot4I8Packed(v.w, x.w);
}

@compute @workgroup_size(256)
fn head_q8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x; let lane = t % 32u;
    let rr = head_rows(wid.x, t);
    let nv = P.cols / 16u;             // vec4 words of a row, and of packed h
    var s0 = vec4<f32>(0.0); var s1 = vec4<f32>(0.0);
    for (var p0 = 0u; p0 < nv; p0 += XV) {
        load_piece(t, p0, nv);
        let p1 = min(p0 + XV, nv);
        for (var vi = p0 + lane; vi < p1; vi += 32u) {
            let xw = xs[vi - p0];
            let b = vi / 2u;
            let v0 = w[rr[0] * nv + vi]; let v1 = w[rr[1] * nv + vi]; let v2 = w[rr[2] * nv + vi]; let v3 = w[rr[3] * nv + vi];
            let v4 = w[rr[4] * nv + vi]; let v5 = w[rr[5] * nv + vi]; let v6 = w[rr[6] * nv + vi]; let v7 = w[rr[7] * nv + vi];
            let d0 = vec4<f32>(f32(dot16(v0, xw)), f32(dot16(v1, xw)), f32(dot16(v2, xw)), f32(dot16(v3, xw)));
            let d1 = vec4<f32>(f32(dot16(v4, xw)), f32(dot16(v5, xw)), f32(dot16(v6, xw)), f32(dot16(v7, xw)));
            s0 = fma(d0, vec4<f32>(sc_dx(rr[0], b), sc_dx(rr[1], b), sc_dx(rr[2], b), sc_dx(rr[3], b)), s0);
            s1 = fma(d1, vec4<f32>(sc_dx(rr[4], b), sc_dx(rr[5], b), sc_dx(rr[6], b), sc_dx(rr[7], b)), s1);
        }
    }
    head_finish(wid.x, t, s0, s1);
}

// Q4_0: a block is one vec4 word; byte k holds input 32 b + k (low nibble) and + 16 (high), so the
// low nibbles meet h's words 8 b .. 8 b + 3 and the high ones 8 b + 4 .. 8 b + 7; (nibble - 8) times
// the code summed as dot(nibbles, x) - dot(8, x)
fn q4_dot(v: vec4<u32>, xl: vec4<u32>, xh: vec4<u32>) -> f32 {
    let m = vec4<u32>(0x0f0f0f0fu);
    let e = vec4<u32>(0x08080808u);
    return f32(dot16(v & m, xl) + dot16((v >> vec4<u32>(4u)) & m, xh) - dot16(e, xl) - dot16(e, xh));
}

@compute @workgroup_size(256)
fn head_q4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x; let lane = t % 32u;
    let rr = head_rows(wid.x, t);
    let nb = P.cols / 32u;             // blocks (vec4 words) of a row
    let nx = P.cols / 16u;             // vec4 words of packed h
    var s0 = vec4<f32>(0.0); var s1 = vec4<f32>(0.0);
    for (var p0 = 0u; p0 < nx; p0 += XV) {   // a piece: h words p0 .., blocks p0 / 2 ..
        load_piece(t, p0, nx);
        let b1 = min((p0 + XV) / 2u, nb);
        for (var b = p0 / 2u + lane; b < b1; b += 32u) {
            let xo = 2u * b - p0;
            let xl = xs[xo]; let xh = xs[xo + 1u];
            let v0 = w[rr[0] * nb + b]; let v1 = w[rr[1] * nb + b]; let v2 = w[rr[2] * nb + b]; let v3 = w[rr[3] * nb + b];
            let v4 = w[rr[4] * nb + b]; let v5 = w[rr[5] * nb + b]; let v6 = w[rr[6] * nb + b]; let v7 = w[rr[7] * nb + b];
            let d0 = vec4<f32>(q4_dot(v0, xl, xh), q4_dot(v1, xl, xh), q4_dot(v2, xl, xh), q4_dot(v3, xl, xh));
            let d1 = vec4<f32>(q4_dot(v4, xl, xh), q4_dot(v5, xl, xh), q4_dot(v6, xl, xh), q4_dot(v7, xl, xh));
            s0 = fma(d0, vec4<f32>(sc_dx(rr[0], b), sc_dx(rr[1], b), sc_dx(rr[2], b), sc_dx(rr[3], b)), s0);
            s1 = fma(d1, vec4<f32>(sc_dx(rr[4], b), sc_dx(rr[5], b), sc_dx(rr[6], b), sc_dx(rr[7], b)), s1);
        }
    }
    head_finish(wid.x, t, s0, s1);
}

@compute @workgroup_size(256)
fn head_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x; let lane = t % 32u;
    let row = wid.x * 8u + t / 32u;
    var s = 0.0;
    if (row < P.rows) {
        let base = row * P.cols / 8u;
        for (var p = lane; p < P.cols / 8u; p += 32u) {
            let v = w[base + p];
            let e = 8u * p;
            s += dot(vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y)), xv(e)) +
                 dot(vec4<f32>(unpack2x16float(v.z), unpack2x16float(v.w)), xv(e + 4u));
        }
    }
    finish(lane, row, t, s);
}

@compute @workgroup_size(256)
fn head_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x; let lane = t % 32u;
    let row = wid.x * 8u + t / 32u;
    var s = 0.0;
    if (row < P.rows) {
        let base = row * P.cols / 4u;
        for (var p = lane; p < P.cols / 4u; p += 32u) { s += dot(bitcast<vec4<f32>>(w[base + p]), xv(4u * p)); }
    }
    finish(lane, row, t, s);
}
