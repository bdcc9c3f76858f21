// Sparse matvec over an input-major weight W [rows, cols] (row i = input i): for the entries
// j of a selection (select.wgsl: rows ascending, values), partial[chunk][c] = sum over the
// chunk's entries of val_j W[row_j][c]. Workgroup (tile, chunk): 256 threads = 4 streams x 64
// lanes, each lane 16 outputs, so a tile is 1024 columns; the chunk's R entries are split into 4
// contiguous quarters, one per stream, and the streams' sums are added in shared memory before
// the one write of the chunk (fewer chunks: less partial traffic for reduce.wgsl, which adds the
// chunks in order). Each selected row is read in one contiguous piece per stream (1 KiB of Q8_0
// codes, 512 B of Q4_0), eight rows' loads issued before their use (no branch between: rows past
// the end repeat the last one with value 0), so that enough bytes are in flight to cover the
// memory latency.
//
// Q8_0 / Q4_0 (the _IM types of FORMAT.md): W[i][c] = d[i / 32][c] q[i][c]. As lr_qspmv: the
// values are the inputs' Q8_0 codes, per group of 32 inputs the products q * xq are summed
// exactly (integers below 2^24 in f32), then y = fma(acc, d * dx, y) when the group changes.
// Reference: qspmv_ref in qmatvec.c; float weights: spmv_f16 / spmv_f32 in kernels.c.

struct Params { rows: u32, cols: u32, R: u32, pad: u32 }

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> sel: array<u32>;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> scale: array<vec4<u32>>;   // f16 pairs; unused for F16 / F32
@group(0) @binding(4) var<storage, read_write> partial: array<f32>;

struct Acc { a0: vec4<f32>, a1: vec4<f32>, a2: vec4<f32>, a3: vec4<f32> }

fn row_of(j: u32) -> u32 { return sel[4u + j]; }
fn val_of(j: u32) -> f32 { return bitcast<f32>(sel[4u + P.rows + j]); }
fn val_in(j: u32, j1: u32) -> f32 { return select(0.0, val_of(min(j, j1 - 1u)), j < j1); }   // 0 past the end
fn dx_of(g: u32) -> f32 { return bitcast<f32>(sel[4u + 2u * P.rows + g]); }

fn i8x4(v: u32) -> vec4<f32> {   // four signed bytes, low byte first
    let s = bitcast<i32>(v);
    return vec4<f32>(vec4<i32>(extractBits(s, 0u, 8u), extractBits(s, 8u, 8u), extractBits(s, 16u, 8u), extractBits(s, 24u, 8u)));
}
fn u4x4(v: u32, sh: u32) -> vec4<f32> {   // nibbles sh, sh + 8, sh + 16, sh + 24 minus 8
    return vec4<f32>(f32(extractBits(v, sh, 4u)), f32(extractBits(v, sh + 8u, 4u)),
                     f32(extractBits(v, sh + 16u, 4u)), f32(extractBits(v, sh + 24u, 4u))) - 8.0;
}
fn h2(v: u32) -> vec2<f32> { return unpack2x16float(v); }
fn h4(a: u32, b: u32) -> vec4<f32> { return vec4<f32>(h2(a), h2(b)); }

fn zero() -> Acc { return Acc(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0)); }
fn fma_acc(a: Acc, w: Acc, v: f32) -> Acc {
    return Acc(fma(w.a0, vec4<f32>(v), a.a0), fma(w.a1, vec4<f32>(v), a.a1), fma(w.a2, vec4<f32>(v), a.a2), fma(w.a3, vec4<f32>(v), a.a3));
}
fn fma_scaled(y: Acc, acc: Acc, s: Acc) -> Acc {
    return Acc(fma(acc.a0, s.a0, y.a0), fma(acc.a1, s.a1, y.a1), fma(acc.a2, s.a2, y.a2), fma(acc.a3, s.a3, y.a3));
}

// ---- Q8_0: thread t of the tile reads codes [c0, c0 + 16) of a row as one vec4<u32> ----------
fn q8_load(row: u32, c0: u32) -> vec4<u32> { return w[(row * P.cols + c0) / 16u]; }
fn q8_w(v: vec4<u32>) -> Acc { return Acc(i8x4(v.x), i8x4(v.y), i8x4(v.z), i8x4(v.w)); }
// scales of outputs c0 .. c0 + 15 of group g, times dx
fn q8_scale(g: u32, c0: u32, dx: f32) -> Acc {
    let b = (g * P.cols + c0) / 8u;
    let s0 = scale[b]; let s1 = scale[b + 1u];
    return Acc(h4(s0.x, s0.y) * dx, h4(s0.z, s0.w) * dx, h4(s1.x, s1.y) * dx, h4(s1.z, s1.w) * dx);
}

// one selected row: its group's sum is flushed into y when the group changes
fn q8_step(y: ptr<function, Acc>, acc: ptr<function, Acc>, g: ptr<function, u32>, r: u32, wv: vec4<u32>, v: f32, c0: u32) {
    let gr = r / 32u;
    if (gr != *g) { *y = fma_scaled(*y, *acc, q8_scale(*g, c0, dx_of(*g))); *acc = zero(); *g = gr; }
    *acc = fma_acc(*acc, q8_w(wv), v);
}

