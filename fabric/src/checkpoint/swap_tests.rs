//! Replacing a checkpoint on file systems without an atomic exchange, after
//! a crash in the middle of a swap, and when the previous checkpoint cannot
//! be deleted: the paths that `atomic::faults` forces.

use std::path::Path;

use super::atomic::faults::{CRASH_AFTER_ASIDE, NO_EXCHANGE, UNDELETABLE};
use super::{State, load, save};
use crate::Result;

fn save_step(path: &Path, step: u64) -> Result<()> {
    let mut step = step;
    save(path, &State::new().value("step", &mut step))
}

fn load_step(path: &Path) -> Result<u64> {
    let mut step = 0u64;
    load(path, &mut State::new().value("step", &mut step), true)?;
    Ok(step)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Clears the switches when a test ends, failed or not.
struct Switches;
impl Drop for Switches {
    fn drop(&mut self) {
        for switch in [&NO_EXCHANGE, &CRASH_AFTER_ASIDE, &UNDELETABLE] {
            switch.set(false);
        }
    }
}

/// A save that stops, as a crash would, right after the previous checkpoint
/// moved aside.
fn crashing_save(path: &Path, step: u64) {
    CRASH_AFTER_ASIDE.set(true);
    let crashed = std::panic::catch_unwind(|| save_step(path, step));
    CRASH_AFTER_ASIDE.set(false);
    assert!(crashed.is_err(), "the simulated crash happened");
}

#[test]
fn without_an_atomic_exchange_a_complete_checkpoint_is_always_loadable() {
    let _switches = Switches;
    NO_EXCHANGE.set(true);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt");
    save_step(&path, 1).unwrap();
    save_step(&path, 2).unwrap();
    assert_eq!(load_step(&path).unwrap(), 2);
    assert_eq!(entries(dir.path()), ["ckpt"]);

    // Between the two renames the path is missing: load finds the previous
    // checkpoint aside.
    crashing_save(&path, 3);
    assert!(!path.exists());
    assert_eq!(load_step(&path).unwrap(), 2);

    // The next save puts it back before cleaning up, and crashing there
    // again still leaves it loadable: no save deleted the only complete copy.
    crashing_save(&path, 4);
    assert_eq!(load_step(&path).unwrap(), 2);

    save_step(&path, 5).unwrap();
    assert_eq!(load_step(&path).unwrap(), 5);
    assert_eq!(
        entries(dir.path()),
        ["ckpt"],
        "the crashed saves' temporaries and the previous checkpoint are gone"
    );
}

fn undeletable_previous_checkpoint(exchange: bool) {
    let _switches = Switches;
    NO_EXCHANGE.set(!exchange);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt");
    save_step(&path, 1).unwrap();

    UNDELETABLE.set(true);
    save_step(&path, 2).expect("the new checkpoint is in place: the save succeeded");
    assert_eq!(load_step(&path).unwrap(), 2);
    let left = entries(dir.path());
    assert_eq!(
        left.len(),
        2,
        "the previous checkpoint is left beside: {left:?}"
    );
    assert!(left[0].starts_with(".ckpt.tmp-"), "{left:?}");
    // Later saves work although the leftover still cannot be deleted.
    save_step(&path, 3).unwrap();
    save_step(&path, 4).unwrap();
    assert_eq!(load_step(&path).unwrap(), 4);

    // Once it can be deleted, the next save does.
    UNDELETABLE.set(false);
    save_step(&path, 5).unwrap();
    assert_eq!(load_step(&path).unwrap(), 5);
    assert_eq!(entries(dir.path()), ["ckpt"]);
}

#[test]
fn an_undeletable_previous_checkpoint_is_left_and_later_saves_work() {
    undeletable_previous_checkpoint(true);
}

#[test]
fn an_undeletable_previous_checkpoint_is_left_and_later_saves_work_without_exchange() {
    undeletable_previous_checkpoint(false);
}
