//! Lightning's experiment layout, shared by the built-in loggers:
//! `<root_dir>/<name>/version_<n>`, with the next free `n` by default, and
//! the builder methods and accessors the loggers share
//! ([`experiment_methods`]).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where a logger writes: `<root_dir>/<name>/version_<n>`. The version is
/// chosen on first use (as Lightning's lazily resolved `version`), so that
/// only the process that logs (global rank 0) looks at the disk, and claimed
/// there by creating its directory exclusively: two loggers, in one process
/// or in runs started at once, never take the same version.
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
    /// claimed on the first call.
    pub(crate) fn version(&self) -> u32 {
        *self
            .version
            .get_or_init(|| claim_next_version(&self.root_dir.join(&self.name)))
    }

    pub(crate) fn log_dir(&self) -> PathBuf {
        self.root_dir
            .join(&self.name)
            .join(format!("version_{}", self.version()))
    }
}

/// Claims the next free version of `dir` by creating its `version_<n>`
/// directory exclusively, trying the next number while another logger (in
/// this process or another) took it first. Where no directory can be made
/// (a read-only root), the next free number is returned unclaimed: the
/// first write reports why it cannot create it.
fn claim_next_version(dir: &Path) -> u32 {
    let mut version = next_version(dir);
    if std::fs::create_dir_all(dir).is_err() {
        return version;
    }
    loop {
        match std::fs::create_dir(dir.join(format!("version_{version}"))) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match version.checked_add(1)
            {
                Some(next) => version = next,
                None => return version,
            },
            _ => return version,
        }
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

/// The builder methods and accessors of a built-in logger, a struct with
/// the fields `dir: ExperimentDir` and `prefix: String`: `version`,
/// `prefix`, `root_dir`, `experiment_name`, `version_number` and `log_dir`.
/// `$version` ends the documentation of `version`, `$files` names what
/// `log_dir` holds.
macro_rules! experiment_methods {
    (version: $version:literal, files: $files:literal) => {
        #[doc = concat!("Writes to `version_<version>` instead of the next free version", $version)]
        pub fn version(mut self, version: u32) -> Self {
            self.dir.set_version(version);
            self
        }

        /// Prepends `prefix-` to every metric name.
        pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
            self.prefix = prefix.into();
            self
        }

        /// The directory holding `<name>/version_<n>`.
        pub fn root_dir(&self) -> &std::path::Path {
            self.dir.root_dir()
        }

        /// The experiment name (Lightning's `logger.name`).
        pub fn experiment_name(&self) -> &str {
            self.dir.name()
        }

        /// The version number: on the first call, the next free version is
        /// claimed by creating its directory.
        pub fn version_number(&self) -> u32 {
            self.dir.version()
        }

        #[doc = concat!("`<root_dir>/<name>/version_<n>`, where ", $files, " are; on the first call, the next free version is claimed by creating its directory.")]
        pub fn log_dir(&self) -> std::path::PathBuf {
            self.dir.log_dir()
        }
    };
}
pub(crate) use experiment_methods;
