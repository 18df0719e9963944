//! Reading a checkpoint: everything is read and checked against the state
//! first, and only then copied into it.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tch::{Device, Kind, Tensor};

use super::format::{self, EntryMeta, FileMeta, GroupMeta, Meta};
use super::tensors::{self, FileTensor};
use super::{Entry, State, atomic};
use crate::error::{Error, Result};
use crate::optim::{Algorithm, DEFAULT_GROUP, Optimizer, ParamState, SchedulerState};
use crate::precision::{GradScaler, GradScalerState};

/// What [`Fabric::load`](crate::Fabric::load) did not load. After a strict
/// load it is empty but for `unused` and `remainder`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LoadReport {
    /// What the state has and the checkpoint lacks, as `entry: key`
    /// (`model: head.weight`), or `entry` for a whole entry.
    pub missing: Vec<String>,
    /// What the checkpoint has and the state lacks, as `entry: key`.
    pub unexpected: Vec<String>,
    /// What both have but does not fit (shape, dtype, algorithm, a value of
    /// another type), with the reason.
    pub mismatched: Vec<String>,
    /// Entries of the checkpoint that are not values and that the state does
    /// not name.
    pub unused: Vec<String>,
    /// Values of the checkpoint that the state does not name, as Lightning's
    /// returned remainder.
    pub remainder: BTreeMap<String, serde_json::Value>,
}

impl LoadReport {
    /// Whether every part of the state was loaded.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }

