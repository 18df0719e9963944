//! The example binaries run, for a few epochs (`EPOCHS`), as a user runs them
//! (with `LD_LIBRARY_PATH` unset).
//! `cargo test` builds the examples next to the test binaries.

mod common;

use std::process::Command;

/// Runs an example; returns whether it succeeded and its output.
fn output(name: &str, epochs: &str) -> (bool, String) {
    let (output, text) = common::run(
        Command::new(common::example(name))
            .env("EPOCHS", epochs)
            .env_remove("LD_LIBRARY_PATH"),
    );
    (output.status.success(), text)
}

fn run(name: &str, epochs: &str) -> String {
    let (success, text) = output(name, epochs);
    assert!(success, "{name} failed:\n{text}");
    text
}

#[test]
fn digits_trains_and_reports_accuracy() {
    let text = run("digits", "5");
    let line = text
        .lines()
        .find(|l| l.starts_with("held-out accuracy: "))
        .unwrap_or_else(|| panic!("{text}"));
    let accuracy: f64 = line
        .trim_start_matches("held-out accuracy: ")
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!(accuracy > 85.0, "after 5 epochs: {text}");
}

#[test]
fn ddp_runs_two_ranks_that_agree() {
    let text = run("ddp", "3");
    let accuracies: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split("held-out accuracy ").nth(1))
        .collect();
    assert_eq!(accuracies.len(), 2, "{text}");
    assert_eq!(
        accuracies[0], accuracies[1],
        "both ranks hold the same model:\n{text}"
    );
}

#[test]
fn callbacks_fire_and_report_the_best_epoch() {
    let text = run("callbacks", "3");
    assert!(text.contains("new best validation loss"), "{text}");
    assert!(
        text.contains("best epoch and validation loss: Some("),
        "{text}"
    );
}

#[test]
fn dp_trains_on_gpus_or_says_it_needs_cuda() {
    let (success, text) = output("dp", "3");
    if success {
        // A machine with CUDA: it trained.
        assert!(text.contains("held-out accuracy: "), "{text}");
    } else {
        assert!(text.contains("accelerator"), "{text}");
        assert!(text.contains("cuda"), "{text}");
        assert!(!text.contains("panicked"), "an error, not a panic:\n{text}");
    }
}
