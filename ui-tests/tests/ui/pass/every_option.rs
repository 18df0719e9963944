//! Every option the attribute takes, with a callback, a logger and a
//! cluster environment, reaching the `Fabric` the function receives.
#![deny(warnings, missing_docs)]

use fabric::{Callback, ClusterEnvironment, Fabric, Logger, LoggerError, Precision, fabric};

/// Counts the steps the training function reports.
#[derive(Default)]
struct StepCounter {
    steps: usize,
}

impl Callback for StepCounter {}

/// Prints the metrics.
struct Stdout;

impl Logger for Stdout {
    fn log_metrics(
        &mut self,
        metrics: &[(&str, f64)],
        step: Option<u64>,
    ) -> Result<(), LoggerError> {
        println!("step {step:?}: {metrics:?}");
        Ok(())
    }
}

/// A cluster of one process.
struct MyCluster;

impl ClusterEnvironment for MyCluster {
    fn world_size(&self) -> usize {
        1
    }
    fn global_rank(&self) -> usize {
        0
    }
}

/// Trains nothing, checking the configuration it was given.
#[fabric(
    accelerator = "cpu",
    strategy = "auto",
    devices = 1,
    num_nodes = 1,
    precision = "64-true",
    callbacks = [StepCounter::default()],
    loggers = Stdout,
    plugins = [MyCluster],
)]
pub fn train(fabric: &mut Fabric) -> Result<f64, fabric::Error> {
    assert_eq!(fabric.accelerator(), "cpu");
    assert_eq!(fabric.precision(), Some(Precision::True64));
    assert_eq!(fabric.environment_name(), "MyCluster");
    fabric
        .callback_mut::<StepCounter>()
        .expect("registered")
        .steps += 1;
    assert_eq!(fabric.callback::<StepCounter>().map(|c| c.steps), Some(1));
    fabric.log("loss", 0.5)?;
    Ok(0.5)
}

fn main() {
    assert_eq!(train().expect("the configuration runs on a CPU"), 0.5);
}
