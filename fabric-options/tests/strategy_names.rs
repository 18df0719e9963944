//! The strategy names: exactly those Lightning Fabric 2.6 registers (plus
//! `"auto"` and `"single_device"`), each with its family and parameters.

use fabric_options::{
    Key, Offload, Options, Strategy, StrategyName, StrategyParams, Value, did_you_mean,
};

const CPU: Option<Offload> = Some(Offload::Cpu);
const NVME: Option<Offload> = Some(Offload::Nvme);

fn params(
    find_unused_parameters: bool,
    zero_stage: Option<u8>,
    offload_optimizer: Option<Offload>,
    offload_parameters: Option<Offload>,
) -> StrategyParams {
    StrategyParams {
        find_unused_parameters,
        zero_stage,
        offload_optimizer,
        offload_parameters,
    }
}

/// Every name `register_strategies` registers in Lightning 2.6.5
/// (`src/lightning/fabric/strategies/*.py`), with the arguments it
/// registers the name with.
fn lightning() -> Vec<(&'static str, Strategy, StrategyParams)> {
    let none = StrategyParams::default();
    vec![
        // ddp.py: ("ddp", "popen"), ("ddp_spawn", "spawn"), ("ddp_fork",
        // "fork"), ("ddp_notebook", "fork"), and find_unused_parameters=True.
        ("ddp", Strategy::Ddp, none),
        ("ddp_spawn", Strategy::DdpSpawn, none),
        ("ddp_fork", Strategy::DdpFork, none),
        ("ddp_notebook", Strategy::DdpNotebook, none),
        (
            "ddp_find_unused_parameters_true",
            Strategy::Ddp,
            params(true, None, None, None),
        ),
        // deepspeed.py
        ("deepspeed", Strategy::DeepSpeed, none),
        (
            "deepspeed_stage_1",
            Strategy::DeepSpeed,
            params(false, Some(1), None, None),
        ),
        (
            "deepspeed_stage_1_offload",
            Strategy::DeepSpeed,
            params(false, Some(1), CPU, None),
        ),
        (
            "deepspeed_stage_2",
            Strategy::DeepSpeed,
            params(false, Some(2), None, None),
        ),
        (
            "deepspeed_stage_2_offload",
            Strategy::DeepSpeed,
            params(false, Some(2), CPU, None),
        ),
        (
            "deepspeed_stage_3",
            Strategy::DeepSpeed,
            params(false, Some(3), None, None),
        ),
        (
            "deepspeed_stage_3_offload",
            Strategy::DeepSpeed,
            params(false, Some(3), CPU, CPU),
        ),
        (
            "deepspeed_stage_3_offload_nvme",
            Strategy::DeepSpeed,
            params(false, Some(3), NVME, NVME),
        ),
        // dp.py, fsdp.py (cpu_offload=True), xla.py, xla_fsdp.py, single_xla.py
        ("dp", Strategy::Dp, none),
        ("fsdp", Strategy::Fsdp, none),
        (
            "fsdp_cpu_offload",
            Strategy::Fsdp,
            params(false, None, None, CPU),
        ),
        ("xla", Strategy::Xla, none),
        ("xla_fsdp", Strategy::Xla, none),
        ("single_xla", Strategy::Xla, none),
    ]
}

fn parse(name: &str) -> Result<StrategyName, String> {
    StrategyName::parse(&Value::from(name)).map_err(|e| e.to_string())
}

#[test]
fn every_lightning_name_parses_to_its_family_and_parameters() {
    for (name, strategy, params) in lightning() {
        for written in [name.to_owned(), name.to_uppercase(), format!(" {name} ")] {
            let parsed = parse(&written).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed.name(), name);
            assert_eq!(parsed.strategy(), strategy, "{name}");
            assert_eq!(parsed.params(), params, "{name}");
            assert_eq!(Strategy::parse(&written.clone().into()), Ok(strategy));
        }
    }
}

#[test]
fn the_accepted_names_are_lightnings_plus_auto_and_single_device() {
    let mut accepted: Vec<_> = Strategy::names().collect();
    let mut expected: Vec<_> = lightning().into_iter().map(|(name, ..)| name).collect();
    expected.extend(["auto", "single_device"]);
    accepted.sort_unstable();
    expected.sort_unstable();
    assert_eq!(accepted, expected);
}

#[test]
fn model_parallel_is_not_a_name_in_lightning_2_6() {
    let error = parse("model_parallel").unwrap_err();
    assert!(error.contains("is not a valid strategy"), "{error}");
    // The family is still reached through Lightning's class, and named.
    assert_eq!(
        Strategy::from_class_name("ModelParallelStrategy"),
        Some(Strategy::ModelParallel)
    );
    assert_eq!(Strategy::ModelParallel.name(), "model_parallel");
}

#[test]
fn each_family_reads_back_as_its_plain_name() {
    for (name, strategy, params) in lightning() {
        let options = Options {
            strategy,
            strategy_params: params,
            ..Options::default()
        };
        let expected = if strategy == Strategy::Xla {
            "xla"
        } else {
            name
        };
        assert_eq!(options.strategy_name(), expected);
        assert_eq!(options.get(Key::Strategy), Some(Value::from(expected)));
    }
    assert_eq!(Strategy::Ddp.name(), "ddp");
    assert_eq!(Strategy::DeepSpeed.name(), "deepspeed");
    assert_eq!(Strategy::SingleDevice.name(), "single_device");
}

#[test]
fn misspelt_new_names_get_a_suggestion() {
    let cases = [
        (
            "ddp_find_unused_parameters_ture",
            "ddp_find_unused_parameters_true",
        ),
        ("deepspeed_stage_1_ofload", "deepspeed_stage_1_offload"),
        (
            "deepspeed_stage_3_offload_nvm",
            "deepspeed_stage_3_offload_nvme",
        ),
        ("fsdp_cpu_offlaod", "fsdp_cpu_offload"),
    ];
    for (misspelt, meant) in cases {
        let error = parse(misspelt).unwrap_err();
        assert!(
            error.contains(&format!(": did you mean `{meant}`")),
            "{misspelt}: {error}"
        );
        assert_eq!(
            did_you_mean(misspelt, Strategy::names()).first(),
            Some(meant)
        );
    }
    let error = parse("horovod").unwrap_err();
    assert!(!error.contains("did you mean"), "{error}");
    assert!(
        error.contains("\"deepspeed_stage_3_offload_nvme\""),
        "{error}"
    );
    assert!(!error.contains("model_parallel"), "{error}");
}

#[test]
fn sharded_names_are_rejected_by_their_own_name() {
    let mut options = Options::default();
    options
        .set(Key::Strategy, &"deepspeed_stage_3_offload".into())
        .unwrap();
    let errors = options.check();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .message()
            .starts_with("the sharded strategy \"deepspeed_stage_3_offload\" is not available"),
        "{}",
        errors[0]
    );
}
