//! Precision: every mode of the seed, autocast, and dynamic loss scaling.

use fabric::data::{DataLoader, TensorDataset};
use fabric::precision::{
    AutocastGuard, BitsandbytesPrecision, GradScaler, GradScalerConfig, PrecisionPlugin,
    autocast_state,
};
use fabric::{Error, Fabric, Plugin, Precision};
use fabric_examples::digits;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

fn fabric(precision: &str) -> Fabric {
    Fabric::builder()
        .accelerator("cpu")
        .precision(precision)
        .build()
        .unwrap()
}

#[test]
fn bf16_mixed_runs_layers_in_bf16_with_f32_weights_and_gradients() {
    let mut fabric = fabric("bf16-mixed");
    let mut vs = nn::VarStore::new(Device::Cpu);
    let linear = nn::linear(vs.root(), 8, 4, Default::default());
    let opt = nn::Sgd::default().build(&vs, 0.1).unwrap();
    let (model, opt) = fabric.setup(&mut vs, linear, opt).unwrap();
    assert!(
        vs.trainable_variables()
            .iter()
            .all(|p| p.kind() == Kind::Float),
        "weights stay f32"
    );

    let x = Tensor::randn([16, 8], (Kind::Float, Device::Cpu));
    let inner = {
        let _autocast = fabric.autocast().unwrap();
        model.inner().forward(&x)
    };
    assert_eq!(
        inner.kind(),
        Kind::BFloat16,
        "the layer runs in bf16 under autocast"
    );
    assert_eq!(
        model.inner().forward(&x).kind(),
        Kind::Float,
        "autocast ends with the guard"
    );

    let out = model.forward(&x);
    assert_eq!(
        out.kind(),
        Kind::Float,
        "the set-up module hands f32 back, as Lightning"
    );
    fabric.backward(&out.square().mean(None)).unwrap();
    let grads: Vec<Kind> = opt.parameters().iter().map(|p| p.grad().kind()).collect();
    assert_eq!(
        grads,
        [Kind::Float, Kind::Float],
        "gradients of f32 weights are f32"
    );
    assert_eq!(fabric.loss_scale(), None, "bf16 needs no loss scaling");
}

#[test]
fn true_precisions_cast_parameters() {
    for (precision, kind) in [
        ("bf16-true", Kind::BFloat16),
        ("16-true", Kind::Half),
        ("64-true", Kind::Double),
        ("32-true", Kind::Float),
    ] {
        let mut fabric = fabric(precision);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let linear = nn::linear(vs.root(), 3, 2, Default::default());
        let model = fabric.setup_module(&mut vs, linear).unwrap();
        assert!(
            vs.trainable_variables().iter().all(|p| p.kind() == kind),
            "{precision}"
        );
        assert_eq!(fabric.param_kind(), kind);
        // Inputs are cast to the parameters' dtype, so an f32 batch just works.
        let out = model.forward(&Tensor::ones([1, 3], (Kind::Float, Device::Cpu)));
        let expected = if kind == Kind::Double {
            Kind::Double
        } else {
            Kind::Float
        };
        assert_eq!(out.kind(), expected, "{precision}");
    }
}

#[test]
fn the_guard_restores_the_previous_state_when_nested() {
    let cpu = Device::Cpu;
    let before = autocast_state(cpu).unwrap();
    assert!(!before.0);
    {
        let _outer = AutocastGuard::new(cpu, Kind::BFloat16).unwrap();
        assert_eq!(autocast_state(cpu).unwrap(), (true, Kind::BFloat16));
        {
            let _inner = AutocastGuard::new(cpu, Kind::Half).unwrap();
            assert_eq!(autocast_state(cpu).unwrap(), (true, Kind::Half));
            {
                let _off = AutocastGuard::disabled(cpu).unwrap();
                assert!(!autocast_state(cpu).unwrap().0);
                let x = Tensor::ones([2, 2], (Kind::Float, cpu));
                assert_eq!(x.matmul(&x).kind(), Kind::Float, "disabled inside enabled");
            }
            assert_eq!(autocast_state(cpu).unwrap(), (true, Kind::Half));
        }
        assert_eq!(autocast_state(cpu).unwrap(), (true, Kind::BFloat16));
    }
    assert_eq!(autocast_state(cpu).unwrap(), before);
}

fn early_return(fail: bool) -> fabric::Result<Kind> {
    let _guard = AutocastGuard::new(Device::Cpu, Kind::BFloat16)?;
    if fail {
        return Err(Error::InvalidArgument("stop".into()));
    }
    let x = Tensor::ones([2, 2], (Kind::Float, Device::Cpu));
    Ok(x.matmul(&x).kind())
}