    fn problems(&self) -> Vec<String> {
        let missing = self
            .missing
            .iter()
            .map(|m| format!("missing in the checkpoint: {m}"));
        let unexpected = self
            .unexpected
            .iter()
            .map(|u| format!("not in the state: {u}"));
        let mismatched = self.mismatched.iter().cloned();
        missing.chain(unexpected).chain(mismatched).collect()
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let problems = self.problems();
        if problems.is_empty() {
            return write!(f, "everything was loaded");
        }
        write!(f, "not loaded: {}", problems.join("; "))
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads and checks `meta.json`.
fn read_meta(path: &Path) -> Result<Meta> {
    if !path.exists() {
        return Err(corrupt(path, "does not exist"));
    }
    if !path.is_dir() {
        return Err(corrupt(
            path,
            "is a file, not a fabric checkpoint (a directory with meta.json and .safetensors files)",
        ));
    }
    let meta_path = path.join(format::META_FILE);
    let bytes = std::fs::read(&meta_path).map_err(|e| {
        corrupt(
            path,
            format!("cannot read meta.json ({e}): not a fabric checkpoint"),
        )
    })?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| corrupt(path, format!("meta.json is not valid JSON: {e}")))?;
    match value.get("format").and_then(|f| f.as_str()) {
        Some(format::FORMAT) => {}
        other => {
            return Err(corrupt(
                path,
                format!(
                    "meta.json has format {other:?}, not \"{}\": not a fabric checkpoint",
                    format::FORMAT
                ),
            ));
        }
    }
    let version = value.get("version").and_then(|v| v.as_u64());
    if version != Some(u64::from(format::VERSION)) {
        return Err(corrupt(
            path,
            format!(
                "meta.json has version {version:?}; this fabric reads version {}",
                format::VERSION
            ),
        ));
    }
    serde_json::from_value(value).map_err(|e| corrupt(path, format!("meta.json is not valid: {e}")))
}

/// Reads a tensor file of the checkpoint and checks its size and checksum.
fn read_file(path: &Path, file: &FileMeta) -> Result<Vec<u8>> {
    let name = Path::new(&file.file);
    if name.components().count() != 1 || name.file_name().is_none() {
        return Err(corrupt(
            path,
            format!(
                "meta.json names the file `{}` outside the checkpoint",
                file.file
            ),
        ));
    }
    let bytes = std::fs::read(path.join(name))
        .map_err(|e| corrupt(path, format!("cannot read {}: {e}", file.file)))?;
    if bytes.len() as u64 != file.bytes {
        return Err(corrupt(
            path,
            format!(
                "{} has {} bytes, meta.json says {}: the file is truncated or was replaced",
                file.file,
                bytes.len(),
                file.bytes
            ),
        ));
    }
    if crc32c::crc32c(&bytes) != file.crc32c {
        return Err(corrupt(
            path,
            format!(
                "{} does not match its checksum: the file is damaged",
                file.file
            ),
        ));
    }
    Ok(bytes)
}

/// What to do to the state, once everything is checked.
enum Action {
    Model(Vec<(Tensor, Tensor)>),
    Optimizer(Algorithm, Vec<Algorithm>, BTreeMap<String, ParamState>),
    Scheduler(SchedulerState),
    Scaler(GradScalerState),
    Value(Box<dyn Any>),
    Loader(crate::data::LoaderPosition),
    Rng(super::RngState),
}

/// This rank's part of a per-rank entry, decoded; `None`, with the problem
/// in `report`, for a checkpoint of another world size.
fn rank_part<T: serde::de::DeserializeOwned>(
    path: &Path,
    name: &str,
    kind: &str,
    ranks: &[serde_json::Value],
    (rank, world): (usize, usize),
    report: &mut LoadReport,
) -> Result<Option<T>> {
    if ranks.len() != world {
        report.mismatched.push(format!(
            "{kind} `{name}` was saved by a world of {} processes, this one has {world}",
            ranks.len()
        ));
        return Ok(None);
    }
    serde_json::from_value(ranks[rank].clone())
        .map(Some)
        .map_err(|e| {
            corrupt(
                path,
                format!("{kind} `{name}` of rank {rank} is not valid: {e}"),
            )
        })
}

/// Loads `path` into `state` (see the module's documentation).
///
/// While a save on a file system without an atomic exchange swaps the
/// checkpoint by two renames, `path` is missing for a moment and the
/// previous checkpoint is complete under `.<name>.previous`: that is read
/// instead. A read that fails because the swap moved on meanwhile is tried
/// again where the checkpoint now is.
pub(crate) fn load(path: &Path, state: &mut State<'_>, strict: bool) -> Result<LoadReport> {
    state.check_names()?;
    let aside = atomic::aside_path(path)?;
    let source = || {
        if std::fs::symlink_metadata(path).is_err() && aside.is_dir() {
            aside.as_path()
        } else {
            path
        }
    };
    let mut from = source();
    let mut tries = 1;
    let (report, actions) = loop {
        let planned = plan(from, state, strict);
        let now = source();
        if planned.is_ok() || now == from || tries == 3 {
            break planned?;
        }
        from = now;
        tries += 1;
    };
    apply(state, actions)?;
    Ok(report)
}

/// Reads and checks the checkpoint `path` against `state`: what `load`
/// reports, and what it then copies into the state.
fn plan(
    path: &Path,
    state: &State<'_>,
    strict: bool,
) -> Result<(LoadReport, Vec<(usize, Action)>)> {
    let meta = read_meta(path)?;
    let mut report = LoadReport::default();
    let requested: BTreeSet<&str> = state.entries.iter().map(|(n, _)| n.as_str()).collect();
    for (name, entry) in &meta.entries {
        if requested.contains(name.as_str()) {
            continue;
        }
        match entry {
            EntryMeta::Value { value } => {
                report.remainder.insert(name.clone(), value.clone());
            }
            other => report
                .unused
                .push(format!("{name} ({})", other.type_name())),
        }
    }

    let mut actions: Vec<(usize, Action)> = Vec::new();
    for (index, (name, entry)) in state.entries.iter().enumerate() {
        let Some(saved) = meta.entries.get(name) else {
            report.missing.push(name.clone());
            continue;
        };
        let action = match (entry, saved) {
            (Entry::Model(vs), EntryMeta::Model { file }) => {
                let bytes = read_file(path, file)?;
                let saved = parse(path, file, &bytes)?;
                let variables = vs.variables();
                Some(Action::Model(plan_model(
                    name,
                    &variables,
                    &saved,
                    &mut report,
                )?))
            }
            (
                Entry::Optimizer(slot),
                EntryMeta::Optimizer {
                    file,
                    algorithm,
                    parameters,
                    groups,
                },
            ) => {
                let optimizer = slot.stateful()?;
                let bytes = read_file(path, file)?;
                let saved = parse(path, file, &bytes)?;
                plan_optimizer(name, optimizer, *algorithm, parameters, &saved, &mut report)?
                    .and_then(|states| {
                        plan_groups(name, optimizer, *algorithm, parameters, groups, &mut report)
                            .map(|groups| Action::Optimizer(*algorithm, groups, states))
                    })
            }
            (Entry::Scheduler(scheduler), EntryMeta::Scheduler { state: saved }) => {
                match scheduler.check(saved) {
                    None => Some(Action::Scheduler(saved.clone())),
                    Some(problem) => {
                        report
                            .mismatched
                            .push(format!("scheduler `{name}` {problem}"));
                        None
                    }
                }
            }
            (Entry::Scaler(_), saved @ EntryMeta::GradScaler { .. }) => {
                let saved = format::scaler_state(saved).expect("a grad scaler entry");
                match GradScaler::new(saved.config, Device::Cpu) {
                    Ok(_) => Some(Action::Scaler(saved)),
                    Err(e) => return Err(corrupt(path, format!("grad scaler `{name}`: {e}"))),
                }
            }
            (Entry::Value(slot), EntryMeta::Value { value }) => match slot.decode(value.clone()) {
                Ok(decoded) => Some(Action::Value(decoded)),
                Err(e) => {
                    report.mismatched.push(format!(
                        "value `{name}`: the saved {value} does not fit this value's type: {e}"
                    ));
                    None
                }
            },
            (Entry::Loader(slot), EntryMeta::Loader { ranks }) => {
                let saved: Option<crate::data::LoaderPosition> =
                    rank_part(path, name, "loader", ranks, state.rank(), &mut report)?;
                match saved.map(|saved| (slot.check_position(&saved), saved)) {
                    Some((None, saved)) => Some(Action::Loader(saved)),
                    Some((Some(problem), _)) => {
                        report
                            .mismatched
                            .push(format!("loader `{name}`: {problem}"));
                        None
                    }
                    None => None,
                }
            }
            (Entry::Rng, EntryMeta::Rng { ranks }) => {
                let saved: Option<super::RngState> = rank_part(
                    path,
                    name,
                    "random generators",
                    ranks,
                    state.rank(),
                    &mut report,
                )?;
                match saved.map(|saved| (saved.check(), saved)) {
                    Some((None, saved)) => Some(Action::Rng(saved)),
                    Some((Some(problem), _)) => {
                        report
                            .mismatched
                            .push(format!("random generators `{name}`: {problem}"));
                        None
                    }
                    None => None,
                }
            }
            (entry, saved) => {
                let wanted = entry.kind();
                report.mismatched.push(format!(
                    "`{name}` is a {wanted} in the state and a {} in the checkpoint",
                    saved.type_name()
                ));
                None
            }
        };
        if let Some(action) = action {
            actions.push((index, action));
        }
    }

    if strict && !report.is_complete() {
        return Err(Error::CheckpointMismatch {
            path: path.to_path_buf(),
            problems: report.problems(),
        });
    }
    Ok((report, actions))
}

fn parse<'b>(
    path: &Path,
    file: &FileMeta,
    bytes: &'b [u8],
) -> Result<BTreeMap<String, FileTensor<'b>>> {
    tensors::parse(bytes).map_err(|e| {
        corrupt(
            path,
            format!("{} is not a valid safetensors file: {e}", file.file),
        )
    })
}

