// The chunks of a matvec (matvec.wgsl) added up, then one of three epilogues:
//   red_store:  out[c] = y[c] + bias[c]                 (q/k/v with their bias, adapters)
//   red_add:    out[c] += y[c] + bias[c]                (o and down: the residual add)
//   red_swiglu: out[i] = y[i] (gate), out[ff + i] = y[ff + i] (up), hm[i] = silu(gate) * up
// The chunk count is ceil(count / R), count from the selection the matvec read. A workgroup takes
// COLS columns, SLICES threads a column: slice q adds chunks q, q + SLICES, ... in order, then the
// slices' sums are added in slice order (a fixed order: the same bits every run). One thread a
// column (the first form) waited on its chunks' loads in turn: a 64-chunk sum took ~16 round trips.

struct Params { cols: u32, R: u32, has_bias: u32, ff: u32 }

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> sel: array<u32>;
@group(0) @binding(2) var<storage, read> partial: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> hm: array<f32>;

const COLS: u32 = 32u;     // gpu.c's RED_COLS
const SLICES: u32 = 8u;
var<workgroup> xs: array<f32, 256>;    // [slice][column]
var<workgroup> xs2: array<f32, 256>;   // red_swiglu's second sum (up)

fn slice_sum(c: u32, q: u32, chunks: u32) -> f32 {   // chunks q, q + SLICES, ... of column c
    var s = 0.0;
    for (var k = q; k < chunks; k += SLICES) { s += partial[k * P.cols + c]; }
    return s;
}

fn n_chunks() -> u32 { return (sel[0] + P.R - 1u) / P.R; }

// column c's sum (valid in slice 0) from every slice's v; all threads call it (barrier). Two
// copies: naga takes no workgroup pointers as arguments.
fn combine(col: u32, q: u32, v: f32) -> f32 {
    xs[q * COLS + col] = v;
    workgroupBarrier();
    var s = 0.0;
    if (q == 0u) {
        for (var j = 0u; j < SLICES; j++) { s += xs[j * COLS + col]; }
    }
    return s;
}
fn combine2(col: u32, q: u32, v: f32) -> f32 {
    xs2[q * COLS + col] = v;
    workgroupBarrier();
    var s = 0.0;
    if (q == 0u) {
        for (var j = 0u; j < SLICES; j++) { s += xs2[j * COLS + col]; }
    }
    return s;
}

fn with_bias(y: f32, c: u32) -> f32 {
    if (P.has_bias != 0u) { return y + bias[c]; }
    return y;
}

@compute @workgroup_size(256)
fn red_store(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col = lid % COLS; let q = lid / COLS;
    let c = wid.x * COLS + col;
    var v = 0.0;
    if (c < P.cols) { v = slice_sum(c, q, n_chunks()); }
    let y = combine(col, q, v);
    if (q == 0u && c < P.cols) { out[c] = with_bias(y, c); }
}

@compute @workgroup_size(256)
fn red_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col = lid % COLS; let q = lid / COLS;
    let c = wid.x * COLS + col;
    var v = 0.0;
    if (c < P.cols) { v = slice_sum(c, q, n_chunks()); }
    let y = combine(col, q, v);
    if (q == 0u && c < P.cols) { out[c] = out[c] + with_bias(y, c); }
}

@compute @workgroup_size(256)
fn red_swiglu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col = lid % COLS; let q = lid / COLS;
    let i = wid.x * COLS + col;
    var vg = 0.0; var vu = 0.0;
    if (i < P.ff) {
        let chunks = n_chunks();
        vg = slice_sum(i, q, chunks);
        vu = slice_sum(P.ff + i, q, chunks);
    }
    let g = combine(col, q, vg);
    let u = combine2(col, q, vu);
    if (q == 0u && i < P.ff) {
        out[i] = g;
        out[P.ff + i] = u;
        hm[i] = g / (1.0 + exp(-g)) * u;   // lr_silu
    }
}
