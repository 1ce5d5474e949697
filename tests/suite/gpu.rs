//! Start-up of the GPU layer as a user meets it: quiet on a headless machine.

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
