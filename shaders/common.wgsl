// Shared helpers, prepended to every kernel family's source (see the `shader!` macro).
// Storage is `array<u32>`: f32 values are bitcast, f16 values are packed two per word.

const SQRT_2_OVER_PI: f32 = 0.7978845608028654;
const INV_SQRT_2: f32 = 0.7071067811865476;
const INV_SQRT_2PI: f32 = 0.3989422804014327;

// Element i of a word array holding packed f16 (even i in the low half).
fn f16_at(w: u32, i: u32) -> f32 {
    let v = unpack2x16float(w);
    return select(v.x, v.y, (i & 1u) == 1u);
}

// erf with |error| < 1.5e-7 (Abramowitz & Stegun 7.1.26); WGSL has no builtin.
fn erf_f32(x: f32) -> f32 {
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t;
    return sign(x) * (1.0 - poly * exp(-a * a));
}

// tanh that cannot overflow to NaN for large |x|.
fn tanh_safe(x: f32) -> f32 {
    return tanh(clamp(x, -15.0, 15.0));
}

// act: 0 identity, 1 exact-erf GELU ("gelu"), 2 tanh GELU ("gelu_new").
fn activate(x: f32, act: u32) -> f32 {
    if (act == 1u) {
        return 0.5 * x * (1.0 + erf_f32(x * INV_SQRT_2));
    }
    if (act == 2u) {
        return 0.5 * x * (1.0 + tanh_safe(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)));
    }
    return x;
}

// d activate(x) / dx.
fn activate_grad(x: f32, act: u32) -> f32 {
    if (act == 1u) {
        return 0.5 * (1.0 + erf_f32(x * INV_SQRT_2)) + x * INV_SQRT_2PI * exp(-0.5 * x * x);
    }
    if (act == 2u) {
        let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
        let th = tanh_safe(u);
        return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x);
    }
    return 1.0;
}

// Linear invocation id for 1-D launches split over a 2-D grid (more than 65535 workgroups).
fn flat_id(gid: vec3<u32>, nwg: vec3<u32>, wg_size: u32) -> u32 {
    return gid.x + gid.y * nwg.x * wg_size;
}

// Quad q (4 f32) of a tensor staged as a texture by Gpu::launch_textured: texel
// (q % 4096, q / 4096), 4096 = STAGE_WIDTH in gpu/mod.rs.
fn tex_quad(t: texture_2d<u32>, q: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(textureLoad(t, tex_texel(q), 0));
}
fn tex_texel(q: u32) -> vec2<u32> {
    return vec2<u32>(q & 4095u, q >> 12u);
}
