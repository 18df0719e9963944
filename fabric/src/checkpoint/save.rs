//! Writing a checkpoint directory atomically.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use super::format::{self, EntryMeta, FileMeta, GroupMeta, Meta};
use super::tensors::{self, HostTensor};
use super::{Entry, State, atomic};
use crate::error::{Error, Result};
use crate::fs;

/// Writes `state` to the directory `path` (see the module's documentation).
/// Called on global rank 0 only.
pub(crate) fn save(path: &Path, state: &State<'_>) -> Result<()> {
    state.check_names()?;
    atomic::recover(path)?;
    if path.exists() {
        refuse_foreign(path)?;
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(fs::io_error(format!("creating {}", parent.display())))?;
    }
    atomic::remove_stale_temporaries(path)?;
    let temp = fs::temp_path(path)?;
    std::fs::create_dir(&temp).map_err(fs::io_error(format!("creating {}", temp.display())))?;
    let written = write_entries(&temp, state).and_then(|()| fs::sync_dir(&temp));
    if let Err(error) = written.and_then(|()| atomic::replace_dir(&temp, path)) {
        let _ = std::fs::remove_dir_all(&temp);
        return Err(error);
    }
    Ok(())
}

/// An existing path is replaced only if it is a fabric checkpoint.
fn refuse_foreign(path: &Path) -> Result<()> {
    let meta = path.join(format::META_FILE);
    let is_checkpoint = path.is_dir()
        && std::fs::read(&meta)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .is_some_and(|v| v.get("format").and_then(|f| f.as_str()) == Some(format::FORMAT));
    if is_checkpoint {
        Ok(())
    } else {
        Err(Error::Checkpoint {
            path: path.to_path_buf(),
            reason: "exists and is not a fabric checkpoint; it is left as it is (choose another path or remove it)".into(),
        })
    }
}

fn write_entries(dir: &Path, state: &State<'_>) -> Result<()> {
    let mut entries = BTreeMap::new();
    for (name, entry) in &state.entries {
        let meta = match entry {
            Entry::Model(vs) => {
                let mut host = BTreeMap::new();
                for (var, tensor) in vs.variables() {
                    host.insert(var.clone(), tensors::to_host(&var, &tensor)?);
                }
                EntryMeta::Model {
                    file: write_tensors(dir, name, &host)?,
                }
            }
            Entry::Optimizer(slot) => {
                let optimizer = slot.stateful()?;
                let mut host = BTreeMap::new();
                for (param, key, tensor) in optimizer.state_tensors() {
                    let key = format::state_key(param, key);
                    host.insert(key.clone(), tensors::to_host(&key, tensor)?);
                }
                EntryMeta::Optimizer {
                    file: write_tensors(dir, name, &host)?,
                    algorithm: *optimizer.algorithm(),
                    parameters: optimizer.parameter_names().to_vec(),
                    groups: optimizer
                        .groups()
                        .iter()
                        .map(|g| GroupMeta {
                            name: g.name().to_owned(),
                            algorithm: *g.algorithm(),
                            parameters: g.parameters().to_vec(),
                        })
                        .collect(),
                }
            }
            Entry::Scheduler(scheduler) => EntryMeta::Scheduler {
                state: scheduler.state().clone(),
            },
            Entry::Scaler(scaler) => {
                EntryMeta::scaler(scaler.lock().unwrap_or_else(|p| p.into_inner()).state())
            }
            Entry::Loader(_) => EntryMeta::Loader {
                ranks: state.rank_values(name, entry)?,
            },
            Entry::Rng => EntryMeta::Rng {
                ranks: state.rank_values(name, entry)?,
            },
            Entry::Value(value) => EntryMeta::Value {
                value: value.encode().map_err(|e| {
                    Error::InvalidArgument(format!("checkpoint value `{name}`: {e}"))
                })?,
            },
        };
        entries.insert(name.clone(), meta);
    }
    let meta = Meta {
        format: format::FORMAT.into(),
        version: format::VERSION,
        entries,
    };
    let json = serde_json::to_vec_pretty(&meta)
        .map_err(|e| Error::InvalidArgument(format!("checkpoint metadata: {e}")))?;
    fs::write_new_file(&dir.join(format::META_FILE), |out| out.write_all(&json))
}

fn write_tensors(dir: &Path, name: &str, host: &BTreeMap<String, HostTensor>) -> Result<FileMeta> {
    let bytes = tensors::serialize(host)?;
    let file = format!("{name}.safetensors");
    fs::write_new_file(&dir.join(&file), |out| out.write_all(&bytes))?;
    Ok(FileMeta {
        file,
        bytes: bytes.len() as u64,
        crc32c: crc32c::crc32c(&bytes),
    })
}
