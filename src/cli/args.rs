//! Argument parsers shared by the commands: numbers checked against their range, names of
//! library enums, the adapter, and the environment variables, so that bad input is a clap
//! error (exit code 2) before any model or GPU is loaded.

use crate::data::EvalTransform;
use crate::gpu::AdapterChoice;
use crate::infer::Precision;
use crate::train::{Range, Schedule};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use std::path::PathBuf;

/// A real number in `range`.
pub fn real(range: Range) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |s| {
        let v: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not a number"))?;
        range.check(v)
    }
}

/// A whole number ≥ 1.
pub fn count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a whole number >= 1")),
    }
}

/// A folder to write into: anything but an existing file.
pub fn output_dir(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.exists() && !p.is_dir() {
        return Err(format!(
            "{s} is a file: give a folder (new, empty, or an earlier vitgpu run)"
        ));
    }
    Ok(p)
}

/// A folder that exists.
pub fn existing_dir(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if !p.is_dir() {
        return Err(format!("{s} is not a folder"));
    }
    Ok(p)
}

/// `f32` or `f16`.
pub fn precision() -> impl TypedValueParser<Value = Precision> {
    PossibleValuesParser::new(Precision::NAMES.map(|(n, _)| n)).try_map(|s| s.parse::<Precision>())
}

/// `squash` or `center-crop`.
pub fn eval_transform() -> impl TypedValueParser<Value = EvalTransform> {
    PossibleValuesParser::new(EvalTransform::NAMES.map(|(n, _)| n))
        .try_map(|s| s.parse::<EvalTransform>())
}

/// `cosine`, `linear` or `constant`.
pub fn schedule() -> impl TypedValueParser<Value = Schedule> {
    PossibleValuesParser::new(Schedule::NAMES.map(|(n, _)| n)).try_map(|s| s.parse::<Schedule>())
}

/// An adapter index or (part of) a name, as `vitgpu info` lists them; empty is the default.
pub fn adapter(s: &str) -> Result<AdapterChoice, String> {
    let s = s.trim();
    Ok(match s.parse::<usize>() {
        _ if s.is_empty() => AdapterChoice::Best,
        Ok(i) => AdapterChoice::Index(i),
        Err(_) => AdapterChoice::Name(s.to_string()),
    })
}

/// Environment variables read outside clap: an error message when one is set but malformed.
pub fn check_env() -> Result<(), String> {
    let name = "VITGPU_MAX_BINDING_MB";
    let Some(v) = std::env::var_os(name) else {
        return Ok(());
    };
    let ok = match v.to_str() {
        Some("") => true,
        Some(s) => s.parse::<u64>().is_ok_and(|mb| (1..1 << 40).contains(&mb)),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name}={v:?} is not a whole number of MiB >= 1: set it to the per-buffer cap to \
             try (e.g. 256), or unset it to use the adapter's limit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_refuse_what_is_out_of_range() {
        let lr = real(Range::Positive);
        assert_eq!(lr("1e-3"), Ok(1e-3));
        for bad in ["-1", "0", "nan", "inf", "x"] {
            assert!(lr(bad).is_err(), "{bad}");
        }
        assert_eq!(count("3"), Ok(3));
        assert!(count("0").is_err() && count("-2").is_err());
        assert!(matches!(adapter("1"), Ok(AdapterChoice::Index(1))));
        assert!(matches!(adapter("llvm"), Ok(AdapterChoice::Name(_))));
        assert!(matches!(adapter(" "), Ok(AdapterChoice::Best)));
    }
}
