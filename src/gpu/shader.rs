//! WGSL sources: the `#tensor` declarations expanded into bindings and load/store helpers, and
//! the one check of every launch (params size, storage bindings, override names) against the
//! shader as naga parses it.
//!
//! A kernel family declares each f32-or-packed-f16 storage tensor once:
//!
//! ```text
//! #tensor(1, X, read, X_F16)
//! ```
//!
//! which becomes `@group(0) @binding(1) var<storage, read> X: array<u32>;`, a
//! `override X_F16: bool = false;` (once per override name, which several tensors may share),
//! and, where the source calls them, `ld_x(i) -> f32`, `ld2_x(i) -> vec2<f32>` (i even),
//! `ld4_x(row, d, n) -> vec4<f32>` (quad d of a row of n elements at `row`, both even, zero past
//! n) and, for `read_write` tensors, `st_x(i, v0, v1, has1)` (elements i, i+1; i even when f16),
//! `st2_x(i, v)` and `st4_x(row, d, n, v)` (dropping the padding past n). The declaration stays on its own line and helpers go at the end, so line
//! numbers in shader errors still point into the family's file.

use std::collections::{BTreeSet, HashMap};

/// A WGSL source file: one kernel family, forward and backward entry points together.
pub struct Shader {
    /// Family name: `shaders/NAME.wgsl`.
    pub name: &'static str,
    /// `shaders/common.wgsl` followed by the family's file, before `#tensor` expansion.
    pub source: &'static str,
}

/// The [`Shader`] of `shaders/NAME.wgsl`, with `shaders/common.wgsl` prepended (and, for
/// `shader!("NAME" after "BASE")`, `shaders/BASE.wgsl` between them).
#[macro_export]
macro_rules! shader {
    ($name:literal) => {
        $crate::gpu::Shader {
            name: $name,
            source: concat!(
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/common.wgsl")),
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/shaders/",
                    $name,
                    ".wgsl"
                ))
            ),
        }
    };
    // A family compiled after another's source (its structs, tensors and helpers).
    ($name:literal after $base:literal) => {
        $crate::gpu::Shader {
            name: $name,
            source: concat!(
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/common.wgsl")),
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/shaders/",
                    $base,
                    ".wgsl"
                )),
                include_str!(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/shaders/",
                    $name,
                    ".wgsl"
                ))
            ),
        }
    };
}

/// Expands the `#tensor(binding, NAME, read|read_write, OVERRIDE)` lines of `source`.
pub fn expand(source: &str) -> Result<String, String> {
    let mut out = String::with_capacity(source.len() * 2);
    let mut helpers = String::new();
    let mut overrides = BTreeSet::new();
    for (n, line) in source.lines().enumerate() {
        let Some(args) = line.trim().strip_prefix("#tensor(") else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let bad = || {
            format!(
                "line {}: expected #tensor(binding, NAME, read|read_write, OVERRIDE), got `{line}`",
                n + 1
            )
        };
        let args: Vec<&str> = args
            .strip_suffix(')')
            .ok_or_else(bad)?
            .split(',')
            .map(str::trim)
            .collect();
        let [binding, name, access, f16] = args[..] else {
            return Err(bad());
        };
        binding.parse::<u32>().map_err(|_| bad())?;
        let writable = match access {
            "read" => false,
            "read_write" => true,
            _ => return Err(bad()),
        };
        out.push_str(&format!(
            "@group(0) @binding({binding}) var<storage, {access}> {name}: array<u32>;\n"
        ));
        overrides.insert(f16);
        helpers.push_str(&tensor_helpers(source, name, f16, writable));
    }
    for o in overrides {
        out.push_str(&format!("override {o}: bool = false;\n"));
    }
    out.push_str(&helpers);
    Ok(out)
}

