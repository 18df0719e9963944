//! Replacing a checkpoint directory atomically, and cleaning up what an
//! interrupted save left.
//!
//! A new checkpoint is written under a temporary name beside the final one
//! ([`crate::fs::temp_path`]), flushed, then put under the final name:
//!
//! - where the file system can (`renameat2(RENAME_EXCHANGE)` on Linux), by
//!   swapping it with the previous checkpoint in one step; the previous one
//!   is then under the temporary name and is deleted;
//! - elsewhere (NFS, Lustre, other systems), by two renames: the previous
//!   checkpoint moves aside to `.<name>.previous`, the new one takes the
//!   final name, and the previous one is deleted. Between the renames the
//!   final name is missing, and [`load`](super::load) reads the previous
//!   checkpoint from `.<name>.previous` instead; a save interrupted there
//!   leaves `.<name>.previous`, which the next save puts back
//!   ([`recover`]) before anything else, so no save ever deletes the only
//!   complete checkpoint.
//!
//! A previous checkpoint that cannot be deleted (a file of another owner, a
//! read-only or immutable entry) does not make the save fail: the new
//! checkpoint is in place, the old one is left under a temporary name that
//! a warning on stderr names, and later saves try again to delete it,
//! warning again while they cannot.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::fs::{TEMP_TAG, file_name, io_error, parent, sync_dir, temp_path};

/// Where the two-rename swap keeps the previous checkpoint while the new
/// one takes its name: `.<name>.previous`, beside it.
pub(crate) fn aside_path(path: &Path) -> Result<PathBuf> {
    Ok(parent(path).join(format!(".{}.previous", file_name(path)?)))
}

/// Deletes a directory tree (or a file).
fn remove_tree(path: &Path) -> std::io::Result<()> {
    #[cfg(test)]
    if faults::UNDELETABLE.get() {
        return Err(std::io::Error::from_raw_os_error(libc::EPERM));
    }
    if std::fs::symlink_metadata(path)?.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Removes temporary entries that earlier, interrupted or incomplete saves
/// of `path` left beside it; one that cannot be removed is named in a
/// warning and left. Only the process that writes `path` may call this, and
/// only after [`recover`].
pub(crate) fn remove_stale_temporaries(path: &Path) -> Result<()> {
    let prefix = format!(".{}{TEMP_TAG}", file_name(path)?);
    let Ok(entries) = std::fs::read_dir(parent(path)) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let stale = entry.path();
            if let Err(error) = remove_tree(&stale) {
                eprintln!(
                    "fabric: warning: cannot remove {}, left by an earlier save of {} ({error}); it is left as it is",
                    stale.display(),
                    path.display()
                );
            }
        }
    }
    Ok(())
}

/// Finishes what a save interrupted in the middle of a two-rename swap left:
/// with `path` missing, the previous checkpoint in `.<name>.previous` is put
/// back under `path`; with `path` in place, it is deleted. Called first by
/// every save.
pub(crate) fn recover(path: &Path) -> Result<()> {
    let aside = aside_path(path)?;
    if std::fs::symlink_metadata(&aside).is_err() {
        return Ok(());
    }
    if std::fs::symlink_metadata(path).is_err() {
        std::fs::rename(&aside, path).map_err(io_error(format!(
            "restoring the previous checkpoint {} to {}",
            aside.display(),
            path.display()
        )))?;
        return sync_dir(parent(path));
    }
    remove_previous(&aside, path);
    Ok(())
}

/// Deletes the previous checkpoint `old` once `path` holds the new one. If
/// it cannot be deleted, it is left (under a temporary name, so that later
/// saves try again and `.<name>.previous` is free) and a warning names it:
/// the save itself succeeded.
fn remove_previous(old: &Path, path: &Path) {
    let Err(error) = remove_tree(old) else {
        return;
    };
    let mut left = old.to_path_buf();
    if !old
        .file_name()
        .is_some_and(|n| n.to_string_lossy().contains(TEMP_TAG))
        && let Ok(temp) = temp_path(path)
        && std::fs::rename(old, &temp).is_ok()
    {
        left = temp;
    }
    eprintln!(
        "fabric: warning: saved the checkpoint {}, but the previous checkpoint cannot be deleted ({error}); it is left at {}",
        path.display(),
        left.display()
    );
}

