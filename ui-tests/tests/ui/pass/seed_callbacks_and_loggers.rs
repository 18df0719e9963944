//! Lightning's argument docs, `callbacks` and `loggers`: each example line
//! as an attribute.
#![deny(warnings)]

use std::sync::{Arc, Mutex};

use fabric::{Callback, Fabric, Logger, LoggerError, fabric};

#[derive(Default)]
struct MyCallback {
    epochs: usize,
}

impl Callback for MyCallback {}

/// Keeps what it is given, where `main` can see it.
#[derive(Clone, Default)]
struct Memory(Arc<Mutex<Vec<(String, f64)>>>);

impl Logger for Memory {
    fn log_metrics(&mut self, metrics: &[(&str, f64)], _step: Option<u64>) -> Result<(), LoggerError> {
        let mut kept = self.0.lock().map_err(|e| e.to_string())?;
        kept.extend(metrics.iter().map(|(name, value)| (name.to_string(), *value)));
        Ok(())
    }
}

// fabric = Fabric(callbacks=[MyCallback()])
#[fabric(callbacks = [MyCallback::default()], accelerator = "cpu")]
fn callbacks(fabric: &mut Fabric) -> fabric::Result<usize> {
    fabric.callback_mut::<MyCallback>().expect("registered").epochs += 1;
    Ok(fabric.callback::<MyCallback>().map_or(0, |c| c.epochs))
}

// Default used by Fabric; no loggers are active
// fabric = Fabric(loggers=[])
#[fabric(loggers = [], accelerator = "cpu")]
fn no_loggers(fabric: &mut Fabric) -> fabric::Result<()> {
    fabric.log("loss", 0.5)
}

static ONE: std::sync::LazyLock<Memory> = std::sync::LazyLock::new(Memory::default);
static FIRST: std::sync::LazyLock<Memory> = std::sync::LazyLock::new(Memory::default);
static SECOND: std::sync::LazyLock<Memory> = std::sync::LazyLock::new(Memory::default);

// Log to a single logger
// fabric = Fabric(loggers=TensorBoardLogger(...))
#[fabric(loggers = ONE.clone(), accelerator = "cpu")]
fn one_logger(fabric: &mut Fabric) -> fabric::Result<()> {
    fabric.log("loss", 0.25)
}

// Or multiple instances
// fabric = Fabric(loggers=[logger1, logger2, ...])
#[fabric(loggers = [FIRST.clone(), SECOND.clone()], accelerator = "cpu")]
fn two_loggers(fabric: &mut Fabric) -> fabric::Result<()> {
    fabric.log_dict([("loss", 0.125), ("accuracy", 0.75)], None)
}

fn main() {
    assert_eq!(callbacks().unwrap(), 1);
    no_loggers().unwrap();
    one_logger().unwrap();
    assert_eq!(*ONE.0.lock().unwrap(), [("loss".to_owned(), 0.25)]);
    two_loggers().unwrap();
    for logger in [&FIRST, &SECOND] {
        let kept = logger.0.lock().unwrap();
        assert!(kept.contains(&("loss".to_owned(), 0.125)), "{kept:?}");
        assert!(kept.contains(&("accuracy".to_owned(), 0.75)), "{kept:?}");
    }
}