fn describe(kind: Kind, shape: &[i64]) -> String {
    format!("{kind:?} {shape:?}")
}

/// The copies that load a model, after checking names, shapes and dtypes.
fn plan_model(
    entry: &str,
    variables: &std::collections::HashMap<String, Tensor>,
    saved: &BTreeMap<String, FileTensor<'_>>,
    report: &mut LoadReport,
) -> Result<Vec<(Tensor, Tensor)>> {
    let mut copies = Vec::new();
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort();
    for name in names {
        let var = &variables[name];
        let Some(file) = saved.get(name) else {
            report.missing.push(format!("{entry}: {name}"));
            continue;
        };
        let (kind, shape) = (var.kind(), var.size());
        if file.kind != kind || file.shape != shape {
            report.mismatched.push(format!(
                "{entry}: `{name}` is {} in the checkpoint and {} in the model",
                describe(file.kind, &file.shape),
                describe(kind, &shape)
            ));
            continue;
        }
        copies.push((var.shallow_clone(), file.to_tensor(Device::Cpu)?));
    }
    for name in saved.keys().filter(|n| !variables.contains_key(*n)) {
        report.unexpected.push(format!("{entry}: {name}"));
    }
    Ok(copies)
}

/// The settings of each parameter group of `optimizer` from the saved
/// groups, after checking that they are the same groups (names, order and
/// parameters) with valid settings of the same algorithm; `None`, with the
/// problem in `report`, otherwise. A checkpoint from before groups has one
/// group of every parameter with `algorithm`.
fn plan_groups(
    entry: &str,
    optimizer: &Optimizer,
    algorithm: Algorithm,
    parameters: &[String],
    saved: &[GroupMeta],
    report: &mut LoadReport,
) -> Option<Vec<Algorithm>> {
    let single;
    let saved = if saved.is_empty() {
        single = [GroupMeta {
            name: DEFAULT_GROUP.into(),
            algorithm,
            parameters: parameters.to_vec(),
        }];
        &single[..]
    } else {
        saved
    };
    let describe = |groups: Vec<(&str, &[String])>| {
        groups
            .iter()
            .map(|(name, params)| format!("{name} [{}]", params.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let ours: Vec<(&str, &[String])> = optimizer
        .groups()
        .iter()
        .map(|g| (g.name(), g.parameters()))
        .collect();
    let theirs: Vec<(&str, &[String])> = saved
        .iter()
        .map(|g| (g.name.as_str(), g.parameters.as_slice()))
        .collect();
    let names_match =
        ours.len() == theirs.len() && ours.iter().zip(&theirs).all(|(a, b)| a.0 == b.0);
    // Parameters missing on either side are reported by `plan_optimizer`;
    // the groups of the others must agree.
    let shared = |params: &[String], other: &[String]| -> Vec<String> {
        let mut shared: Vec<String> = params
            .iter()
            .filter(|p| other.contains(p))
            .cloned()
            .collect();
        shared.sort();
        shared
    };
    let all_ours = optimizer.parameter_names();
    let members_match = names_match
        && ours
            .iter()
            .zip(&theirs)
            .all(|(a, b)| shared(a.1, parameters) == shared(b.1, all_ours));
    if !members_match {
        report.mismatched.push(format!(
            "optimizer `{entry}`: its parameter groups are {} in the checkpoint and {} in the state",
            describe(theirs),
            describe(ours)
        ));
        return None;
    }
    let mut settings = Vec::new();
    for group in saved {
        if group.algorithm.name() != optimizer.algorithm_name() {
            report.mismatched.push(format!(
                "optimizer `{entry}`: group `{}` is {} in the checkpoint and the optimizer {}",
                group.name,
                group.algorithm.name(),
                optimizer.algorithm_name()
            ));
            return None;
        }
        // A scheduler may have left a negative learning rate, as PyTorch's
        // (the last step of a linear one-cycle schedule): the rest is
        // checked.
        let checked = group.algorithm.with_lr(group.algorithm.lr().abs());
        if let Err(error) = checked.validate() {
            report.mismatched.push(format!(
                "optimizer `{entry}`: group `{}`: {error}",
                group.name
            ));
            return None;
        }
        settings.push(group.algorithm);
    }
    Some(settings)
}

/// The states that load an optimizer, after checking its algorithm, its
/// parameter names, and every state tensor's name, shape and dtype.
fn plan_optimizer(
    entry: &str,
    optimizer: &Optimizer,
    algorithm: Algorithm,
    parameters: &[String],
    saved: &BTreeMap<String, FileTensor<'_>>,
    report: &mut LoadReport,
) -> Result<Option<BTreeMap<String, ParamState>>> {
    if algorithm.name() != optimizer.algorithm_name() {
        report.mismatched.push(format!(
            "optimizer `{entry}` is {} in the checkpoint and {} in the state",
            algorithm.name(),
            optimizer.algorithm_name()
        ));
        return Ok(None);
    }
    if let Err(error) = algorithm.validate() {
        // Settings no optimizer accepts (a damaged or edited `meta.json`).
        report
            .mismatched
            .push(format!("optimizer `{entry}`: {error}"));
        return Ok(None);
    }
    let names = optimizer.parameter_names();
    for name in names.iter().filter(|n| !parameters.contains(n)) {
        report.missing.push(format!("{entry}: {name}"));
    }
    for name in parameters.iter().filter(|n| !names.contains(n)) {
        report.unexpected.push(format!("{entry}: {name}"));
    }
    let expected = algorithm.state_names();
    let mut used = BTreeSet::new();
    let mut states = BTreeMap::new();
    for (param, tensor) in names.iter().zip(optimizer.parameters()) {
        if !parameters.contains(param) {
            continue;
        }
        let present: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|s| saved.contains_key(&format::state_key(param, s)))
            .collect();
        if present.is_empty() {
            states.insert(param.clone(), ParamState::new());
            continue;
        }
        if present.len() != expected.len() {
            report.mismatched.push(format!(
                "{entry}: `{param}` has the state {present:?} in the checkpoint, {} needs {expected:?}",
                algorithm.name()
            ));
            continue;
        }
        let mut state = ParamState::new();
        let mut fits = true;
        for name in expected {
            let key = format::state_key(param, name);
            let file = &saved[&key];
            used.insert(key.clone());
            let (kind, shape) = if *name == "step" {
                (Kind::Float, Vec::new())
            } else {
                (tensor.kind(), tensor.size())
            };
            if file.kind != kind || file.shape != shape {
                report.mismatched.push(format!(
                    "{entry}: `{key}` is {} in the checkpoint, the parameter needs {}",
                    describe(file.kind, &file.shape),
                    describe(kind, &shape)
                ));
                fits = false;
                continue;
            }
            state.insert((*name).to_owned(), file.to_tensor(tensor.device())?);
        }
        if fits {
            states.insert(param.clone(), state);
        }
    }
    for key in saved.keys().filter(|k| !used.contains(*k)) {
        let owner = key.rsplit_once('/').map(|(p, _)| p);
        if owner.is_none_or(|p| names.iter().any(|n| n == p)) {
            report.unexpected.push(format!("{entry}: {key}"));
        }
    }
    Ok(Some(states))
}

fn apply(state: &mut State<'_>, actions: Vec<(usize, Action)>) -> Result<()> {
    for (index, action) in actions {
        match (&mut state.entries[index].1, action) {
            (Entry::Model(_), Action::Model(copies)) => tch::no_grad(|| {
                for (mut var, source) in copies {
                    var.f_copy_(&source)?;
                }
                Ok::<_, Error>(())
            })?,
            (Entry::Optimizer(slot), Action::Optimizer(algorithm, groups, states)) => {
                slot.stateful_mut()?.restore(algorithm, groups, states);
            }
            (Entry::Scheduler(scheduler), Action::Scheduler(saved)) => scheduler.restore(saved),
            (Entry::Scaler(scaler), Action::Scaler(saved)) => scaler
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .load_state(saved)?,
            (Entry::Value(slot), Action::Value(decoded)) => slot.assign(decoded),
            (Entry::Loader(slot), Action::Loader(saved)) => slot.restore_position(&saved)?,
            (Entry::Rng, Action::Rng(saved)) => saved.restore()?,
            _ => {}
        }
    }
    Ok(())
}