/// Puts the complete directory `temp` under the name `path`, atomically:
/// `path` names either its previous content or `temp`'s, never a mix, and
/// at every moment `path` or `.<name>.previous` holds a complete checkpoint
/// (see the module's documentation). An existing `path` is swapped with
/// `temp` and then deleted.
pub(crate) fn replace_dir(temp: &Path, path: &Path) -> Result<()> {
    let context = || format!("renaming {} to {}", temp.display(), path.display());
    if std::fs::symlink_metadata(path).is_err() {
        std::fs::rename(temp, path).map_err(io_error(context()))?;
        return sync_dir(parent(path));
    }
    match exchange(temp, path) {
        Ok(()) => {
            sync_dir(parent(path))?;
            // `temp` now names the previous checkpoint.
            remove_previous(temp, path);
            Ok(())
        }
        Err(error) if exchange_unsupported(&error) => swap_by_renames(temp, path),
        Err(error) => Err(io_error(context())(error)),
    }
}

/// Without an atomic exchange, two renames, the previous checkpoint moving
/// aside to `.<name>.previous` first (see the module's documentation).
fn swap_by_renames(temp: &Path, path: &Path) -> Result<()> {
    let aside = aside_path(path)?;
    // `recover` emptied the place; something still there is in the way.
    if std::fs::symlink_metadata(&aside).is_ok() {
        remove_previous(&aside, path);
    }
    std::fs::rename(path, &aside).map_err(io_error(format!(
        "moving the previous checkpoint {} aside to {}",
        path.display(),
        aside.display()
    )))?;
    #[cfg(test)]
    if faults::CRASH_AFTER_ASIDE.get() {
        panic!("simulated crash after moving the previous checkpoint aside");
    }
    if let Err(error) = std::fs::rename(temp, path) {
        // Put the previous checkpoint back; if even that fails, `load`
        // reads it from `.<name>.previous` and the next save restores it.
        let _ = std::fs::rename(&aside, path);
        return Err(io_error(format!(
            "renaming {} to {}",
            temp.display(),
            path.display()
        ))(error));
    }
    sync_dir(parent(path))?;
    remove_previous(&aside, path);
    Ok(())
}

/// Whether `exchange` failed because the file system (or kernel) has no
/// atomic exchange.
fn exchange_unsupported(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::Unsupported
        || matches!(
            error.raw_os_error(),
            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
        )
}

/// Swaps the entries `a_path` and `b_path` in one step.
#[cfg(target_os = "linux")]
fn exchange(a_path: &Path, b_path: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    #[cfg(test)]
    if faults::NO_EXCHANGE.get() {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let a = CString::new(a_path.as_os_str().as_bytes())?;
    let b = CString::new(b_path.as_os_str().as_bytes())?;
    // SAFETY: both are valid NUL-terminated paths that outlive the call;
    // AT_FDCWD resolves them relative to the working directory, as `rename`
    // does.
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
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// Switches the tests of this crate use to take the paths that a file
/// system without `RENAME_EXCHANGE`, a crash or an undeletable file would.
/// They are per thread, as the test harness runs each test on its own.
#[cfg(test)]
pub(crate) mod faults {
    use std::cell::Cell;

    thread_local! {
        /// `renameat2(RENAME_EXCHANGE)` fails as on NFS or Lustre.
        pub(crate) static NO_EXCHANGE: Cell<bool> = const { Cell::new(false) };
        /// The two-rename swap panics (as a crash stops it) right after the
        /// previous checkpoint moved aside.
        pub(crate) static CRASH_AFTER_ASIDE: Cell<bool> = const { Cell::new(false) };
        /// Deleting a previous checkpoint or a stale temporary fails with
        /// EPERM, as for an immutable file or one of another owner.
        pub(crate) static UNDELETABLE: Cell<bool> = const { Cell::new(false) };
    }
}