@compute @workgroup_size(256)
fn mv_q8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let cnt = sel[0];
    let jc = wid.y * P.R;
    if (jc >= cnt) { return; }
    let lane = lid.x % 64u; let stream = lid.x / 64u;
    let q4 = P.R / 4u;
    let j0 = jc + stream * q4;
    let j1 = min(j0 + q4, cnt);
    let cpos = (wid.x * 64u + lane) * 16u;
    let ok = cpos < P.cols;
    var y = zero(); var acc = zero();
    if (ok && j0 < j1) {
        var g = row_of(j0) / 32u;
        for (var j = j0; j < j1; j += 8u) {
            let last = j1 - 1u;
            let r0 = row_of(j); let r1 = row_of(min(j + 1u, last)); let r2 = row_of(min(j + 2u, last)); let r3 = row_of(min(j + 3u, last));
            let r4 = row_of(min(j + 4u, last)); let r5 = row_of(min(j + 5u, last)); let r6 = row_of(min(j + 6u, last)); let r7 = row_of(min(j + 7u, last));
            let w0 = q8_load(r0, cpos); let w1 = q8_load(r1, cpos); let w2 = q8_load(r2, cpos); let w3 = q8_load(r3, cpos);
            let w4 = q8_load(r4, cpos); let w5 = q8_load(r5, cpos); let w6 = q8_load(r6, cpos); let w7 = q8_load(r7, cpos);
            q8_step(&y, &acc, &g, r0, w0, val_of(j), cpos);
            q8_step(&y, &acc, &g, r1, w1, val_in(j + 1u, j1), cpos);
            q8_step(&y, &acc, &g, r2, w2, val_in(j + 2u, j1), cpos);
            q8_step(&y, &acc, &g, r3, w3, val_in(j + 3u, j1), cpos);
            q8_step(&y, &acc, &g, r4, w4, val_in(j + 4u, j1), cpos);
            q8_step(&y, &acc, &g, r5, w5, val_in(j + 5u, j1), cpos);
            q8_step(&y, &acc, &g, r6, w6, val_in(j + 6u, j1), cpos);
            q8_step(&y, &acc, &g, r7, w7, val_in(j + 7u, j1), cpos);
        }
        y = fma_scaled(y, acc, q8_scale(g, cpos, dx_of(g)));
    }
    y = streams_sum(lid.x, y);
    if (ok && stream == 0u) { store16(wid.y * P.cols + cpos, y); }
}

// ---- Q4_0: runs of 64 outputs in 32 bytes (byte b: output b low nibble, b + 32 high). Thread t
// reads 8 bytes (a vec2<u32>) of run t / 4 at byte 8 (t % 4): outputs lo = 64 run + 8 (t % 4) + 0..7
// and hi = lo + 32. Loaded as half of a vec4 of the row.
fn q4_load(row: u32, run: u32, q: u32) -> vec2<u32> {
    let v = w[(row * P.cols / 2u + run * 32u + q * 8u) / 16u];
    return select(v.xy, v.zw, (q & 1u) == 1u);
}
fn q4_w(v: vec2<u32>) -> Acc {   // lo outputs 0..7 then hi outputs 0..7
    // byte b of v.x holds outputs b (lo) and b + 32 (hi); v.y bytes 4..7
    return Acc(u4x4(v.x, 0u), u4x4(v.y, 0u), u4x4(v.x, 4u), u4x4(v.y, 4u));
}
fn q4_scale(g: u32, lo: u32, dx: f32) -> Acc {
    let a = scale[(g * P.cols + lo) / 8u];
    let b = scale[(g * P.cols + lo + 32u) / 8u];
    return Acc(h4(a.x, a.y) * dx, h4(a.z, a.w) * dx, h4(b.x, b.y) * dx, h4(b.z, b.w) * dx);
}

fn q4_step(y: ptr<function, Acc>, acc: ptr<function, Acc>, g: ptr<function, u32>, r: u32, wv: vec2<u32>, v: f32, lo: u32) {
    let gr = r / 32u;
    if (gr != *g) { *y = fma_scaled(*y, *acc, q4_scale(*g, lo, dx_of(*g))); *acc = zero(); *g = gr; }
    *acc = fma_acc(*acc, q4_w(wv), v);
}

