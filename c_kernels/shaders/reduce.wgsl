// The chunks of a matvec (matvec.wgsl) added in chunk order, then one of three epilogues:
//   red_store:  out[c] = y[c] + bias[c]                 (q/k/v with their bias, adapters)
//   red_add:    out[c] += y[c] + bias[c]                (o and down: the residual add)
//   red_swiglu: out[i] = y[i] (gate), out[ff + i] = y[ff + i] (up), hm[i] = silu(gate) * up
// The chunk count is ceil(count / R), count from the selection the matvec read.

struct Params { cols: u32, R: u32, has_bias: u32, ff: u32 }

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read> sel: array<u32>;
@group(0) @binding(2) var<storage, read> partial: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> hm: array<f32>;

fn total(c: u32, chunks: u32) -> f32 {
    // four chunks' loads in flight at a time (no chunk: nothing selected, a threshold above every key)
    var s = vec4<f32>(0.0);
    var k = 0u;
    for (; k + 4u <= chunks; k += 4u) {
        s += vec4<f32>(partial[k * P.cols + c], partial[(k + 1u) * P.cols + c], partial[(k + 2u) * P.cols + c],
                       partial[(k + 3u) * P.cols + c]);
    }
    var r = (s.x + s.y) + (s.z + s.w);
    for (; k < chunks; k++) { r += partial[k * P.cols + c]; }
    if (P.has_bias != 0u) { r += bias[c]; }
    return r;
}

fn n_chunks() -> u32 { return (sel[0] + P.R - 1u) / P.R; }

@compute @workgroup_size(256)
fn red_store(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= P.cols) { return; }
    out[c] = total(c, n_chunks());
}

@compute @workgroup_size(256)
fn red_add(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= P.cols) { return; }
    out[c] = out[c] + total(c, n_chunks());
}

@compute @workgroup_size(256)
fn red_swiglu(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= P.ff) { return; }
    let chunks = n_chunks();
    let g = total(i, chunks);
    let u = total(P.ff + i, chunks);
    out[i] = g;
    out[P.ff + i] = u;
    hm[i] = g / (1.0 + exp(-g)) * u;   // lr_silu
}
