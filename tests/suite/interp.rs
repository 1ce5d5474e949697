//! Integration tests: position-embedding interpolation against transformers'
//! `ViTEmbeddings.interpolate_pos_encoding` references (tests/fixtures/interp.safetensors).

use crate::common::{get, load_fixture, Fixture};
use vitgpu::model::interp::interpolate_pos_embed;

fn tensor(f: &Fixture, name: &str, shape: &[usize]) -> Vec<f32> {
    let (s, data) = get(f, name);
    assert_eq!(s, shape, "{name} shape");
    data.clone()
}

fn check(st: &Fixture, pos: &str, n: usize, dim: usize, out: &str, h: usize, w: usize) {
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
    let st = load_fixture("interp.safetensors");
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
    let st = load_fixture("interp.safetensors");
    check(&st, "pos14", 14, 4, "out14.24x24", 24, 24);
}

#[test]
fn unchanged_square_grid_is_returned_as_is() {
    let st = load_fixture("interp.safetensors");
    let pos = tensor(&st, "pos", &[1, 17, 8]);
    assert_eq!(interpolate_pos_embed(&pos, 8, 4, 4).unwrap(), pos);
    assert!(interpolate_pos_embed(&pos[8..], 8, 4, 4).is_err()); // 16 rows: 15 patches
}