@compute @workgroup_size(256)
fn mv_q4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let cnt = sel[0];
    let jc = wid.y * P.R;
    if (jc >= cnt) { return; }
    let lane = lid.x % 64u; let stream = lid.x / 64u;
    let q4 = P.R / 4u;
    let j0 = jc + stream * q4;
    let j1 = min(j0 + q4, cnt);
    let tt = wid.x * 64u + lane;
    let run = tt / 4u; let qq = tt % 4u;
    let cpos = run * 64u + qq * 8u;
    let ok = cpos < P.cols;
    var y = zero(); var acc = zero();
    if (ok && j0 < j1) {
        var g = row_of(j0) / 32u;
        for (var j = j0; j < j1; j += 8u) {
            let last = j1 - 1u;
            let r0 = row_of(j); let r1 = row_of(min(j + 1u, last)); let r2 = row_of(min(j + 2u, last)); let r3 = row_of(min(j + 3u, last));
            let r4 = row_of(min(j + 4u, last)); let r5 = row_of(min(j + 5u, last)); let r6 = row_of(min(j + 6u, last)); let r7 = row_of(min(j + 7u, last));
            let w0 = q4_load(r0, run, qq); let w1 = q4_load(r1, run, qq); let w2 = q4_load(r2, run, qq); let w3 = q4_load(r3, run, qq);
            let w4 = q4_load(r4, run, qq); let w5 = q4_load(r5, run, qq); let w6 = q4_load(r6, run, qq); let w7 = q4_load(r7, run, qq);
            q4_step(&y, &acc, &g, r0, w0, val_of(j), cpos);
            q4_step(&y, &acc, &g, r1, w1, val_in(j + 1u, j1), cpos);
            q4_step(&y, &acc, &g, r2, w2, val_in(j + 2u, j1), cpos);
            q4_step(&y, &acc, &g, r3, w3, val_in(j + 3u, j1), cpos);
            q4_step(&y, &acc, &g, r4, w4, val_in(j + 4u, j1), cpos);
            q4_step(&y, &acc, &g, r5, w5, val_in(j + 5u, j1), cpos);
            q4_step(&y, &acc, &g, r6, w6, val_in(j + 6u, j1), cpos);
            q4_step(&y, &acc, &g, r7, w7, val_in(j + 7u, j1), cpos);
        }
        y = fma_scaled(y, acc, q4_scale(g, cpos, dx_of(g)));
    }
    y = streams_sum(lid.x, y);
    if (ok && stream == 0u) { store8x2(wid.y * P.cols + cpos, y); }
}

fn store16(o: u32, y: Acc) {
    partial[o + 0u] = y.a0.x; partial[o + 1u] = y.a0.y; partial[o + 2u] = y.a0.z; partial[o + 3u] = y.a0.w;
    partial[o + 4u] = y.a1.x; partial[o + 5u] = y.a1.y; partial[o + 6u] = y.a1.z; partial[o + 7u] = y.a1.w;
    partial[o + 8u] = y.a2.x; partial[o + 9u] = y.a2.y; partial[o + 10u] = y.a2.z; partial[o + 11u] = y.a2.w;
    partial[o + 12u] = y.a3.x; partial[o + 13u] = y.a3.y; partial[o + 14u] = y.a3.z; partial[o + 15u] = y.a3.w;
}

fn store8x2(o: u32, y: Acc) {   // Q4_0: outputs o .. o + 7 and o + 32 .. o + 39
    let h = o + 32u;
    partial[o + 0u] = y.a0.x; partial[o + 1u] = y.a0.y; partial[o + 2u] = y.a0.z; partial[o + 3u] = y.a0.w;
    partial[o + 4u] = y.a1.x; partial[o + 5u] = y.a1.y; partial[o + 6u] = y.a1.z; partial[o + 7u] = y.a1.w;
    partial[h + 0u] = y.a2.x; partial[h + 1u] = y.a2.y; partial[h + 2u] = y.a2.z; partial[h + 3u] = y.a2.w;
    partial[h + 4u] = y.a3.x; partial[h + 5u] = y.a3.y; partial[h + 6u] = y.a3.z; partial[h + 7u] = y.a3.w;
}

// streams 1..3 hand their sums to stream 0, which adds them in stream order
var<workgroup> xch: array<Acc, 192>;
fn streams_sum(t: u32, y: Acc) -> Acc {
    let lane = t % 64u; let stream = t / 64u;
    if (stream > 0u) { xch[(stream - 1u) * 64u + lane] = y; }
    workgroupBarrier();
    var s = y;
    if (stream == 0u) {
        for (var k = 0u; k < 3u; k++) {
            let o = xch[k * 64u + lane];
            s = Acc(s.a0 + o.a0, s.a1 + o.a1, s.a2 + o.a2, s.a3 + o.a3);
        }
    }
    return s;
}

// ---- F16 / F32: float rows, float values; 16 outputs per lane, the same 4 streams ------------
fn f16_w(row: u32, c0: u32) -> Acc {
    let b = (row * P.cols + c0) / 8u;
    let a = w[b]; let c = w[b + 1u];
    return Acc(h4(a.x, a.y), h4(a.z, a.w), h4(c.x, c.y), h4(c.z, c.w));
}
fn f32_w(row: u32, c0: u32) -> Acc {
    let b = (row * P.cols + c0) / 4u;
    return Acc(bitcast<vec4<f32>>(w[b]), bitcast<vec4<f32>>(w[b + 1u]), bitcast<vec4<f32>>(w[b + 2u]), bitcast<vec4<f32>>(w[b + 3u]));
}

