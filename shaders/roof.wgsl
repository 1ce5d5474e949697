// Roof micro-kernels for `vitgpu bench`: the adapter's peak FMA rate (three independent vec4
// FMA chains per invocation, four steps each per iteration, nothing read from memory), its
// copy bandwidth (vec4 loads and stores) and its read rate (`roof_read`: storage quads
// against texture quads), measured in the same run as the kernels they bound.

struct Params {
    n: u32,
    iters: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> SRC: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> DST: array<vec4<f32>>;

override WG: u32 = 256u;

@compute @workgroup_size(WG)
fn roof_fma(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    let x = f32(i) * 1e-9;
    // Three vec4 chains: 12 vector registers on a CPU adapter, where each lane-value is one
    // register of 16. Eight chains spilled and read 35% low on llvmpipe (its fma is a
    // multiply and an add, so 12 independent chains cover their latency).
    var c0 = vec4<f32>(x); var c1 = c0 + 0.1; var c2 = c0 + 0.2;
    let m = vec4<f32>(0.999999);
    let k = vec4<f32>(1e-7);
    for (var t = 0u; t < p.iters; t++) {
        c0 = fma(c0, m, k); c1 = fma(c1, m, k); c2 = fma(c2, m, k);
        c0 = fma(c0, m, k); c1 = fma(c1, m, k); c2 = fma(c2, m, k);
        c0 = fma(c0, m, k); c1 = fma(c1, m, k); c2 = fma(c2, m, k);
        c0 = fma(c0, m, k); c1 = fma(c1, m, k); c2 = fma(c2, m, k);
    }
    // Stored so that the chains are not optimised away.
    if (i < p.n) { DST[i] = c0 + c1 + c2; }
}

@compute @workgroup_size(WG)
fn roof_copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    if (i < p.n) { DST[i] = SRC[i]; }
}

// Each invocation sums `iters` quads of SRC, strided by the invocation count (every quad read
// once per pass over SRC), from SRC itself or (READ_TEX) from SRC staged as a texture
// (Gpu::launch_textured): what a kernel's loads cost on this adapter either way.
override READ_TEX: bool = false;
@group(0) @binding(3) var SRC_TEX: texture_2d<u32>;

@compute @workgroup_size(WG)
fn roof_read(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg, WG);
    let stride = nwg.x * nwg.y * WG;
    var s = vec4<f32>(0.0);
    for (var t = 0u; t < p.iters; t++) {
        let q = (i + t * stride) % p.n;
        if (READ_TEX) {
            s += tex_quad(SRC_TEX, q);
        } else {
            s += SRC[q];
        }
    }
    DST[i] = s;
}
