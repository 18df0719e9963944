//! Every example runs for a few steps: each is compiled here as a module and
//! its `run` called with a small configuration (what `main` would read from
//! the environment), so CI checks the code users copy. Each seeds
//! libtorch's process-wide generator (and shuffles by the global seed), so
//! each holds `common::rng_lock()`.

mod common;

use fabric::Fabric;

#[allow(dead_code)]
#[path = "../examples/digits.rs"]
mod digits_example;

#[allow(dead_code)]
#[path = "../examples/bf16_mixed.rs"]
mod bf16_mixed;

#[allow(dead_code)]
#[path = "../examples/checkpoint_resume.rs"]
mod checkpoint_resume;

#[allow(dead_code)]
#[path = "../examples/custom_environment.rs"]
mod custom_environment;

#[allow(dead_code)]
#[path = "../examples/tensorboard.rs"]
mod tensorboard;

#[test]
fn digits_trains() {
    let _rng = common::rng_lock();
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .progress_bar(false)
        .build()
        .unwrap();
    let accuracy = digits_example::train(&mut fabric, 2).unwrap();
    assert!(accuracy > 0.8, "accuracy after 2 epochs: {accuracy}");
}

#[test]
fn bf16_mixed_trains() {
    let _rng = common::rng_lock();
    let accuracy = bf16_mixed::run(bf16_mixed::Options { epochs: 2 }).unwrap();
    assert!(accuracy > 0.8, "accuracy after 2 epochs: {accuracy}");
}

#[test]
fn checkpoint_resume_resumes_where_it_stopped() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let options = |epochs| checkpoint_resume::Options {
        epochs,
        dir: dir.path().to_path_buf(),
    };
    let first = checkpoint_resume::run(options(1)).unwrap();
    assert_eq!((first.start_epoch, first.epochs), (0, 1));
    let second = checkpoint_resume::run(options(2)).unwrap();
    assert_eq!((second.start_epoch, second.epochs), (1, 2));
    assert!(second.best_accuracy >= first.best_accuracy);
    // Nothing left to do: it loads and stops.
    let third = checkpoint_resume::run(options(2)).unwrap();
    assert_eq!((third.start_epoch, third.epochs), (2, 2));
    // The checkpoint of the end of epoch 2: 23 steps of 64 samples an epoch.
    assert!(
        dir.path()
            .join("checkpoints/step-000000046/model.safetensors")
            .exists()
    );
    // Each run logged to its own version.
    assert!(dir.path().join("logs/version_1/metrics.csv").exists());
}

#[test]
fn custom_environment_trains_and_rejects_impossible_ranks() {
    let _rng = common::rng_lock();
    let cluster = custom_environment::MyCluster {
        address: "10.0.0.1".into(),
        port: 1234,
        world_size: 1,
        rank: 0,
    };
    let accuracy = custom_environment::run(cluster.clone(), 1).unwrap();
    assert!(accuracy > 0.5, "accuracy after 1 epoch: {accuracy}");
    let impossible = custom_environment::MyCluster {
        world_size: 2,
        rank: 2,
        ..cluster
    };
    let err = custom_environment::run(impossible, 1)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cluster environment MyCluster: global rank 2 is not below the world size 2"),
        "{err}"
    );
}

#[test]
fn tensorboard_writes_event_files() {
    let _rng = common::rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let log_dir = tensorboard::run(dir.path().to_path_buf(), 1).unwrap();
    assert_eq!(log_dir, dir.path().join("tensorboard/digits/version_0"));
    let events = std::fs::read_dir(&log_dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("events.out.tfevents.")
        })
        .count();
    assert_eq!(events, 1);
    let csv = std::fs::read_to_string(dir.path().join("csv/digits/version_0/metrics.csv")).unwrap();
    assert!(
        csv.starts_with("lr,step,train/loss,val/accuracy\n"),
        "{csv}"
    );
}
