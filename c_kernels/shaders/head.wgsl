// The head: logits[v] = W[v, :] . h for the output-major head W [vocab, d], h = RMSNorm(x) * g_out.
// head_prep (one workgroup): h, and for a Q8_0 / Q4_0 head its Q8_0 blocks (llama.cpp's
// activations, lr_quantize_blocks: dx = max |h| / 127 per 32, codes kept as floats).
// head_q8 / head_q4 / head_f16 / head_f32: 32 threads per row, 8 rows per workgroup; each thread
// reads 16-byte pieces of its row (neighbours read neighbouring pieces), then the row's 32 partial
// sums are added in a tree. The quantized heads are stored repacked at load (gpu.c): codes [rows][d]
// (Q8_0: int8; Q4_0: ggml's 16 bytes per block, element j low nibble, j + 16 high), scales [rows][d / 32] f16.
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
    for (var i = t; i < d; i += 256u) {
        var v = x[i] * r;
        if (P.has_norm != 0u) { v = v * gnorm[i]; }
        hq[i] = v;
    }
    if (P.quant == 0u) { return; }
    storageBarrier();
    workgroupBarrier();
    for (var b = t; b < d / 32u; b += 256u) {
        var amax = 0.0;
        var finite = true;
        for (var i = 0u; i < 32u; i++) {
            let a = abs(hq[32u * b + i]);
            finite = finite && a <= 3.4028235e38;
            amax = max(amax, a);
        }
        var dx = amax / 127.0;
        if (!finite) { dx = bitcast<f32>(0x7fc00000u); }
        var id = 0.0;
        if (dx > 0.0) { id = 1.0 / dx; }
        if (id > 3.4028235e38) { id = 0.0; }
        for (var i = 0u; i < 32u; i++) {
            var q = round(hq[32u * b + i] * id);
            if (q != q) { q = 0.0; }
            hq[32u * b + i] = clamp(q, -127.0, 127.0);
        }
        hq[d + b] = dx;
    }
}

fn i8x4(v: u32) -> vec4<f32> {
    let s = bitcast<i32>(v);
    return vec4<f32>(vec4<i32>(extractBits(s, 0u, 8u), extractBits(s, 8u, 8u), extractBits(s, 16u, 8u), extractBits(s, 24u, 8u)));
}
fn u4x4(v: u32, sh: u32) -> vec4<f32> {
    return vec4<f32>(f32(extractBits(v, sh, 4u)), f32(extractBits(v, sh + 8u, 4u)),
                     f32(extractBits(v, sh + 16u, 4u)), f32(extractBits(v, sh + 24u, 4u))) - 8.0;
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

@compute @workgroup_size(256)
fn head_q8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x; let lane = t % 32u;
    let row = wid.x * 8u + t / 32u;
    var s = 0.0;
    if (row < P.rows) {
        let base = row * P.cols / 16u;
        for (var p = lane; p < P.cols / 16u; p += 32u) {   // piece p: elements 16 p .. 16 p + 15
            let v = w[base + p];
            let e = 16u * p;
            let dot = dot(i8x4(v.x), xv(e)) + dot(i8x4(v.y), xv(e + 4u)) + dot(i8x4(v.z), xv(e + 8u)) + dot(i8x4(v.w), xv(e + 12u));
            let b = p / 2u;
            s = fma(dot, scale_of(row, b) * hq[P.cols + b], s);
        }
    }
    finish(lane, row, t, s);
}

@compute @workgroup_size(256)
fn head_q4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x; let lane = t % 32u;
    let row = wid.x * 8u + t / 32u;
    var s = 0.0;
    if (row < P.rows) {
        let base = row * P.cols / 32u;
        for (var b = lane; b < P.cols / 32u; b += 32u) {   // block b: 16 bytes, elements j and j + 16
            let v = w[base + b];
            let e = 32u * b;
            let lo = dot(u4x4(v.x, 0u), xv(e)) + dot(u4x4(v.y, 0u), xv(e + 4u)) + dot(u4x4(v.z, 0u), xv(e + 8u)) + dot(u4x4(v.w, 0u), xv(e + 12u));
            let hi = dot(u4x4(v.x, 4u), xv(e + 16u)) + dot(u4x4(v.y, 4u), xv(e + 20u)) + dot(u4x4(v.z, 4u), xv(e + 24u)) + dot(u4x4(v.w, 4u), xv(e + 28u));
            s = fma(lo + hi, scale_of(row, b) * hq[P.cols + b], s);
        }
    }
    finish(lane, row, t, s);
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