@compute @workgroup_size(256)
fn mv_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let cnt = sel[0];
    let jc = wid.y * P.R;
    if (jc >= cnt) { return; }
    let lane = lid.x % 64u; let stream = lid.x / 64u;
    let j0 = jc + stream * (P.R / 4u);
    let j1 = min(j0 + P.R / 4u, cnt);
    let cpos = (wid.x * 64u + lane) * 16u;
    let ok = cpos < P.cols;
    var y = zero();
    if (ok) {
        for (var j = j0; j < j1; j += 4u) {
            let last = j1 - 1u;
            let w0 = f16_w(row_of(j), cpos); let w1 = f16_w(row_of(min(j + 1u, last)), cpos);
            let w2 = f16_w(row_of(min(j + 2u, last)), cpos); let w3 = f16_w(row_of(min(j + 3u, last)), cpos);
            y = fma_acc(y, w0, val_of(j));
            y = fma_acc(y, w1, val_in(j + 1u, j1));
            y = fma_acc(y, w2, val_in(j + 2u, j1));
            y = fma_acc(y, w3, val_in(j + 3u, j1));
        }
    }
    y = streams_sum(lid.x, y);
    if (ok && stream == 0u) { store16(wid.y * P.cols + cpos, y); }
}

@compute @workgroup_size(256)
fn mv_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let cnt = sel[0];
    let jc = wid.y * P.R;
    if (jc >= cnt) { return; }
    let lane = lid.x % 64u; let stream = lid.x / 64u;
    let j0 = jc + stream * (P.R / 4u);
    let j1 = min(j0 + P.R / 4u, cnt);
    let cpos = (wid.x * 64u + lane) * 16u;
    let ok = cpos < P.cols;
    var y = zero();
    if (ok) {
        for (var j = j0; j < j1; j++) { y = fma_acc(y, f32_w(row_of(j), cpos), val_of(j)); }
    }
    y = streams_sum(lid.x, y);
    if (ok && stream == 0u) { store16(wid.y * P.cols + cpos, y); }
}

// Codes to floats without an int-to-float conversion (a quarter-rate instruction on NVIDIA, one per
// weight): a byte b placed in the mantissa of 2^23 is the float 2^23 + b, exactly; subtracting
// 2^23 (and the code's offset) leaves the code. Same values as i8x4 / u4x4.
const MAGIC: u32 = 0x4b000000u;   // 2^23
fn i8x4m(v: u32) -> vec4<f32> {   // four signed bytes, low byte first: (b ^ 0x80) = b + 128
    let b = (vec4<u32>(v) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xffu);
    return bitcast<vec4<f32>>(b ^ vec4<u32>(MAGIC | 0x80u)) - 8388736.0;
}
fn u4x4m(v: u32, sh: u32) -> vec4<f32> {   // nibbles sh, sh + 8, sh + 16, sh + 24 minus 8
    let b = (vec4<u32>(v >> sh) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xfu);
    return bitcast<vec4<f32>>(b | vec4<u32>(MAGIC)) - 8388616.0;
}
fn q8_wm(v: vec4<u32>) -> Acc { return Acc(i8x4m(v.x), i8x4m(v.y), i8x4m(v.z), i8x4m(v.w)); }
fn q4_wm(v: vec2<u32>) -> Acc { return Acc(u4x4m(v.x, 0u), u4x4m(v.y, 0u), u4x4m(v.x, 4u), u4x4m(v.y, 4u)); }

// ---- Q8_0 / Q4_0, pipelined (mv_q8p, mv_q4p: the default): the same sums in the same order, with
// the loads that each batch of 8 rows waited on issued a batch earlier. The next batch's rows and
// values are loaded while this batch's weights are in flight, and so are the scales (and dx) of
// this batch's last group: a group change then finds its scales in registers instead of waiting
// for them (a batch that spans three groups loads the middle one's when it gets there). Codes
// become floats through the mantissa (i8x4m, u4x4m).
struct Rows { a: vec4<u32>, b: vec4<u32> }
struct Vals { a: vec4<f32>, b: vec4<f32> }
struct Sc { a: vec4<u32>, b: vec4<u32>, dx: f32 }   // 16 f16 scales of a group's outputs, its dx

fn rows8(j: u32, last: u32) -> Rows {   // past the end: the last row again
    return Rows(vec4<u32>(row_of(min(j, last)), row_of(min(j + 1u, last)), row_of(min(j + 2u, last)), row_of(min(j + 3u, last))),
                vec4<u32>(row_of(min(j + 4u, last)), row_of(min(j + 5u, last)), row_of(min(j + 6u, last)), row_of(min(j + 7u, last))));
}
fn vals8(j: u32, j1: u32) -> Vals {     // past the end: 0
    return Vals(vec4<f32>(val_in(j, j1), val_in(j + 1u, j1), val_in(j + 2u, j1), val_in(j + 3u, j1)),
                vec4<f32>(val_in(j + 4u, j1), val_in(j + 5u, j1), val_in(j + 6u, j1), val_in(j + 7u, j1)));
}
fn sc_acc(s: Sc) -> Acc {
    return Acc(h4(s.a.x, s.a.y) * s.dx, h4(s.a.z, s.a.w) * s.dx, h4(s.b.x, s.b.y) * s.dx, h4(s.b.z, s.b.w) * s.dx);
}
fn q8_sc(g: u32, c0: u32) -> Sc {   // as q8_scale
    let b = (g * P.cols + c0) / 8u;
    return Sc(scale[b], scale[b + 1u], dx_of(g));
}
fn q4_sc(g: u32, lo: u32) -> Sc {   // as q4_scale
    return Sc(scale[(g * P.cols + lo) / 8u], scale[(g * P.cols + lo + 32u) / 8u], dx_of(g));
}

