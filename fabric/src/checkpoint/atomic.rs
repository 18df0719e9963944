//! Atomic writes: a file or a directory appears under its final name
//! complete, or not at all.
//!
//! Everything is first written under a temporary name in the same directory
//! (`.<name>.tmp-<pid>-<n>`), flushed to the disk (`fsync`), then renamed
//! over the final name, and the directory holding it is flushed too. A
//! process killed at any point leaves either the previous content or the new
//! one under the final name, and at worst a temporary entry beside it, which
//! the next save of the same name removes.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

static COUNTER: AtomicU64 = AtomicU64::new(0);

const TEMP_TAG: &str = ".tmp-";

pub(crate) fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// The directory holding `path` (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::InvalidArgument(format!("{} has no file name", path.display())))
}

/// A fresh temporary name beside `path`.
pub(crate) fn temp_path(path: &Path) -> Result<PathBuf> {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(parent(path).join(format!(
        ".{}{TEMP_TAG}{}-{n}",
        file_name(path)?,
        std::process::id()
    )))
}

/// Removes temporary entries that earlier, interrupted writes of `path`
/// left beside it. Only the process that writes `path` may call this.
pub(crate) fn remove_stale_temporaries(path: &Path) -> Result<()> {
    let prefix = format!(".{}{TEMP_TAG}", file_name(path)?);
    let Ok(entries) = std::fs::read_dir(parent(path)) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let stale = entry.path();
            let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&stale)
            } else {
                std::fs::remove_file(&stale)
            };
            removed.map_err(io_error(format!("removing {}", stale.display())))?;
        }
    }
    Ok(())
}

/// Flushes a directory's entries (new names, renames) to the disk.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(format!("flushing directory {}", dir.display())))
}

/// Writes a file with `write`, flushes it to the disk, and returns it.
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

/// Puts the complete directory `temp` under the name `path`, atomically:
/// `path` names either its previous content or `temp`'s, never a mix or
/// nothing. An existing `path` is swapped with `temp` in one step
/// (`renameat2(RENAME_EXCHANGE)` on Linux) and then deleted.
pub(crate) fn replace_dir(temp: &Path, path: &Path) -> Result<()> {
    let context = || format!("renaming {} to {}", temp.display(), path.display());
    if !path.exists() {
        std::fs::rename(temp, path).map_err(io_error(context()))?;
        return sync_dir(parent(path));
    }
    exchange(temp, path).map_err(io_error(context()))?;
    sync_dir(parent(path))?;
    // `temp` now names the previous checkpoint.
    std::fs::remove_dir_all(temp).map_err(io_error(format!(
        "removing the previous checkpoint {}",
        temp.display()
    )))
}

#[cfg(target_os = "linux")]
fn exchange(a_path: &Path, b_path: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(a_path.as_os_str().as_bytes())?;
    let b = CString::new(b_path.as_os_str().as_bytes())?;
    // SAFETY: both are valid NUL-terminated paths; AT_FDCWD resolves them
    // relative to the working directory, as `rename` does.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        // A file system (or kernel) without RENAME_EXCHANGE.
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => exchange_by_renames(a_path, b_path),
        _ => Err(error),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    exchange_by_renames(a, b)
}

/// Without an atomic exchange, two renames: the previous directory moves
/// aside first, so a crash between them leaves it complete under
/// `.<name>.tmp-...-old`.
fn exchange_by_renames(a: &Path, b: &Path) -> std::io::Result<()> {
    let aside = PathBuf::from(format!("{}-old", a.display()));
    std::fs::rename(b, &aside)?;
    std::fs::rename(a, b)?;
    std::fs::rename(&aside, a)
}
