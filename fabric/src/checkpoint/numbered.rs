//! Numbered checkpoints in one directory, `dir/step-000000120`, for
//! [`Fabric::save_step`](crate::Fabric::save_step) and
//! [`Fabric::load_latest`](crate::Fabric::load_latest): each is a whole
//! checkpoint written atomically (see the [module](super)); the newest
//! complete one is the one to resume from.

use std::path::{Path, PathBuf};

use super::LoadReport;
use crate::error::Result;
use crate::fs;

const PREFIX: &str = "step-";

/// The checkpoint [`Fabric::load_latest`](crate::Fabric::load_latest)
/// loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Resumed {
    /// Its step number.
    pub step: u64,
    /// Its directory.
    pub path: PathBuf,
    /// What the load reported (values the state does not name, in
    /// `remainder`).
    pub report: LoadReport,
}

/// The directory of step `step`'s checkpoint in `dir`: `step-<step>`, the
/// number padded to 9 digits so that names sort by step.
pub(crate) fn step_path(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("{PREFIX}{step:09}"))
}

/// The step of a name `step-<digits>`, or of `.step-<digits>.previous` (a
/// checkpoint of that name being replaced, which loading reads).
fn parse(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX).or_else(|| {
        name.strip_prefix('.')?
            .strip_prefix(PREFIX)?
            .strip_suffix(".previous")
    })?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The numbered checkpoints of `dir`, newest first, as (step, path); none
/// when `dir` does not exist.
pub(crate) fn latest_candidates(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(fs::io_error(format!("listing {}", dir.display()))(e)),
    };
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(step) = name.to_str().and_then(parse) else {
            continue;
        };
        let path = if name.to_string_lossy().starts_with('.') {
            // Loading `step-N` reads `.step-N.previous` while `step-N` is missing.
            dir.join(format!(
                "{PREFIX}{}",
                &name.to_string_lossy()[1 + PREFIX.len()..].trim_end_matches(".previous")
            ))
        } else {
            entry.path()
        };
        if !found.iter().any(|(s, _)| *s == step) {
            found.push((step, path));
        }
    }
    found.sort_by_key(|(step, _)| std::cmp::Reverse(*step));
    Ok(found)
}

/// After the checkpoint of step `saved` was written to `dir`: deletes the
/// numbered checkpoints of `dir` older than the `keep` newest up to and
/// including `saved` (`keep` >= 1), so the one just saved is always kept,
/// whatever higher numbers `dir` holds (a damaged newer one that
/// [`load_latest`](crate::Fabric::load_latest) skipped, or an older run's);
/// those are left alone. Each is first renamed to a temporary name, so that
/// a half-deleted one is never taken for a checkpoint; what interrupted
/// saves and deletions of numbered checkpoints left there (`.step-*.tmp-*`)
/// is removed too. Nothing here fails the save, which succeeded: what
/// cannot be listed or deleted is named in a warning.
pub(crate) fn prune(dir: &Path, keep: usize, saved: u64) {
    remove_stale_temporaries(dir);
    let candidates = match latest_candidates(dir) {
        Ok(candidates) => candidates,
        Err(error) => {
            eprintln!("fabric: warning: old checkpoints are not deleted: {error}");
            return;
        }
    };
    let older = candidates.into_iter().filter(|(step, _)| *step <= saved);
    for (_, path) in older.skip(keep.max(1)) {
        if std::fs::symlink_metadata(&path).is_err() {
            continue;
        }
        let removed = fs::temp_path(&path)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|doomed| {
                std::fs::rename(&path, &doomed).and_then(|()| std::fs::remove_dir_all(&doomed))
            });
        if let Err(error) = removed {
            eprintln!(
                "fabric: warning: cannot delete the old checkpoint {} ({error}); it is left",
                path.display()
            );
        }
    }
}

/// Removes the temporary entries of numbered checkpoints in `dir`
/// (`.step-<n>.tmp-<pid>-<k>`): a save or a deletion that was interrupted
/// left them, and no later save reuses their names. Only the process that
/// writes `dir`'s checkpoints calls this, after its save.
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{PREFIX}");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(&prefix) && name.contains(fs::TEMP_TAG)) {
            continue;
        }
        let stale = entry.path();
        let removed = match std::fs::symlink_metadata(&stale) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&stale),
            Ok(_) => std::fs::remove_file(&stale),
            Err(e) => Err(e),
        };
        if let Err(error) = removed {
            eprintln!(
                "fabric: warning: cannot remove {}, left by an interrupted save ({error}); it is left as it is",
                stale.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_to_steps() {
        assert_eq!(parse("step-000000120"), Some(120));
        assert_eq!(parse("step-7"), Some(7));
        assert_eq!(parse(".step-12.previous"), Some(12));
        assert_eq!(parse("step-"), None);
        assert_eq!(parse("step-1a"), None);
        assert_eq!(parse(".step-3.tmp-1-2"), None);
        assert_eq!(parse("last"), None);
        assert_eq!(
            step_path(Path::new("d"), 120),
            Path::new("d/step-000000120")
        );
    }

    #[test]
    fn candidates_are_newest_first_and_a_missing_dir_has_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            latest_candidates(&dir.path().join("nothing"))
                .unwrap()
                .is_empty()
        );
        for name in [
            "step-000000002",
            "step-10",
            "other",
            ".step-000000011.previous",
            ".step-5.tmp-1-0",
        ] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        let found = latest_candidates(dir.path()).unwrap();
        let steps: Vec<u64> = found.iter().map(|(s, _)| *s).collect();
        assert_eq!(steps, [11, 10, 2]);
        assert_eq!(found[0].1, dir.path().join("step-000000011"));
        prune(dir.path(), 2, 11);
        assert!(!dir.path().join("step-000000002").exists());
        assert!(dir.path().join("step-10").exists());
        assert!(dir.path().join(".step-000000011.previous").exists());
        // What an interrupted save left is gone; other names are not touched.
        assert!(!dir.path().join(".step-5.tmp-1-0").exists());
        assert!(dir.path().join("other").exists());
    }

    /// The checkpoint just saved is kept even where `dir` holds higher
    /// numbers (a damaged newer one `load_latest` skipped): pruning counts
    /// only the steps up to the saved one, and leaves the higher ones.
    #[test]
    fn pruning_keeps_the_checkpoint_just_saved_below_higher_numbers() {
        let dir = tempfile::tempdir().unwrap();
        for step in [200, 210, 300] {
            std::fs::create_dir(step_path(dir.path(), step)).unwrap();
        }
        prune(dir.path(), 1, 210);
        assert!(step_path(dir.path(), 210).exists(), "the one just saved");
        assert!(
            step_path(dir.path(), 300).exists(),
            "a higher number is left"
        );
        assert!(!step_path(dir.path(), 200).exists());
        // A directory that cannot be listed is a warning, not an error.
        prune(&dir.path().join("missing"), 1, 1);
    }
}