// a group change flushes with the held scales, then holds the next group's (prefetched: nx, of gn)
fn flush_to(y: ptr<function, Acc>, acc: ptr<function, Acc>, g: ptr<function, u32>, sc: ptr<function, Sc>, gr: u32,
            nx: Sc, gn: u32, c0: u32, q4: bool) {
    *y = fma_scaled(*y, *acc, sc_acc(*sc));
    *acc = zero();
    *g = gr;
    if (gr == gn) { *sc = nx; } else if (q4) { *sc = q4_sc(gr, c0); } else { *sc = q8_sc(gr, c0); }
}

fn q8_stepp(y: ptr<function, Acc>, acc: ptr<function, Acc>, g: ptr<function, u32>, sc: ptr<function, Sc>, nx: Sc,
            gn: u32, r: u32, wv: vec4<u32>, v: f32, c0: u32) {
    let gr = r / 32u;
    if (gr != *g) { flush_to(y, acc, g, sc, gr, nx, gn, c0, false); }
    *acc = fma_acc(*acc, q8_wm(wv), v);
}
fn q4_stepp(y: ptr<function, Acc>, acc: ptr<function, Acc>, g: ptr<function, u32>, sc: ptr<function, Sc>, nx: Sc,
            gn: u32, r: u32, wv: vec2<u32>, v: f32, c0: u32) {
    let gr = r / 32u;
    if (gr != *g) { flush_to(y, acc, g, sc, gr, nx, gn, c0, true); }
    *acc = fma_acc(*acc, q4_wm(wv), v);
}

@compute @workgroup_size(256)
fn mv_q8p(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let cnt = sel[0];
    let jc = wid.y * P.R;
    if (jc >= cnt) { return; }
    let lane = lid.x % 64u; let stream = lid.x / 64u;
    let j0 = jc + stream * (P.R / 4u);
    let j1 = min(j0 + P.R / 4u, cnt);
    let cpos = (wid.x * 64u + lane) * 16u;
    let ok = cpos < P.cols;
    var y = zero(); var acc = zero();
    if (ok && j0 < j1) {
        let last = j1 - 1u;
        var rw = rows8(j0, last);
        var vl = vals8(j0, j1);
        var g = rw.a.x / 32u;
        var sc = q8_sc(g, cpos);
        for (var j = j0; j < j1; j += 8u) {
            let w0 = q8_load(rw.a.x, cpos); let w1 = q8_load(rw.a.y, cpos); let w2 = q8_load(rw.a.z, cpos); let w3 = q8_load(rw.a.w, cpos);
            let w4 = q8_load(rw.b.x, cpos); let w5 = q8_load(rw.b.y, cpos); let w6 = q8_load(rw.b.z, cpos); let w7 = q8_load(rw.b.w, cpos);
            let gn = rw.b.w / 32u;
            let nx = q8_sc(gn, cpos);
            let rn = rows8(j + 8u, last);
            let vn = vals8(j + 8u, j1);
            q8_stepp(&y, &acc, &g, &sc, nx, gn, rw.a.x, w0, vl.a.x, cpos);
            q8_stepp(&y, &acc, &g, &sc, nx, gn, rw.a.y, w1, vl.a.y, cpos);
            q8_stepp(&y, &acc, &g, &sc, nx, gn, rw.a.z, w2, vl.a.z, cpos);
            q8_stepp(&y, &acc, &g, &sc, nx, gn, rw.a.w, w3, vl.a.w, cpos);
            q8_stepp(&y, &acc, &g, &sc, nx, gn, rw.b.x, w4, vl.b.x, cpos);
            q8_stepp(&y, &acc, &g, &sc, nx, gn, rw.b.y, w5, vl.b.y, cpos);
            q8_stepp(&y, &acc, &g, &sc, nx, gn, rw.b.z, w6, vl.b.z, cpos);
            q8_stepp(&y, &acc, &g, &sc, nx, gn, rw.b.w, w7, vl.b.w, cpos);
            rw = rn; vl = vn;
        }
        y = fma_scaled(y, acc, sc_acc(sc));
    }
    y = streams_sum(lid.x, y);
    if (ok && stream == 0u) { store16(wid.y * P.cols + cpos, y); }
}

