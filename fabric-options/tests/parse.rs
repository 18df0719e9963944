//! Every documented form of every option, and the errors for bad ones.

use fabric_options::{Accelerator, Devices, Key, NumNodes, Options, Precision, Strategy, Value};

fn devices(v: impl Into<Value>) -> Result<Devices, String> {
    Devices::parse(&v.into()).map_err(|e| e.to_string())
}

#[test]
fn every_devices_form_of_the_seed_parses() {
    assert_eq!(devices(None::<i64>), Ok(Devices::Cpu));
    assert_eq!(devices(0), Ok(Devices::Cpu));
    assert_eq!(devices("0"), Ok(Devices::Cpu));
    assert_eq!(devices(2), Ok(Devices::Count(2)));
    assert_eq!(devices("2"), Ok(Devices::Count(2)));
    assert_eq!(devices([1, 4]), Ok(Devices::Indices(vec![1, 4])));
    assert_eq!(devices(vec![3usize]), Ok(Devices::Indices(vec![3])));
    assert_eq!(devices("1, 4"), Ok(Devices::Indices(vec![1, 4])));
    assert_eq!(devices("1,"), Ok(Devices::Indices(vec![1])));
    assert_eq!(devices(-1), Ok(Devices::All));
    assert_eq!(devices("-1"), Ok(Devices::All));
    assert_eq!(devices("auto"), Ok(Devices::Auto));
    assert_eq!(devices(" AUTO "), Ok(Devices::Auto));
}

#[test]
fn bad_devices_say_what_is_wrong_and_what_is_accepted() {
    let err = devices("1, x").unwrap_err();
    assert!(err.contains("`x`, which is not a device index"), "{err}");
    assert!(err.contains("accepted:"), "{err}");
    let err = devices(-2).unwrap_err();
    assert!(err.contains("-2 is below -1"), "{err}");
    let err = devices("-2").unwrap_err();
    assert!(err.contains("below -1"), "{err}");
    let err = devices([1, 1]).unwrap_err();
    assert!(err.contains("lists device 1 more than once"), "{err}");
    let err = devices(Vec::<i64>::new()).unwrap_err();
    assert!(err.contains("selects no device"), "{err}");
    let err = devices([0, -3]).unwrap_err();
    assert!(err.contains("-3, which is not a device index"), "{err}");
    let err = devices("two").unwrap_err();
    assert!(err.contains("\"two\" is not a device selection"), "{err}");
    assert!(err.starts_with("invalid `devices`: "), "{err}");
}

#[test]
fn precision_aliases_map_to_their_modes() {
    let cases: [(Value, Precision); 16] = [
        ("64-true".into(), Precision::True64),
        ("32-true".into(), Precision::True32),
        ("16-true".into(), Precision::True16),
        ("bf16-true".into(), Precision::TrueBf16),
        ("16-mixed".into(), Precision::Mixed16),
        ("bf16-mixed".into(), Precision::MixedBf16),
        ("transformer-engine".into(), Precision::TransformerEngine),
        (
            "transformer-engine-float16".into(),
            Precision::TransformerEngineFloat16,
        ),
        ("64".into(), Precision::True64),
        ("32".into(), Precision::True32),
        ("16".into(), Precision::Mixed16),
        ("bf16".into(), Precision::MixedBf16),
        (64.into(), Precision::True64),
        (32.into(), Precision::True32),
        (16.into(), Precision::Mixed16),
        ("BF16-Mixed".into(), Precision::MixedBf16),
    ];
    for (value, expected) in cases {
        assert_eq!(Precision::parse(&value), Ok(expected), "{value}");
    }
    // Every mode's canonical name parses back to it.
    for (value, _) in [("64-true", 0), ("bf16-mixed", 0)] {
        let p = Precision::parse(&value.into()).unwrap();
        assert_eq!(p.name(), value);
    }
}

#[test]
fn misspelt_names_get_a_suggestion_and_the_accepted_list() {
    let err = Precision::parse(&"bf16-mixd".into())
        .unwrap_err()
        .to_string();
    assert!(err.contains("did you mean `bf16-mixed`?"), "{err}");
    assert!(err.contains("\"64-true\""), "{err}");
    // One edit from both `ddp` and `dp`: both are offered, `ddp` (what a
    // Lightning user almost always means) first.
    let err = Strategy::parse(&"dpp".into()).unwrap_err().to_string();
    assert!(
        err.contains(": did you mean `ddp` or `dp`? Accepted"),
        "{err}"
    );
    let err = Accelerator::parse(&"cdua".into()).unwrap_err().to_string();
    assert!(err.contains("did you mean `cuda`?"), "{err}");
    let err = Accelerator::parse(&"quantum".into())
        .unwrap_err()
        .to_string();
    assert!(!err.contains("did you mean"), "{err}");
    assert!(err.contains("\"cpu\", \"cuda\""), "{err}");
    let err = Key::unknown("precison").to_string();
    assert!(err.contains("did you mean `precision`?"), "{err}");
    assert_eq!(Key::unknown("precison").key(), None);
}