#[test]
fn the_guard_restores_the_state_on_early_return_and_panic() {
    assert_eq!(early_return(false).unwrap(), Kind::BFloat16);
    assert!(early_return(true).is_err());
    assert!(
        !autocast_state(Device::Cpu).unwrap().0,
        "restored after `return Err`"
    );
    let unwound = std::panic::catch_unwind(|| {
        let _guard = AutocastGuard::new(Device::Cpu, Kind::BFloat16).unwrap();
        panic!("in the middle of a forward pass");
    });
    assert!(unwound.is_err());
    assert!(
        !autocast_state(Device::Cpu).unwrap().0,
        "restored while unwinding"
    );
    let err = AutocastGuard::new(Device::Cpu, Kind::Float)
        .unwrap_err()
        .to_string();
    assert!(err.contains("BFloat16 or Kind::Half"), "{err}");
}

/// f32 training with dynamic loss scaling: a user's precision plugin that
/// lets the scaler run on the CPU, where fabric's own `16-mixed` cannot.
struct ScaledF32(GradScalerConfig);

impl PrecisionPlugin for ScaledF32 {
    fn loss_scaling(&self) -> Option<GradScalerConfig> {
        Some(self.0)
    }
}

#[test]
fn the_scaler_skips_non_finite_steps_halves_and_grows_the_scale() {
    let config = GradScalerConfig {
        growth_interval: 3,
        ..GradScalerConfig::default()
    };
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .plugin(Plugin::precision(ScaledF32(config)))
        .build()
        .unwrap();
    assert_eq!(
        fabric.precision(),
        None,
        "a user's plugin replaces `precision`"
    );
    let vs = nn::VarStore::new(Device::Cpu);
    let w = vs.root().ones("w", &[2]);
    let opt = nn::Sgd::default().build(&vs, 0.5).unwrap();
    let mut opt = fabric.setup_optimizer(opt).unwrap();
    assert_eq!(fabric.loss_scale(), Some(65536.0));

    let mut step = |fabric: &mut Fabric, factor: f64| {
        opt.zero_grad();
        let loss = (&w * factor).sum(Kind::Float);
        fabric.backward(&loss).unwrap();
        opt.step().unwrap()
    };
    // The gradient is unscaled before the step: w = 1 - 0.5 * 1.
    assert!(step(&mut fabric, 1.0));
    assert_eq!(Vec::<f32>::try_from(&w).unwrap(), [0.5, 0.5]);
    // 1e36 * 65536 overflows f32: the step is skipped and the scale halved.
    assert!(!step(&mut fabric, 1e36));
    assert_eq!(
        Vec::<f32>::try_from(&w).unwrap(),
        [0.5, 0.5],
        "parameters untouched"
    );
    assert_eq!(fabric.loss_scale(), Some(32768.0));
    assert!(!step(&mut fabric, f64::NAN));
    assert_eq!(fabric.loss_scale(), Some(16384.0));
    // Three finite steps in a row double it.
    for _ in 0..3 {
        assert!(step(&mut fabric, 0.0));
    }
    assert_eq!(fabric.loss_scale(), Some(32768.0));
}

#[test]
fn the_scaler_unscales_before_clipping() {
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .plugin(Plugin::precision(ScaledF32(GradScalerConfig::default())))
        .build()
        .unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let w = vs.root().zeros("w", &[2]);
    let mut opt = fabric
        .setup_optimizer(nn::Sgd::default().build(&vs, 1.0).unwrap())
        .unwrap();
    let loss = (&w * Tensor::from_slice(&[3.0f32, 4.0])).sum(Kind::Float);
    fabric.backward(&loss).unwrap();
    let norm = fabric
        .clip_gradients(&mut opt, fabric::GradClip::norm(1.0))
        .unwrap()
        .unwrap();
    assert!(
        (norm - 5.0).abs() < 1e-4,
        "the norm of the unscaled gradients, got {norm}"
    );
    assert!(opt.step().unwrap());
    let w: Vec<f32> = Vec::try_from(&w).unwrap();
    assert!(
        (w[0] + 0.6).abs() < 1e-4 && (w[1] + 0.8).abs() < 1e-4,
        "unscaled once, clipped, stepped: {w:?}"
    );
}