/// The load/store helpers of one tensor that `source` calls (and those they call).
fn tensor_helpers(source: &str, name: &str, f16: &str, writable: bool) -> String {
    let l = name.to_lowercase();
    let mut defs = vec![
        (
            "ld",
            format!(
                "fn ld_{l}(i: u32) -> f32 {{\n    if ({f16}) {{ return f16_at({name}[i >> 1u], i); }}\n    return bitcast<f32>({name}[i]);\n}}\n"
            ),
        ),
        (
            "ld2",
            format!(
                "fn ld2_{l}(i: u32) -> vec2<f32> {{\n    if ({f16}) {{ return unpack2x16float({name}[i >> 1u]); }}\n    return vec2<f32>(bitcast<f32>({name}[i]), bitcast<f32>({name}[i + 1u]));\n}}\n"
            ),
        ),
        (
            "ld4",
            format!(
                "fn ld4_{l}(row: u32, d: u32, n: u32) -> vec4<f32> {{\n    var hi = vec2<f32>(0.0);\n    if (4u * d + 2u < n) {{ hi = ld2_{l}(row + 4u * d + 2u); }}\n    return vec4<f32>(ld2_{l}(row + 4u * d), hi);\n}}\n"
            ),
        ),
    ];
    if writable {
        defs.push((
            "st",
            format!(
                "fn st_{l}(i: u32, v0: f32, v1: f32, has1: bool) {{\n    if ({f16}) {{ {name}[i >> 1u] = pack2x16float(vec2<f32>(v0, v1)); }} else {{\n        {name}[i] = bitcast<u32>(v0);\n        if (has1) {{ {name}[i + 1u] = bitcast<u32>(v1); }}\n    }}\n}}\n"
            ),
        ));
        defs.push((
            "st2",
            format!("fn st2_{l}(i: u32, v: vec2<f32>) {{ st_{l}(i, v.x, v.y, true); }}\n"),
        ));
        defs.push((
            "st4",
            format!(
                "fn st4_{l}(row: u32, d: u32, n: u32, v: vec4<f32>) {{\n    st2_{l}(row + 4u * d, v.xy);\n    if (4u * d + 2u < n) {{ st2_{l}(row + 4u * d + 2u, v.zw); }}\n}}\n"
            ),
        ));
    }
    let calls = |kind: &str| source.contains(&format!("{kind}_{l}("));
    let mut want: BTreeSet<&str> = ["ld", "ld2", "ld4", "st", "st2", "st4"]
        .into_iter()
        .filter(|k| calls(k))
        .collect();
    // Helpers written with other helpers.
    for (k, dep) in [("ld4", "ld2"), ("st4", "st2"), ("st2", "st")] {
        if want.contains(k) {
            want.insert(dep);
        }
    }
    defs.into_iter()
        .filter(|(k, _)| want.contains(k))
        .map(|(_, d)| d)
        .collect()
}

/// What one entry point of a parsed module binds: checked against every launch.
#[derive(Clone, Debug, Default)]
pub struct EntryLayout {
    /// Byte size of the uniform `Params` at binding 0 (None when the entry point does not use it).
    pub params_size: Option<u32>,
    /// Storage bindings the entry point uses, ascending.
    pub storage: Vec<u32>,
    /// Texture bindings the entry point uses, ascending.
    pub textures: Vec<u32>,
}

/// A family's entry points and override names, from naga.
#[derive(Clone, Debug, Default)]
pub struct Reflection {
    /// Entry point name → its bindings.
    pub entries: HashMap<String, EntryLayout>,
    /// Every `override` name in the module.
    pub overrides: BTreeSet<String>,
}

impl Reflection {
    /// Parses and validates expanded WGSL (the same front end wgpu uses).
    pub fn of(wgsl: &str) -> Result<Reflection, String> {
        let module = naga::front::wgsl::parse_str(wgsl).map_err(|e| e.emit_to_string(wgsl))?;
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .map_err(|e| e.emit_to_string(wgsl))?;
        let mut entries = HashMap::new();
        for (i, ep) in module.entry_points.iter().enumerate() {
            let fi = info.get_entry_point(i);
            let mut layout = EntryLayout::default();
            for (h, g) in module.global_variables.iter() {
                let Some(rb) = &g.binding else { continue };
                if fi[h].is_empty() || rb.group != 0 {
                    continue;
                }
                match g.space {
                    naga::AddressSpace::Uniform if rb.binding == 0 => {
                        layout.params_size = Some(module.types[g.ty].inner.size(module.to_ctx()));
                    }
                    naga::AddressSpace::Storage { .. } => layout.storage.push(rb.binding),
                    naga::AddressSpace::Handle => layout.textures.push(rb.binding),
                    _ => {}
                }
            }
            layout.storage.sort_unstable();
            entries.insert(ep.name.clone(), layout);
        }
        let overrides = module
            .overrides
            .iter()
            .filter_map(|(_, o)| o.name.clone())
            .collect();
        Ok(Reflection { entries, overrides })
    }

