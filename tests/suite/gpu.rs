//! The GPU layer itself: a quiet start on a headless machine, and launches checked against
//! their shaders.

use std::process::Command;

/// `vitgpu info` with `XDG_RUNTIME_DIR` unset (a headless machine, a container, CI) prints the
/// adapters and nothing on stderr: no `XDG_RUNTIME_DIR is invalid or not set` from the Vulkan
/// loader's Wayland probe (Mesa's device-select layer prints it twice without the fix).
#[test]
fn info_without_xdg_runtime_dir_prints_no_error() {
    let o = Command::new(env!("CARGO_BIN_EXE_vitgpu"))
        .arg("info")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "stderr: {err}");
    assert!(out.contains("(default)"), "no adapter listed: {out}");
    assert!(!err.contains("XDG_RUNTIME_DIR"), "stderr: {err}");
    assert!(err.trim().is_empty(), "info printed on stderr: {err}");
}

/// A launch that does not match its shader is an error naming the kernel at the next sync,
/// not a silent wrong result or a driver crash (own device: the error would reach other tests).
#[test]
fn launch_mismatching_the_shader_is_an_error_naming_the_kernel() {
    use vitgpu::gpu::{AdapterChoice, DType, Gpu};
    let g = Gpu::new(&AdapterChoice::from_arg(None)).expect("GPU tests need an adapter");
    let x = g.upload(&[1.0, 2.0], &[1, 2], DType::F32).unwrap();
    let y = g.alloc(&[1, 2], DType::F32).unwrap();
    let params = [1u32, 2, 0, 0];
    // What softmax_forward really takes works, and gives a softmax.
    let sm = vitgpu::shader!("softmax");
    g.launch(
        &sm,
        "softmax_forward",
        &[],
        &params,
        &[(1, &x), (2, &y)],
        [1, 1, 1],
    );
    let p = g.read(&y).unwrap();
    assert!((p[1] - 1.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6, "{p:?}");
    // A params struct of the wrong size.
    g.launch(
        &sm,
        "softmax_forward",
        &[],
        &[0u32; 8],
        &[(1, &x), (2, &y)],
        [1, 1, 1],
    );
    let e = g.sync().unwrap_err().to_string();
    assert!(
        e.contains("softmax/softmax_forward") && e.contains("32 bytes"),
        "{e}"
    );
    // A binding the entry point does not have.
    g.launch(
        &sm,
        "softmax_forward",
        &[],
        &params,
        &[(1, &x), (3, &y)],
        [1, 1, 1],
    );
    let e = g.sync().unwrap_err().to_string();
    assert!(
        e.contains("softmax/softmax_forward") && e.contains("[1, 3]"),
        "{e}"
    );
    // An override the shader does not declare.
    let ov = [("X_F16", 1.0)];
    g.launch(
        &sm,
        "softmax_forward",
        &ov,
        &params,
        &[(1, &x), (2, &y)],
        [1, 1, 1],
    );
    let e = g.sync().unwrap_err().to_string();
    assert!(e.contains("X_F16"), "{e}");
    // The device is still usable afterwards.
    g.launch(
        &sm,
        "softmax_forward",
        &[],
        &params,
        &[(1, &x), (2, &y)],
        [1, 1, 1],
    );
    g.sync().unwrap();
}

fn predict_with_env(var: &str, value: &str, extra: &[&str]) -> (Option<i32>, String) {
    let model = crate::common::fixture_path("models/vit_tiny_cls");
    let img = crate::common::fixture_path("images/cat.png");
    let o = Command::new(env!("CARGO_BIN_EXE_vitgpu"))
        .env(var, value)
        .arg("predict")
        .arg("--model")
        .arg(&model)
        .args(extra)
        .arg(&img)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// An environment variable that does not parse is an error naming it, not silently ignored.
#[test]
fn unparsable_binding_cap_is_an_error() {
    for bad in ["abc", "0", "-1", "1.5"] {
        let (code, err) = predict_with_env("VITGPU_MAX_BINDING_MB", bad, &[]);
        assert_eq!(code, Some(2), "{bad}: {err}");
        assert!(
            err.contains("VITGPU_MAX_BINDING_MB") && err.contains(bad),
            "{bad}: {err}"
        );
    }
}

/// A weight larger than one buffer may be (position embeddings at 1024 px: 16385 × 96 f32,
/// 6 MiB, against a 1 MiB cap) is not fixed by a smaller batch, and the advice says so.
#[test]
fn a_weight_too_large_for_the_adapter_does_not_blame_the_batch_size() {
    let (code, err) = predict_with_env("VITGPU_MAX_BINDING_MB", "1", &["--res", "1024"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("weight tensor") && err.contains("batch size does not change it"),
        "{err}"
    );
    assert!(!err.contains("--batch-size"), "{err}");
}