#[test]
fn scaler_state_round_trips_and_bad_settings_are_rejected() {
    let mut scaler = GradScaler::new(GradScalerConfig::default(), Device::Cpu).unwrap();
    scaler
        .update(&Tensor::ones([1], (Kind::Float, Device::Cpu)))
        .unwrap();
    let state = scaler.state();
    assert_eq!(state.scale, 32768.0);
    let mut other = GradScaler::new(GradScalerConfig::default(), Device::Cpu).unwrap();
    other.load_state(state).unwrap();
    assert_eq!(other.state(), state);
    let bad = GradScalerConfig {
        backoff_factor: 1.5,
        ..GradScalerConfig::default()
    };
    let err = GradScaler::new(bad, Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("0 < backoff_factor < 1"), "{err}");
}

fn digits_accuracy(precision: &str) -> f64 {
    let mut fabric = fabric(precision);
    let (images, labels) = digits::load(&digits::default_path()).unwrap();
    let (train_x, train_y, test_x, test_y) = digits::split(&images, &labels, 0.2, 2);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = nn::seq()
        .add(nn::linear(vs.root() / "a", 64, 64, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(vs.root() / "b", 64, 10, Default::default()));
    let opt = nn::Adam::default().build(&vs, 5e-3).unwrap();
    let (model, mut opt) = fabric.setup(&mut vs, net, opt).unwrap();
    let mut loader = fabric
        .setup_dataloaders(
            DataLoader::new(TensorDataset::new((train_x, train_y)).unwrap())
                .batch_size(32)
                .shuffle(true)
                .seed(1),
        )
        .unwrap();
    for _ in 0..10 {
        for batch in &mut loader {
            let (x, y) = batch.unwrap();
            opt.zero_grad();
            let loss = model.forward(&x).cross_entropy_for_logits(&y);
            fabric.backward(&loss).unwrap();
            assert!(opt.step().unwrap());
        }
    }
    model.eval();
    tch::no_grad(|| {
        model
            .forward(&test_x)
            .argmax(-1, false)
            .eq_tensor(&test_y)
            .to_kind(Kind::Double)
            .mean(None)
            .double_value(&[])
    })
}

#[test]
fn a_small_model_converges_in_every_cpu_precision() {
    for precision in ["32-true", "64-true", "bf16-mixed", "bf16-true"] {
        let accuracy = digits_accuracy(precision);
        assert!(accuracy > 0.9, "{precision}: held-out accuracy {accuracy}");
    }
}

#[test]
fn impossible_modes_name_what_to_use_instead() {
    let err = Fabric::builder()
        .accelerator("cpu")
        .precision("16-mixed")
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("use `precision = \"bf16-mixed\"`"), "{err}");
    if !tch::Cuda::is_available() {
        // `auto` resolves to the CPU here: the run-time check says the same.
        let err = Fabric::builder()
            .precision("16")
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("use `precision = \"bf16-mixed\"`"), "{err}");
    }
    for te in ["transformer-engine", "transformer-engine-float16"] {
        let err = Fabric::builder()
            .precision(te)
            .build()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no libtorch binding; use \"bf16-mixed\""),
            "{err}"
        );
    }
    let err = Fabric::builder()
        .plugin(BitsandbytesPrecision::new("nf4-dq"))
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bitsandbytes is a Python/CUDA library"),
        "{err}"
    );
    assert!(err.contains("bf16-true"), "{err}");
}

#[test]
fn precision_and_a_precision_plugin_are_exclusive() {
    let err = Fabric::builder()
        .accelerator("cpu")
        .precision("bf16-mixed")
        .plugin(fabric::precision::MixedPrecision::bf16())
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("both `precision` and a precision plugin were given; choose one"),
        "{err}"
    );
    let fabric = Fabric::builder()
        .accelerator("cpu")
        .plugin(fabric::precision::MixedPrecision::bf16())
        .build()
        .unwrap();
    assert_eq!(fabric.precision(), Some(Precision::MixedBf16));
}

#[test]
fn every_alias_reaches_its_mode_at_run_time() {
    let cases: [(fabric::options::Value, Precision); 8] = [
        ("bf16".into(), Precision::MixedBf16),
        ("bf16-mixed".into(), Precision::MixedBf16),
        ("64".into(), Precision::True64),
        (64.into(), Precision::True64),
        ("32".into(), Precision::True32),
        (32.into(), Precision::True32),
        ("16-true".into(), Precision::True16),
        ("bf16-true".into(), Precision::TrueBf16),
    ];
    for (value, expected) in cases {
        let fabric = Fabric::builder()
            .accelerator("cpu")
            .precision(value.clone())
            .build()
            .unwrap();
        assert_eq!(fabric.precision(), Some(expected), "{value}");
    }
}
