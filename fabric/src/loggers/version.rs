//! Lightning's experiment layout, shared by the built-in loggers:
//! `<root_dir>/<name>/version_<n>`, with the next free `n` by default.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where a logger writes: `<root_dir>/<name>/version_<n>`. The version is
/// chosen on first use (as Lightning's lazily resolved `version`), so that
/// only the process that logs (global rank 0) looks at the disk.
#[derive(Debug)]
pub(crate) struct ExperimentDir {
    root_dir: PathBuf,
    name: String,
    version: OnceLock<u32>,
}

impl ExperimentDir {
    pub(crate) fn new(root_dir: PathBuf, name: String) -> Self {
        ExperimentDir {
            root_dir,
            name,
            version: OnceLock::new(),
        }
    }

    pub(crate) fn root_dir(&self) -> &Path {
        &self.root_dir
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Fixes the version instead of taking the next free one.
    pub(crate) fn set_version(&mut self, version: u32) {
        self.version = OnceLock::from(version);
    }

    /// The version: the one fixed by the user, else the next free one,
    /// looked up on the first call.
    pub(crate) fn version(&self) -> u32 {
        *self
            .version
            .get_or_init(|| next_version(&self.root_dir.join(&self.name)))
    }

    pub(crate) fn log_dir(&self) -> PathBuf {
        self.root_dir
            .join(&self.name)
            .join(format!("version_{}", self.version()))
    }
}

/// One more than the largest `n` of the `version_<n>` directories in `dir`,
/// 0 when there is none (or `dir` cannot be listed), as Lightning's
/// `_get_next_version`.
pub(crate) fn next_version(dir: &Path) -> u32 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()?
                .strip_prefix("version_")?
                .parse::<u32>()
                .ok()
        })
        .max()
        .map_or(0, |v| v + 1)
}