@compute @workgroup_size(256)
fn mv_q4p(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let cnt = sel[0];
    let jc = wid.y * P.R;
    if (jc >= cnt) { return; }
    let lane = lid.x % 64u; let stream = lid.x / 64u;
    let j0 = jc + stream * (P.R / 4u);
    let j1 = min(j0 + P.R / 4u, cnt);
    let tt = wid.x * 64u + lane;
    let run = tt / 4u; let qq = tt % 4u;
    let cpos = run * 64u + qq * 8u;
    let ok = cpos < P.cols;
    var y = zero(); var acc = zero();
    if (ok && j0 < j1) {
        let last = j1 - 1u;
        var rw = rows8(j0, last);
        var vl = vals8(j0, j1);
        var g = rw.a.x / 32u;
        var sc = q4_sc(g, cpos);
        for (var j = j0; j < j1; j += 8u) {
            let w0 = q4_load(rw.a.x, run, qq); let w1 = q4_load(rw.a.y, run, qq); let w2 = q4_load(rw.a.z, run, qq); let w3 = q4_load(rw.a.w, run, qq);
            let w4 = q4_load(rw.b.x, run, qq); let w5 = q4_load(rw.b.y, run, qq); let w6 = q4_load(rw.b.z, run, qq); let w7 = q4_load(rw.b.w, run, qq);
            let gn = rw.b.w / 32u;
            let nx = q4_sc(gn, cpos);
            let rn = rows8(j + 8u, last);
            let vn = vals8(j + 8u, j1);
            q4_stepp(&y, &acc, &g, &sc, nx, gn, rw.a.x, w0, vl.a.x, cpos);
            q4_stepp(&y, &acc, &g, &sc, nx, gn, rw.a.y, w1, vl.a.y, cpos);
            q4_stepp(&y, &acc, &g, &sc, nx, gn, rw.a.z, w2, vl.a.z, cpos);
            q4_stepp(&y, &acc, &g, &sc, nx, gn, rw.a.w, w3, vl.a.w, cpos);
            q4_stepp(&y, &acc, &g, &sc, nx, gn, rw.b.x, w4, vl.b.x, cpos);
            q4_stepp(&y, &acc, &g, &sc, nx, gn, rw.b.y, w5, vl.b.y, cpos);
            q4_stepp(&y, &acc, &g, &sc, nx, gn, rw.b.z, w6, vl.b.z, cpos);
            q4_stepp(&y, &acc, &g, &sc, nx, gn, rw.b.w, w7, vl.b.w, cpos);
            rw = rn; vl = vn;
        }
        y = fma_scaled(y, acc, sc_acc(sc));
    }
    y = streams_sum(lid.x, y);
    if (ok && stream == 0u) { store8x2(wid.y * P.cols + cpos, y); }
}

// ---- Q8_0 / Q4_0 with integer dots (mv_q8d, mv_q4d): mv_q8p / mv_q4p's rows, loads and order, but
// a run of 4 selected rows in one group of 32 inputs is added as integer dots (dot4I8Packed): the
// 4 rows' code words transposed bytewise (a word per output column, a byte per row) against the
// rows' 4 activation codes packed. The sums of q * xq per group are integers either way (below
// 2^24), so the flushes see the same values: the same bits as mv_q8p / mv_q4p (tested); the work
// per weight falls from a conversion and an fma to about two integer operations. Runs that cross a
// group go row by row.
struct IAcc { a0: vec4<i32>, a1: vec4<i32>, a2: vec4<i32>, a3: vec4<i32> }
fn izero() -> IAcc { return IAcc(vec4<i32>(0), vec4<i32>(0), vec4<i32>(0), vec4<i32>(0)); }
fn ifloat(a: IAcc) -> Acc { return Acc(vec4<f32>(a.a0), vec4<f32>(a.a1), vec4<f32>(a.a2), vec4<f32>(a.a3)); }

// words of rows 0..3 (bytes: columns 0..3) -> per column the 4 rows' bytes
fn tr4(w0: u32, w1: u32, w2: u32, w3: u32) -> vec4<u32> {
    let m = 0x00ff00ffu;
    let a = (w0 & m) | ((w1 & m) << 8u);      // c0 r0, c0 r1, c2 r0, c2 r1
    let b = ((w0 >> 8u) & m) | (w1 & ~m);     // c1 r0, c1 r1, c3 r0, c3 r1
    let c = (w2 & m) | ((w3 & m) << 8u);
    let d = ((w2 >> 8u) & m) | (w3 & ~m);
    return vec4<u32>((a & 0xffffu) | (c << 16u), (b & 0xffffu) | (d << 16u), (a >> 16u) | (c & 0xffff0000u),
                     (b >> 16u) | (d & 0xffff0000u));
}
fn dot4c(t: vec4<u32>, xq: u32) -> vec4<i32> {
    return vec4<i32>(dot4I8Packed(t.x, xq), dot4I8Packed(t.y, xq), dot4I8Packed(t.z, xq), dot4I8Packed(t.w, xq));
}
fn pack_vals(v: vec4<f32>) -> u32 { return pack4xI8(vec4<i32>(v)); }

