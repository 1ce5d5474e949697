//! Shared test helpers: the GPU, fixtures, seeded data and a tolerance check that names the worst element.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use vitgpu::gpu::{AdapterChoice, Gpu};

/// The one GPU of this test binary. Fails (never skips) when there is no adapter: CI has lavapipe.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::new(&AdapterChoice::from_arg(None)) {
        Ok(g) => g,
        Err(e) => panic!("GPU tests need an adapter: {e:#}"),
    })
}

/// Path of `rel` under tests/fixtures (a missing file is reported by whoever opens it).
pub fn fixture_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The tensors of a safetensors file by name: (shape, data as f32).
pub type Fixture = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Every tensor of a fixture file as (shape, f32 data); integer tensors are converted.
pub fn load_fixture(rel: &str) -> Fixture {
    read_safetensors(&fixture_path(rel))
}

/// Every tensor of a safetensors file as (shape, f32 data), read directly (not through
/// vitgpu's loader); F32, F16, I64 and U8 tensors are converted.
pub fn read_safetensors(path: &Path) -> Fixture {
    let bytes = std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (fixtures come from tools/make_fixtures.py)",
            path.display()
        )
    });
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{} is not safetensors: {e:?}", path.display()));
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let d = view.data();
        let data: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => d
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            safetensors::Dtype::F16 => d
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            safetensors::Dtype::I64 => d
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect(),
            safetensors::Dtype::U8 => d.iter().map(|&b| b as f32).collect(),
            dt => panic!("{} tensor {name}: unexpected dtype {dt:?}", path.display()),
        };
        out.insert(name.to_string(), (view.shape().to_vec(), data));
    }
    out
}

pub fn get<'a>(
    f: &'a HashMap<String, (Vec<usize>, Vec<f32>)>,
    name: &str,
) -> &'a (Vec<usize>, Vec<f32>) {
    f.get(name)
        .unwrap_or_else(|| panic!("fixture tensor {name} missing"))
}

/// The tests' one seeded generator: a 64-bit LCG (Knuth's MMIX constants), uniform in [-1, 1).
pub struct Lcg(u64);

impl Lcg {
    /// A generator whose sequence depends only on `seed`.
    pub fn new(seed: u64) -> Self {
        Lcg(seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407))
    }

    /// The next value, uniform in [-1, 1) with 24 bits.
    pub fn next_f32(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Seeded uniform(-scale, scale) data.
pub fn rand_vec(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = Lcg::new(seed);
    (0..n).map(|_| rng.next_f32() * scale).collect()
}

/// Asserts `|got − want| ≤ atol + rtol·|want|` elementwise; on failure names the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} vs {}",
        got.len(),
        want.len()
    );
    let mut worst = (0usize, 0.0f32);
    let mut bad = 0usize;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        if excess > 0.0 || g.is_nan() != w.is_nan() {
            bad += 1;
        }
        let e = if g.is_nan() { f32::INFINITY } else { excess };
        if i == 0 || e > worst.1 {
            worst = (i, e);
        }
    }
    let (i, _) = worst;
    assert!(
        bad == 0,
        "{what}: {bad} of {} elements outside atol {atol} + rtol {rtol}; worst at [{i}]: got {} want {} (|diff| {})",
        got.len(),
        got[i],
        want[i],
        (got[i] - want[i]).abs()
    );
}

/// max |got − want|, for reporting.
pub fn max_abs_diff(got: &[f32], want: &[f32]) -> f32 {
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// Reads `t` back and compares it with fixture tensor `name` (see [`assert_close`]).
pub fn check_fixture(
    g: &Gpu,
    f: &HashMap<String, (Vec<usize>, Vec<f32>)>,
    name: &str,
    t: &vitgpu::gpu::GpuTensor,
    atol: f32,
    rtol: f32,
) {
    assert_close(name, &g.read(t).unwrap(), &get(f, name).1, atol, rtol);
}