#[test]
fn wrong_value_types_are_named() {
    let err = Accelerator::parse(&2.into()).unwrap_err().to_string();
    assert!(err.contains("expected a string"), "{err}");
    assert!(err.contains("found an integer"), "{err}");
    let err = Precision::parse(&8.into()).unwrap_err().to_string();
    assert!(err.contains("accepted integers: 64, 32, 16"), "{err}");
    let err = NumNodes::parse(&[1, 2].into()).unwrap_err().to_string();
    assert!(err.contains("found a list"), "{err}");
}

#[test]
fn num_nodes_must_be_positive() {
    assert_eq!(NumNodes::parse(&8.into()), Ok(NumNodes(8)));
    assert_eq!(NumNodes::parse(&"2".into()), Ok(NumNodes(2)));
    for bad in [Value::Int(0), Value::Int(-3), Value::Str("x".into())] {
        let err = NumNodes::parse(&bad).unwrap_err();
        assert_eq!(err.key(), Some(Key::NumNodes));
        assert!(
            err.message().contains("expected a positive integer"),
            "{err}"
        );
    }
}

#[test]
fn strategy_and_accelerator_names_are_case_insensitive() {
    assert_eq!(Strategy::parse(&"DDP_Spawn".into()), Ok(Strategy::DdpSpawn));
    assert_eq!(
        Strategy::parse(&"deepspeed_stage_2".into()),
        Ok(Strategy::DeepSpeed)
    );
    assert_eq!(Strategy::parse(&"single_xla".into()), Ok(Strategy::Xla));
    assert_eq!(Accelerator::parse(&"GPU".into()), Ok(Accelerator::Gpu));
}

fn check(options: Options) -> Vec<(Option<Key>, String)> {
    options
        .check()
        .into_iter()
        .map(|e| (e.key(), e.message().to_owned()))
        .collect()
}

#[test]
fn impossible_combinations_are_rejected_with_the_fix() {
    let cpu = |o: Options| Options {
        accelerator: Accelerator::Cpu,
        ..o
    };
    let errors = check(cpu(Options {
        strategy: Strategy::Dp,
        ..Options::default()
    }));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, Some(Key::Strategy));
    assert!(errors[0].1.contains("use `strategy = \"ddp\"`"));

    let errors = check(cpu(Options {
        precision: Some(Precision::Mixed16),
        ..Options::default()
    }));
    assert!(
        errors[0].1.contains("use `precision = \"bf16-mixed\"`"),
        "{errors:?}"
    );

    let errors = check(Options {
        accelerator: Accelerator::Cuda,
        devices: Devices::Cpu,
        ..Options::default()
    });
    assert_eq!(errors[0].0, Some(Key::Devices));

    let errors = check(Options {
        accelerator: Accelerator::Mps,
        strategy: Strategy::Ddp,
        ..Options::default()
    });
    assert!(errors[0].1.contains("MPS"), "{errors:?}");

    let errors = check(Options {
        accelerator: Accelerator::Tpu,
        strategy: Strategy::Xla,
        ..Options::default()
    });
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().all(|e| e.1.contains("libtorch")));

    let errors = check(Options {
        strategy: Strategy::Fsdp,
        ..Options::default()
    });
    assert!(errors[0].1.contains("use \"ddp\""), "{errors:?}");

    let errors = check(Options {
        precision: Some(Precision::TransformerEngine),
        ..Options::default()
    });
    assert!(errors[0].1.contains("bf16-mixed"), "{errors:?}");

    let errors = check(Options {
        strategy: Strategy::SingleDevice,
        devices: Devices::Count(2),
        ..Options::default()
    });
    assert!(errors[0].1.contains("runs on one device"), "{errors:?}");

    let errors = check(Options {
        precision: Some(Precision::True64),
        precision_plugins: 1,
        ..Options::default()
    });
    assert!(errors[0].1.contains("choose one"), "{errors:?}");

    let errors = check(Options {
        cluster_environments: 2,
        ..Options::default()
    });
    assert!(errors[0].1.contains("at most one"), "{errors:?}");

    let errors = check(cpu(Options {
        devices: Devices::Indices(vec![1, 4]),
        ..Options::default()
    }));
    assert!(errors[0].1.contains("number of processes"), "{errors:?}");
}

#[test]
fn sensible_configurations_pass_the_check() {
    let ok = [
        Options::default(),
        Options {
            accelerator: Accelerator::Cpu,
            devices: Devices::Cpu,
            precision: Some(Precision::True64),
            ..Options::default()
        },
        Options {
            accelerator: Accelerator::Cuda,
            strategy: Strategy::Ddp,
            devices: Devices::Indices(vec![1, 4]),
            num_nodes: NumNodes(2),
            precision: Some(Precision::Mixed16),
            ..Options::default()
        },
        Options {
            accelerator: Accelerator::Cpu,
            strategy: Strategy::DdpSpawn,
            devices: Devices::Count(4),
            precision: Some(Precision::MixedBf16),
            ..Options::default()
        },
        Options {
            precision_plugins: 1,
            cluster_environments: 1,
            ..Options::default()
        },
    ];
    for options in ok {
        assert_eq!(options.check(), vec![], "{options:?}");
    }
}