// 4 rows' Q8_0 words (16 outputs each) against their codes
fn q8_dot4(a: ptr<function, IAcc>, w0: vec4<u32>, w1: vec4<u32>, w2: vec4<u32>, w3: vec4<u32>, v: vec4<f32>) {
    let xq = pack_vals(v);
    (*a).a0 += dot4c(tr4(w0.x, w1.x, w2.x, w3.x), xq);
    (*a).a1 += dot4c(tr4(w0.y, w1.y, w2.y, w3.y), xq);
    (*a).a2 += dot4c(tr4(w0.z, w1.z, w2.z, w3.z), xq);
    (*a).a3 += dot4c(tr4(w0.w, w1.w, w2.w, w3.w), xq);
}
// Q4_0: low nibbles of a word's bytes are outputs lo, high nibbles lo + 32 (q4_w's order); nibble - 8
fn q4_dot4(a: ptr<function, IAcc>, w0: vec2<u32>, w1: vec2<u32>, w2: vec2<u32>, w3: vec2<u32>, v: vec4<f32>) {
    let xq = pack_vals(v);
    let m = 0x0f0f0f0fu;
    let e = vec4<i32>(dot4I8Packed(0x08080808u, xq));
    (*a).a0 += dot4c(tr4(w0.x & m, w1.x & m, w2.x & m, w3.x & m), xq) - e;
    (*a).a1 += dot4c(tr4(w0.y & m, w1.y & m, w2.y & m, w3.y & m), xq) - e;
    (*a).a2 += dot4c(tr4((w0.x >> 4u) & m, (w1.x >> 4u) & m, (w2.x >> 4u) & m, (w3.x >> 4u) & m), xq) - e;
    (*a).a3 += dot4c(tr4((w0.y >> 4u) & m, (w1.y >> 4u) & m, (w2.y >> 4u) & m, (w3.y >> 4u) & m), xq) - e;
}
// one row, as integers (a run that crosses a group)
fn i8x4i(v: u32) -> vec4<i32> {
    let s = bitcast<i32>(v);
    return vec4<i32>(extractBits(s, 0u, 8u), extractBits(s, 8u, 8u), extractBits(s, 16u, 8u), extractBits(s, 24u, 8u));
}
fn u4x4i(v: u32, sh: u32) -> vec4<i32> {
    return vec4<i32>(bitcast<vec4<i32>>((vec4<u32>(v >> sh) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(0xfu))) - vec4<i32>(8);
}
fn row_add(a: ptr<function, IAcc>, q: IAcc, v: f32) {
    let x = i32(v);
    (*a).a0 += q.a0 * x; (*a).a1 += q.a1 * x; (*a).a2 += q.a2 * x; (*a).a3 += q.a3 * x;
}

// a group change flushes the integer sums with the held scales (as flush_to)
fn iflush_to(y: ptr<function, Acc>, acc: ptr<function, IAcc>, g: ptr<function, u32>, sc: ptr<function, Sc>, gr: u32,
             nx: Sc, gn: u32, c0: u32, q4: bool) {
    *y = fma_scaled(*y, ifloat(*acc), sc_acc(*sc));
    *acc = izero();
    *g = gr;
    if (gr == gn) { *sc = nx; } else if (q4) { *sc = q4_sc(gr, c0); } else { *sc = q8_sc(gr, c0); }
}
fn istep(y: ptr<function, Acc>, acc: ptr<function, IAcc>, g: ptr<function, u32>, sc: ptr<function, Sc>, nx: Sc,
         gn: u32, r: u32, q: IAcc, v: f32, c0: u32, q4: bool) {
    let gr = r / 32u;
    if (gr != *g) { iflush_to(y, acc, g, sc, gr, nx, gn, c0, q4); }
    row_add(acc, q, v);
}
fn q8_rowi(w: vec4<u32>) -> IAcc { return IAcc(i8x4i(w.x), i8x4i(w.y), i8x4i(w.z), i8x4i(w.w)); }
fn q4_rowi(w: vec2<u32>) -> IAcc { return IAcc(u4x4i(w.x, 0u), u4x4i(w.y, 0u), u4x4i(w.x, 4u), u4x4i(w.y, 4u)); }

// four rows r (ascending) with codes: one group -> integer dots (after a flush when it is a new
// group), else row by row
fn q8_run4(y: ptr<function, Acc>, acc: ptr<function, IAcc>, g: ptr<function, u32>, sc: ptr<function, Sc>, nx: Sc,
           gn: u32, r: vec4<u32>, w0: vec4<u32>, w1: vec4<u32>, w2: vec4<u32>, w3: vec4<u32>, v: vec4<f32>, c0: u32) {
    let g0 = r.x / 32u;
    if (g0 == r.w / 32u) {
        if (g0 != *g) { iflush_to(y, acc, g, sc, g0, nx, gn, c0, false); }
        q8_dot4(acc, w0, w1, w2, w3, v);
    } else {
        istep(y, acc, g, sc, nx, gn, r.x, q8_rowi(w0), v.x, c0, false);
        istep(y, acc, g, sc, nx, gn, r.y, q8_rowi(w1), v.y, c0, false);
        istep(y, acc, g, sc, nx, gn, r.z, q8_rowi(w2), v.z, c0, false);
        istep(y, acc, g, sc, nx, gn, r.w, q8_rowi(w3), v.w, c0, false);
    }
}
fn q4_run4(y: ptr<function, Acc>, acc: ptr<function, IAcc>, g: ptr<function, u32>, sc: ptr<function, Sc>, nx: Sc,
           gn: u32, r: vec4<u32>, w0: vec2<u32>, w1: vec2<u32>, w2: vec2<u32>, w3: vec2<u32>, v: vec4<f32>, c0: u32) {
    let g0 = r.x / 32u;
    if (g0 == r.w / 32u) {
        if (g0 != *g) { iflush_to(y, acc, g, sc, g0, nx, gn, c0, true); }
        q4_dot4(acc, w0, w1, w2, w3, v);
    } else {
        istep(y, acc, g, sc, nx, gn, r.x, q4_rowi(w0), v.x, c0, true);
        istep(y, acc, g, sc, nx, gn, r.y, q4_rowi(w1), v.y, c0, true);
        istep(y, acc, g, sc, nx, gn, r.z, q4_rowi(w2), v.z, c0, true);
        istep(y, acc, g, sc, nx, gn, r.w, q4_rowi(w3), v.w, c0, true);
    }
}

@compute @workgroup_size(256)
fn mv_q8d(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let cnt = sel[0];
    let jc = wid.y * P.R;
    if (jc >= cnt) { return; }
    let lane = lid.x % 64u; let stream = lid.x / 64u;
    let j0 = jc + stream * (P.R / 4u);
    let j1 = min(j0 + P.R / 4u, cnt);
    let cpos = (wid.x * 64u + lane) * 16u;
    let ok = cpos < P.cols;
    var y = zero(); var acc = izero();
    if (ok && j0 < j1) {
        let last = j1 - 1u;
        var rw = rows8(j0, last);
        var vl = vals8(j0, j1);
        var g = rw.a.x / 32u;
        var sc = q8_sc(g, cpos);
        for (var j = j0; j < j1; j += 8u) {
            let w0 = q8_load(rw.a.x, cpos); let w1 = q8_load(rw.a.y, cpos); let w2 = q8_load(rw.a.z, cpos); let w3 = q8_load(rw.a.w, cpos);
            let w4 = q8_load(rw.b.x, cpos); let w5 = q8_load(rw.b.y, cpos); let w6 = q8_load(rw.b.z, cpos); let w7 = q8_load(rw.b.w, cpos);
            let gn = rw.b.w / 32u;
            let nx = q8_sc(gn, cpos);
            let rn = rows8(j + 8u, last);
            let vn = vals8(j + 8u, j1);
            q8_run4(&y, &acc, &g, &sc, nx, gn, rw.a, w0, w1, w2, w3, vl.a, cpos);
            q8_run4(&y, &acc, &g, &sc, nx, gn, rw.b, w4, w5, w6, w7, vl.b, cpos);
            rw = rn; vl = vn;
        }
        y = fma_scaled(y, ifloat(acc), sc_acc(sc));
    }
    y = streams_sum(lid.x, y);
    if (ok && stream == 0u) { store16(wid.y * P.cols + cpos, y); }
}

@compute @workgroup_size(256)
fn mv_q4d(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let cnt = sel[0];
    let jc = wid.y * P.R;
    if (jc >= cnt) { return; }
    let lane = lid.x % 64u; let stream = lid.x / 64u;
    let j0 = jc + stream * (P.R / 4u);
    let j1 = min(j0 + P.R / 4u, cnt);
    let tt = wid.x * 64u + lane;
    let run = tt / 4u; let qq = tt % 4u;
    let cpos = run * 64u + qq * 8u;
    let ok = cpos < P.cols;
    var y = zero(); var acc = izero();
    if (ok && j0 < j1) {
        let last = j1 - 1u;
        var rw = rows8(j0, last);
        var vl = vals8(j0, j1);
        var g = rw.a.x / 32u;
        var sc = q4_sc(g, cpos);
        for (var j = j0; j < j1; j += 8u) {
            let w0 = q4_load(rw.a.x, run, qq); let w1 = q4_load(rw.a.y, run, qq); let w2 = q4_load(rw.a.z, run, qq); let w3 = q4_load(rw.a.w, run, qq);
            let w4 = q4_load(rw.b.x, run, qq); let w5 = q4_load(rw.b.y, run, qq); let w6 = q4_load(rw.b.z, run, qq); let w7 = q4_load(rw.b.w, run, qq);
            let gn = rw.b.w / 32u;
            let nx = q4_sc(gn, cpos);
            let rn = rows8(j + 8u, last);
            let vn = vals8(j + 8u, j1);
            q4_run4(&y, &acc, &g, &sc, nx, gn, rw.a, w0, w1, w2, w3, vl.a, cpos);
            q4_run4(&y, &acc, &g, &sc, nx, gn, rw.b, w4, w5, w6, w7, vl.b, cpos);
            rw = rn; vl = vn;
        }
        y = fma_scaled(y, ifloat(acc), sc_acc(sc));
    }
    y = streams_sum(lid.x, y);
    if (ok && stream == 0u) { store8x2(wid.y * P.cols + cpos, y); }
}
