//! Integration tests: position-embedding interpolation against transformers'
//! `ViTEmbeddings.interpolate_pos_encoding` references (tests/fixtures/interp.safetensors).

use safetensors::{Dtype, SafeTensors};
use std::path::Path;
use vitgpu::model::interp::interpolate_pos_embed;

fn load_refs() -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/interp.safetensors");
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; generate the fixtures with tools/make_fixtures.py",
            p.display()
        )
    })
}

fn tensor(st: &SafeTensors, name: &str, shape: &[usize]) -> Vec<f32> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name} dtype");
    assert_eq!(t.shape(), shape, "{name} shape");
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn check(st: &SafeTensors, pos: &str, n: usize, dim: usize, out: &str, h: usize, w: usize) {
    let input = tensor(st, pos, &[1, 1 + n * n, dim]);
    let want = tensor(st, out, &[1, 1 + h * w, dim]);
    let got = interpolate_pos_embed(&input, dim, h, w).unwrap();
    assert_eq!(got.len(), want.len(), "{out} length");
    let (mut max, mut worst, mut differ) = (0f32, 0usize, 0usize);
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        let e = (a - b).abs();
        differ += (a != b) as usize;
        assert!(e.is_finite(), "{out}: non-finite at {i}");
        if e > max {
            max = e;
            worst = i;
        }
    }
    let (row, c) = (worst / dim, worst % dim);
    let msg = format!(
        "{out}: {differ}/{} values not bit-identical; max abs diff {max:e} at row {row} \
         (grid y={} x={}) channel {c}: got {} want {}",
        got.len(),
        row.saturating_sub(1) / w,
        row.saturating_sub(1) % w,
        got[worst],
        want[worst]
    );
    println!("{msg}");
    assert!(max <= 1e-6, "{msg}");
}

#[test]
fn matches_transformers_small_grid() {
    let bytes = load_refs();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for (name, h, w) in [
        ("out.6x6", 6, 6),
        ("out.3x5", 3, 5),
        ("out.7x2", 7, 2),
        ("out.2x2", 2, 2),
    ] {
        check(&st, "pos", 4, 8, name, h, w);
    }
}

#[test]
fn matches_transformers_vit_base_grid_14_to_24() {
    let bytes = load_refs();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    check(&st, "pos14", 14, 4, "out14.24x24", 24, 24);
}

#[test]
fn unchanged_square_grid_is_returned_as_is() {
    let bytes = load_refs();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let pos = tensor(&st, "pos", &[1, 17, 8]);
    assert_eq!(interpolate_pos_embed(&pos, 8, 4, 4).unwrap(), pos);
    assert!(interpolate_pos_embed(&pos[8..], 8, 4, 4).is_err()); // 16 rows: 15 patches
}
