//! Loggers, callbacks and the rest of the per-run surface.

use std::sync::{Arc, Mutex};

use fabric::{Callback, Error, Fabric, Logger, LoggerError, ToDevice};
use tch::{Device, Kind, Tensor};

type Records = Arc<Mutex<Vec<String>>>;

struct Recorder {
    records: Records,
    fail: bool,
}

impl Logger for Recorder {
    fn log_metrics(
        &mut self,
        metrics: &[(&str, f64)],
        step: Option<u64>,
    ) -> Result<(), LoggerError> {
        if self.fail {
            return Err("disk full".into());
        }
        for (name, value) in metrics {
            self.records
                .lock()
                .unwrap()
                .push(format!("{step:?} {name}={value}"));
        }
        Ok(())
    }

    fn finalize(&mut self, success: bool) -> Result<(), LoggerError> {
        self.records
            .lock()
            .unwrap()
            .push(format!("finalize success={success}"));
        Ok(())
    }
}

#[test]
fn metrics_reach_every_logger_and_loggers_finalize_on_drop() {
    let (a, b) = (Records::default(), Records::default());
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .logger(Recorder {
            records: a.clone(),
            fail: false,
        })
        .logger(Recorder {
            records: b.clone(),
            fail: false,
        })
        .build()
        .unwrap();
    fabric.log("loss", 0.5).unwrap();
    fabric.log("lr", Tensor::from(0.25f32)).unwrap();
    fabric
        .log_dict([("acc", 0.75), ("epoch", 2.0)], Some(7))
        .unwrap();
    drop(fabric);
    let expected = [
        "None loss=0.5",
        "None lr=0.25",
        "Some(7) acc=0.75",
        "Some(7) epoch=2",
        "finalize success=true",
    ];
    assert_eq!(*a.lock().unwrap(), expected);
    assert_eq!(*b.lock().unwrap(), expected);
}

#[test]
fn a_failing_logger_is_an_error_naming_it() {
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .logger(Recorder {
            records: Records::default(),
            fail: true,
        })
        .build()
        .unwrap();
    let err = fabric.log("loss", 1.0).unwrap_err();
    assert!(matches!(err, Error::Plugin { .. }));
    assert_eq!(
        err.to_string(),
        "logger `Recorder`: log_metrics failed: disk full"
    );
}

#[test]
fn logging_a_tensor_with_many_values_is_an_error() {
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .logger(Recorder {
            records: Records::default(),
            fail: false,
        })
        .build()
        .unwrap();
    let err = fabric
        .log("loss", Tensor::ones([3], (Kind::Float, Device::Cpu)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("must hold one value"), "{err}");
    // A one-element tensor of any shape is fine.
    fabric
        .log("loss", Tensor::ones([1, 1], (Kind::Float, Device::Cpu)))
        .unwrap();
}

#[test]
fn finishing_reports_failure_to_loggers_once() {
    let records = Records::default();
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .logger(Recorder {
            records: records.clone(),
            fail: false,
        })
        .build()
        .unwrap();
    fabric.finish(false).unwrap();
    drop(fabric);
    assert_eq!(*records.lock().unwrap(), ["finalize success=false"]);
}

#[derive(Debug, PartialEq)]
struct Counter {
    count: u32,
}
impl Callback for Counter {}

struct Other;
impl Callback for Other {}

#[test]
fn callbacks_are_reachable_by_type_in_registration_order() {
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .callback(Other)
        .callback(Counter { count: 1 })
        .callback(Counter { count: 10 })
        .build()
        .unwrap();
    assert_eq!(
        fabric.callback::<Counter>(),
        Some(&Counter { count: 1 }),
        "the first registered of its type"
    );
    fabric.callback_mut::<Counter>().unwrap().count += 1;
    assert_eq!(fabric.callback::<Counter>().unwrap().count, 2);
    assert!(fabric.callback::<Other>().is_some());
    let none = Fabric::builder().accelerator("cpu").build().unwrap();
    assert!(none.callback::<Counter>().is_none());
}

#[test]
fn to_device_moves_nested_data_and_keeps_values() {
    let fabric = Fabric::builder().accelerator("cpu").build().unwrap();
    let data = (
        Tensor::from_slice(&[1.0f32, 2.0]),
        vec![Tensor::from(3i64)],
        Some(Tensor::from(4.0)),
    );
    let (a, b, c) = fabric.to_device(data);
    assert_eq!(Vec::<f32>::try_from(&a).unwrap(), [1.0, 2.0]);
    assert_eq!(b[0].int64_value(&[]), 3);
    assert_eq!(c.unwrap().device(), Device::Cpu);
    let moved = [Tensor::from(1.0)].to_device(Device::Cpu);
    assert_eq!(moved[0].device(), Device::Cpu);
}

#[test]
fn single_process_collectives_and_autocast_are_trivial() {
    let fabric = Fabric::builder().accelerator("cpu").build().unwrap();
    fabric.barrier().unwrap();
    let x = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
    let y = {
        let _autocast = fabric.autocast().unwrap();
        x.matmul(&x)
    };
    assert_eq!(y.kind(), Kind::Float, "32-true runs no autocast");
}