    /// Checks one launch of `entry` against the shader: `params_size` bytes at binding 0,
    /// exactly the storage `bindings` the entry point uses, and only existing override names.
    pub fn check(
        &self,
        entry: &str,
        params_size: usize,
        bindings: &[u32],
        textures: &[u32],
        overrides: &[(&str, f64)],
    ) -> Result<(), String> {
        let Some(layout) = self.entries.get(entry) else {
            return Err("no such entry point in the shader".into());
        };
        if let Some(size) = layout.params_size {
            if size as usize != params_size {
                return Err(format!(
                    "the launcher's params struct is {params_size} bytes, the shader's `Params` {size}"
                ));
            }
        }
        let mut bound = bindings.to_vec();
        bound.sort_unstable();
        if bound != layout.storage {
            return Err(format!(
                "the launcher binds storage {bound:?}, the shader uses {:?}",
                layout.storage
            ));
        }
        let mut bound = textures.to_vec();
        bound.sort_unstable();
        if bound != layout.textures {
            return Err(format!(
                "the launcher binds textures {bound:?}, the shader uses {:?}",
                layout.textures
            ));
        }
        if let Some((name, _)) = overrides.iter().find(|(k, _)| !self.overrides.contains(*k)) {
            return Err(format!("the shader has no override `{name}`"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "
struct Params { n: u32, _p0: u32, _p1: u32, _p2: u32, }
@group(0) @binding(0) var<uniform> p: Params;
#tensor(1, X, read, X_F16)
#tensor(2, Y, read_write, Y_F16)
#tensor(3, Z, read_write, Y_F16)
fn f16_at(w: u32, i: u32) -> f32 { let v = unpack2x16float(w); return select(v.x, v.y, (i & 1u) == 1u); }
@compute @workgroup_size(64)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x * 2u;
    if (i >= p.n) { return; }
    st2_y(i, ld2_x(i));
}
@compute @workgroup_size(64)
fn only_z(@builtin(global_invocation_id) gid: vec3<u32>) {
    st_z(gid.x, ld_z(gid.x), 0.0, false);
    st4_z(0u, 0u, 2u, ld4_z(0u, 0u, 2u));
}
@group(0) @binding(5) var T: texture_2d<u32>;
@compute @workgroup_size(64)
fn from_texture(@builtin(global_invocation_id) gid: vec3<u32>) {
    st_z(gid.x, bitcast<f32>(textureLoad(T, vec2<u32>(gid.x, 0u), 0).x), 0.0, false);
}
";

    #[test]
    fn expansion_declares_each_tensor_once_and_only_called_helpers() {
        let w = expand(SRC).unwrap();
        assert!(w.contains("@group(0) @binding(1) var<storage, read> X: array<u32>;"));
        assert_eq!(w.matches("override Y_F16: bool = false;").count(), 1);
        assert!(w.contains("fn ld2_x(") && w.contains("fn st2_y(") && w.contains("fn st_y("));
        assert!(!w.contains("fn ld_x(") && !w.contains("fn st_x("));
        // Quad helpers bring the pair helpers they are written with.
        for f in ["fn ld4_z(", "fn ld2_z(", "fn st4_z(", "fn st2_z("] {
            assert!(w.contains(f), "{f} missing");
        }
        // The declaration replaces its line: what follows keeps its line number.
        let line = |s: &str, pat: &str| s.lines().position(|l| l.contains(pat));
        assert_eq!(line(SRC, "fn copy("), line(&w, "fn copy("));
        assert!(expand("#tensor(1, X, write, X_F16)").is_err());
        assert!(expand("#tensor(one, X, read, X_F16)").is_err());
    }

    #[test]
    fn launches_are_checked_against_the_shader() {
        let r = Reflection::of(&expand(SRC).unwrap()).unwrap();
        assert_eq!(r.entries["copy"].storage, vec![1, 2]);
        assert_eq!(r.entries["copy"].params_size, Some(16));
        assert_eq!(r.entries["only_z"].storage, vec![3]);
        assert_eq!(r.entries["only_z"].params_size, None);
        assert!(r.check("copy", 16, &[2, 1], &[], &[("X_F16", 1.0)]).is_ok());
        let e = r.check("copy", 32, &[1, 2], &[], &[]).unwrap_err();
        assert!(e.contains("32 bytes") && e.contains("16"), "{e}");
        let e = r.check("copy", 16, &[1, 3], &[], &[]).unwrap_err();
        assert!(e.contains("[1, 3]") && e.contains("[1, 2]"), "{e}");
        assert!(r.check("copy", 16, &[1], &[], &[]).is_err());
        let e = r
            .check("copy", 16, &[1, 2], &[], &[("W_F16", 0.0)])
            .unwrap_err();
        assert!(e.contains("W_F16"), "{e}");
        assert!(r.check("nope", 16, &[], &[], &[]).is_err());
        // Textures are checked like storage.
        assert_eq!(r.entries["from_texture"].textures, vec![5]);
        assert!(r.check("from_texture", 16, &[3], &[5], &[]).is_ok());
        let e = r.check("from_texture", 16, &[3], &[], &[]).unwrap_err();
        assert!(e.contains("textures []") && e.contains("[5]"), "{e}");
        assert!(r.check("copy", 16, &[1, 2], &[5], &[]).is_err());
    }

    /// Every family parses, validates and declares its tensors (a typo fails here, not at run time).
    #[test]
    fn every_shader_family_expands_and_validates() {
        for s in [
            crate::shader!("adamw"),
            crate::shader!("attention"),
            crate::shader!("embed"),
            crate::shader!("gelu"),
            crate::shader!("layernorm"),
            crate::shader!("matmul"),
            crate::shader!("residual"),
            crate::shader!("softmax"),
        ] {
            let w = expand(s.source).unwrap_or_else(|e| panic!("{}: {e}", s.name));
            let r = Reflection::of(&w).unwrap_or_else(|e| panic!("{}: {e}", s.name));
            assert!(!r.entries.is_empty(), "{}", s.name);
        }
    }
}
