//! `vitgpu info`: the GPU adapters with their backends, drivers, limits and features.

use crate::gpu::list_adapters;
use anyhow::{bail, Result};

/// Lists every adapter, the default first.
pub fn run() -> Result<i32> {
    let adapters = list_adapters();
    if adapters.is_empty() {
        bail!("{}", crate::gpu::NO_ADAPTER);
    }
    for (i, a) in adapters.iter().enumerate() {
        let info = a.get_info();
        let l = a.limits();
        println!(
            "[{i}] {}{}",
            info.name,
            if i == 0 { "  (default)" } else { "" }
        );
        println!(
            "    type: {:?}, backend: {:?}",
            info.device_type, info.backend
        );
        println!("    driver: {} {}", info.driver, info.driver_info);
        println!(
            "    vendor: {:#06x}, device: {:#06x}",
            info.vendor, info.device
        );
        println!(
            "    limits: max buffer {} MiB, max storage binding {} MiB, workgroup storage {} KiB, invocations/workgroup {}",
            l.max_buffer_size >> 20,
            l.max_storage_buffer_binding_size >> 20,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_compute_invocations_per_workgroup
        );
        let f = a.features();
        println!(
            "    features: shader-f16 {}, timestamp-query {}, subgroups {}",
            f.contains(wgpu::Features::SHADER_F16),
            f.contains(wgpu::Features::TIMESTAMP_QUERY),
            f.contains(wgpu::Features::SUBGROUP)
        );
    }
    Ok(0)
}
