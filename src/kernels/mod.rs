//! Typed launchers for every WGSL kernel family, with CPU references.
