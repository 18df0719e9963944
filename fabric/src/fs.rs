//! Atomic file writes, shared by checkpoints and loggers: a file appears
//! under its final name complete, or not at all.
//!
//! A file is first written under a temporary name in the same directory
//! (`.<name>.tmp-<pid>-<n>`), flushed to the disk (`fsync`), then renamed
//! over the final name, and the directory holding it is flushed too. A
//! process killed at any point leaves either the previous content or the new
//! one under the final name, and at worst a temporary entry beside it.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// What the names of temporary entries hold after the final name.
pub(crate) const TEMP_TAG: &str = ".tmp-";

pub(crate) fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

pub(crate) fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::InvalidArgument(format!("{} has no file name", path.display())))
}

/// A fresh temporary name beside `path`: `.<name>.tmp-<pid>-<n>`.
pub(crate) fn temp_path(path: &Path) -> Result<PathBuf> {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(parent(path).join(format!(
        ".{}{TEMP_TAG}{}-{n}",
        file_name(path)?,
        std::process::id()
    )))
}

/// Flushes a directory's entries (new names, renames) to the disk.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(format!("flushing directory {}", dir.display())))
}

/// Writes the new file `path` with `write` and flushes it to the disk.
pub(crate) fn write_new_file(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let context = || format!("writing {}", path.display());
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_error(context()))?;
    let mut out = BufWriter::new(file);
    write(&mut out).map_err(io_error(context()))?;
    let file = out
        .into_inner()
        .map_err(|e| io_error(context())(e.into_error()))?;
    file.sync_all().map_err(io_error(context()))
}

/// Replaces the file `path` with what `write` writes, atomically.
pub(crate) fn write_file(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let temp = temp_path(path)?;
    let result = write_new_file(&temp, write).and_then(|()| {
        std::fs::rename(&temp, path).map_err(io_error(format!(
            "renaming {} to {}",
            temp.display(),
            path.display()
        )))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
        return result;
    }
    sync_dir(parent(path))
}
