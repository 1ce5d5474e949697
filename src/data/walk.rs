//! Finding image files: directory walks that report what they leave out, and why.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// File extensions (lower case) a directory walk takes as images: the formats PIL reads that
/// we decode.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff"];

/// True when the extension is one of [`IMAGE_EXTENSIONS`] (any case).
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Something a directory walk left out, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedFile {
    /// The entry as found in the walk (not resolved through symbolic links).
    pub path: PathBuf,
    /// Why it was left out, in words ("broken symbolic link ...", "not an image ...").
    pub reason: String,
}

/// The result of a walk: image files to decode, and the entries left out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Walk {
    /// Image files, each input's in path order, inputs in the order given.
    pub images: Vec<PathBuf>,
    /// Entries of walked directories that are not images or cannot be followed: non-image
    /// files, broken or looping symbolic links, folders reached twice, special files.
    pub skipped: Vec<SkippedFile>,
}

impl Walk {
    /// Everything the walk found: images plus skipped entries (the M of "N of M").
    pub fn total(&self) -> usize {
        self.images.len() + self.skipped.len()
    }
}

/// What to do with one directory entry, following symbolic links.
pub(crate) enum Entry {
    /// A directory; `real` is its path with symbolic links resolved.
    Dir { real: PathBuf },
    /// A regular file.
    File,
    /// Left out, with the reason.
    Skip(String),
}

/// Classify `path`, following a symbolic link to its target; broken and looping links and
/// special files (sockets, FIFOs, devices) are skipped with a reason.
pub(crate) fn classify(path: &Path) -> Entry {
    let link = std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false);
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if link && e.kind() == std::io::ErrorKind::NotFound => {
            let target = std::fs::read_link(path)
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "?".into());
            return Entry::Skip(format!(
                "broken symbolic link: its target {target} does not exist"
            ));
        }
        Err(e) if link => {
            return Entry::Skip(format!("symbolic link cannot be followed: {e}"));
        }
        Err(e) => return Entry::Skip(format!("cannot be read: {e}")),
    };
    if meta.is_dir() {
        Entry::Dir {
            real: path.canonicalize().unwrap_or_else(|_| path.to_path_buf()),
        }
    } else if meta.is_file() {
        Entry::File
    } else {
        Entry::Skip("not a regular file (socket, FIFO or device)".into())
    }
}

/// Why a regular file is not taken as an image.
pub(crate) fn not_an_image_reason(path: &Path) -> String {
    match path.extension() {
        Some(e) => format!(
            "not an image file (extension .{}; images are .{})",
            e.to_string_lossy(),
            IMAGE_EXTENSIONS.join(" .")
        ),
        None => format!(
            "not an image file (no extension; images are .{})",
            IMAGE_EXTENSIONS.join(" .")
        ),
    }
}

fn walk_dir(
    dir: &Path,
    real: PathBuf,
    walk: &mut Walk,
    visited: &mut Vec<(PathBuf, PathBuf)>,
) -> Result<()> {
    // Never enter the same real directory twice: this ends symbolic-link loops.
    if let Some((_, first)) = visited.iter().find(|(r, _)| *r == real) {
        walk.skipped.push(SkippedFile {
            path: dir.to_path_buf(),
            reason: format!(
                "folder already walked as {} (symbolic link loop or alias); not walked twice",
                first.display()
            ),
        });
        return Ok(());
    }
    visited.push((real, dir.to_path_buf()));
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("cannot list directory {}", dir.display()))?
    {
        let entry = entry.with_context(|| format!("cannot list directory {}", dir.display()))?;
        entries.push(entry.path());
    }
    // Sorted here so that the first of two aliases of a folder is the one walked.
    entries.sort();
    for p in entries {
        match classify(&p) {
            Entry::Dir { real } => walk_dir(&p, real, walk, visited)?,
            Entry::File if is_image_path(&p) => walk.images.push(p),
            Entry::File => {
                let reason = not_an_image_reason(&p);
                walk.skipped.push(SkippedFile { path: p, reason })
            }
            Entry::Skip(reason) => walk.skipped.push(SkippedFile { path: p, reason }),
        }
    }
    Ok(())
}

/// Expand inputs: files are kept as given (whatever their extension); directories are walked
/// recursively (following symbolic links) for image files by extension (see
/// [`is_image_path`]), sorted by path. Everything else a walk meets is listed in
/// [`Walk::skipped`] with the reason. An input that does not exist is an error.
pub fn walk_images(inputs: &[PathBuf]) -> Result<Walk> {
    let mut all = Walk::default();
    for input in inputs {
        match classify(input) {
            Entry::Dir { real } => {
                let mut w = Walk::default();
                walk_dir(input, real, &mut w, &mut Vec::new())?;
                w.images.sort();
                w.skipped.sort_by(|a, b| a.path.cmp(&b.path));
                all.images.extend(w.images);
                all.skipped.extend(w.skipped);
            }
            Entry::File => all.images.push(input.clone()),
            Entry::Skip(reason) if input.symlink_metadata().is_ok() => {
                bail!(
                    "input {} cannot be used: {reason}; pass image files or directories of images",
                    input.display()
                )
            }
            Entry::Skip(_) => bail!(
                "input {} does not exist; pass image files or directories of images",
                input.display()
            ),
        }
    }
    Ok(all)
}

/// The image files of [`walk_images`], without the list of skipped entries.
pub fn collect_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    Ok(walk_images(inputs)?.images)
}

/// Tells on stderr what a walk left out: every entry and its reason when `verbose`, else a
/// one-line count pointing at `-v`.
pub fn report_skipped(skipped: &[SkippedFile], verbose: bool) {
    if skipped.is_empty() {
        return;
    }
    if verbose {
        for s in skipped {
            eprintln!("skipped {}: {}", s.path.display(), s.reason);
        }
    } else {
        eprintln!(
            "note: {} entr{} skipped (not images, or links that cannot be followed); -v lists them",
            skipped.len(),
            if skipped.len() == 1 {
                "y was"
            } else {
                "ies were"
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_path_extensions() {
        for p in [
            "a.jpg", "b.JPEG", "c.Png", "d.webp", "e.bmp", "f.TIF", "g.tiff", "h.gif", "i.GIF",
        ] {
            assert!(is_image_path(Path::new(p)), "{p}");
        }
        for p in ["a.txt", "b", "jpg", ".png.bak"] {
            assert!(!is_image_path(Path::new(p)), "{p}");
        }
    }
}
