//! Adapter discovery and choice: discrete > integrated > software, or as the user names it.

use anyhow::{bail, Result};

/// Which adapter to open: the best one, or one named by index or (part of) its name.
#[derive(Clone, Debug, Default)]
pub enum AdapterChoice {
    /// The first of [`list_adapters`]: discrete > integrated > software.
    #[default]
    Best,
    /// The adapter at this index of [`list_adapters`].
    Index(usize),
    /// The first adapter whose name contains this (case-insensitive).
    Name(String),
}

impl AdapterChoice {
    /// `--adapter` value, else `VITGPU_ADAPTER`, else the best adapter.
    pub fn from_arg(arg: Option<&str>) -> AdapterChoice {
        let env = std::env::var("VITGPU_ADAPTER").ok();
        match arg.map(str::to_string).or(env).filter(|s| !s.is_empty()) {
            None => AdapterChoice::Best,
            Some(s) => match s.parse::<usize>() {
                Ok(i) => AdapterChoice::Index(i),
                Err(_) => AdapterChoice::Name(s),
            },
        }
    }
}

fn rank(info: &wgpu::AdapterInfo) -> u32 {
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    // Prefer native compute APIs over GL at equal kind.
    let backend = if info.backend == wgpu::Backend::Gl {
        1
    } else {
        0
    };
    kind * 2 + backend
}

/// All adapters in the order `--adapter INDEX` counts them (best first).
pub fn list_adapters() -> Vec<wgpu::Adapter> {
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| {
        private_runtime_dir();
        log_from_env();
    });
    let enumerate = |backends: wgpu::Backends| {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let mut v: Vec<wgpu::Adapter> = pollster::block_on(instance.enumerate_adapters(backends));
        v.retain(|a| {
            a.get_downlevel_capabilities()
                .flags
                .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        });
        v
    };
    // GL is a last resort (and probing EGL is noisy), so look at it only when nothing else exists.
    let mut adapters = match wgpu::Backends::from_env() {
        Some(b) => enumerate(b),
        None => {
            let v = enumerate(wgpu::Backends::PRIMARY);
            if v.is_empty() {
                enumerate(wgpu::Backends::GL)
            } else {
                v
            }
        }
    };
    adapters.sort_by_key(|a| rank(&a.get_info()));
    adapters
}

/// What to install when no adapter is found, for every command that needs one.
pub const NO_ADAPTER: &str =
    "no GPU adapter found: install a Vulkan driver and loader (Debian/Ubuntu: \
`apt-get install libvulkan1 mesa-vulkan-drivers`, which includes Mesa's lavapipe for machines \
without a GPU; Fedora: `dnf install vulkan-loader mesa-vulkan-drivers`); macOS (Metal) and \
Windows (DX12) need nothing. Without Vulkan, OpenGL is tried (Debian/Ubuntu: `apt-get install \
libegl1 libgl1-mesa-dri`)";

/// The adapters `choice` allows, in the order to try them: every adapter best first for
/// [`AdapterChoice::Best`] (the next is used where one fails the self-check), else the one named.
pub(crate) fn candidates(choice: &AdapterChoice) -> Result<Vec<wgpu::Adapter>> {
    let mut adapters = list_adapters();
    if adapters.is_empty() {
        bail!("{NO_ADAPTER}");
    }
    let names = || {
        adapters
            .iter()
            .enumerate()
            .map(|(i, a)| format!("  {i}: {} ({:?})", a.get_info().name, a.get_info().backend))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let idx = match choice {
        AdapterChoice::Best => return Ok(adapters),
        AdapterChoice::Index(i) => {
            if *i >= adapters.len() {
                bail!(
                    "--adapter {i}: there are only {} adapters:\n{}",
                    adapters.len(),
                    names()
                );
            }
            *i
        }
        AdapterChoice::Name(n) => {
            let lower = n.to_lowercase();
            match adapters
                .iter()
                .position(|a| a.get_info().name.to_lowercase().contains(&lower))
            {
                Some(i) => i,
                None => bail!(
                    "--adapter '{n}': no adapter has that name; available:\n{}",
                    names()
                ),
            }
        }
    };
    Ok(vec![adapters.swap_remove(idx)])
}

/// Gives the process a private `XDG_RUNTIME_DIR` when it has none (headless machines, containers).
///
/// Mesa's Vulkan device-select layer probes for a Wayland display at instance creation, and
/// libwayland prints `error: XDG_RUNTIME_DIR is invalid or not set` when the variable is unset
/// or not an absolute path. With a valid (empty) directory the probe just finds no display.
fn private_runtime_dir() {
    #[cfg(all(unix, not(target_os = "macos")))]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        let cur = std::env::var_os("XDG_RUNTIME_DIR").unwrap_or_default();
        if std::path::Path::new(&cur).is_absolute() {
            return;
        }
        // The owner of /proc/self is our effective uid (no libc needed to ask).
        let uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
        let ours = |p: &std::path::Path| {
            std::fs::symlink_metadata(p).is_ok_and(|m| {
                m.is_dir() && Some(m.uid()) == uid && m.permissions().mode() & 0o077 == 0
            })
        };
        let tmp = std::env::temp_dir();
        let mut dir = tmp.join(format!("vitgpu-runtime-{}", uid.unwrap_or(u32::MAX)));
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
        if !ours(&dir) {
            // Someone else's (or a symlink): never use it; make one for this process only.
            dir = tmp.join(format!("vitgpu-runtime-{}", std::process::id()));
            let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
            if !ours(&dir) {
                return;
            }
        }
        // Before any Instance exists; the loader and Mesa read it at instance creation.
        std::env::set_var("XDG_RUNTIME_DIR", &dir);
    }
}

/// With `RUST_LOG=error|warn|info|debug|trace`, wgpu's and the drivers' log messages go to
/// stderr; without it they are dropped (no logger is installed).
fn log_from_env() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= log::max_level()
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                eprintln!("[{} {}] {}", r.level(), r.target(), r.args());
            }
        }
        fn flush(&self) {}
    }
    let Some(level) = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.trim().parse::<log::LevelFilter>().ok())
    else {
        return;
    };
    if log::set_logger(&Stderr).is_ok() {
        log::set_max_level(level);
    }
}
