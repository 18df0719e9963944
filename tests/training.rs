//! Training real models through fabric: convergence, precision, clipping.

use fabric::data::{DataLoader, TensorDataset};
use fabric::{Error, Fabric, GradClip};
use fabric_examples::digits;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

fn mlp(vs: &nn::Path, hidden: i64) -> nn::Sequential {
    nn::seq()
        .add(nn::linear(
            vs / "l1",
            digits::FEATURES as i64,
            hidden,
            Default::default(),
        ))
        .add_fn(|x| x.relu())
        .add(nn::linear(
            vs / "l2",
            hidden,
            digits::CLASSES as i64,
            Default::default(),
        ))
}

/// Trains on the digits for `epochs` and returns (last epoch's mean train
/// loss, held-out accuracy, parameter kind).
fn train_digits(precision: &str, epochs: usize) -> (f64, f64, Kind) {
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .precision(precision)
        .build()
        .unwrap();
    let (images, labels) = digits::load(&digits::default_path()).unwrap();
    let (train_x, train_y, test_x, test_y) = digits::split(&images, &labels, 0.2, 1);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = mlp(&vs.root(), 64);
    let opt = nn::Adam::default().build(&vs, 5e-3).unwrap();
    let (model, mut opt) = fabric.setup(&mut vs, net, opt).unwrap();
    let mut loader = fabric
        .setup_dataloaders(
            DataLoader::new(TensorDataset::new((train_x, train_y)).unwrap())
                .batch_size(32)
                .shuffle(true)
                .seed(3),
        )
        .unwrap();
    let mut last = f64::NAN;
    for _ in 0..epochs {
        let (mut total, mut n) = (0.0, 0.0);
        for batch in &mut loader {
            let (x, y) = batch.unwrap();
            opt.zero_grad();
            let loss = model.forward(&x).cross_entropy_for_logits(&y);
            fabric.backward(&loss).unwrap();
            opt.step().unwrap();
            total += loss.double_value(&[]);
            n += 1.0;
        }
        last = total / n;
    }
    model.eval();
    let accuracy = tch::no_grad(|| {
        model
            .forward(&test_x)
            .argmax(-1, false)
            .eq_tensor(&test_y)
            .to_kind(Kind::Double)
            .mean(None)
            .double_value(&[])
    });
    let kind = vs.trainable_variables()[0].kind();
    (last, accuracy, kind)
}

#[test]
fn digits_loss_falls_below_threshold_and_generalises() {
    let (loss, accuracy, kind) = train_digits("32-true", 15);
    assert_eq!(kind, Kind::Float);
    // Chance is ln(10) = 2.30; a working loop gets far below 0.15.
    assert!(loss < 0.15, "train loss after 15 epochs: {loss}");
    assert!(accuracy > 0.93, "held-out accuracy: {accuracy}");
}

#[test]
fn sixty_four_true_trains_with_f64_parameters() {
    let (loss, accuracy, kind) = train_digits("64-true", 10);
    assert_eq!(kind, Kind::Double);
    assert!(loss < 0.2, "train loss: {loss}");
    assert!(accuracy > 0.9, "held-out accuracy: {accuracy}");
}

#[test]
fn bf16_true_casts_parameters_and_returns_f32_outputs() {
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .precision("bf16-true")
        .build()
        .unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = nn::linear(vs.root(), 4, 3, Default::default());
    let opt = nn::Sgd::default().build(&vs, 0.1).unwrap();
    let (model, _opt) = fabric.setup(&mut vs, net, opt).unwrap();
    assert!(
        vs.trainable_variables()
            .iter()
            .all(|p| p.kind() == Kind::BFloat16)
    );
    let out = model.forward(&Tensor::ones([2, 4], (Kind::Float, Device::Cpu)));
    assert_eq!(
        out.kind(),
        Kind::Float,
        "16-bit -true outputs come back as f32, as in Lightning"
    );
    assert_eq!(fabric.param_kind(), Kind::BFloat16);
}

#[test]
fn sixty_four_true_is_f64_end_to_end() {
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .precision(64)
        .build()
        .unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = nn::linear(vs.root(), 4, 1, Default::default());
    let opt = nn::Sgd::default().build(&vs, 0.1).unwrap();
    let (model, mut opt) = fabric.setup(&mut vs, net, opt).unwrap();
    let x = Tensor::ones([8, 4], (Kind::Float, Device::Cpu));
    let out = model.forward(&x);
    assert_eq!(out.kind(), Kind::Double);
    let loss = out.square().mean(None);
    fabric.backward(&loss).unwrap();
    let grads: Vec<Kind> = opt.parameters().iter().map(|p| p.grad().kind()).collect();
    assert!(grads.iter().all(|k| *k == Kind::Double), "{grads:?}");
    let before = vs.trainable_variables()[0].copy();
    assert!(opt.step().unwrap());
    // The optimizer built before `setup` updates the cast parameters in place.
    assert!(
        vs.trainable_variables()[0]
            .not_equal_tensor(&before)
            .any()
            .int64_value(&[])
            == 1
    );
}

fn fabric_with_grads(grad: &[f64]) -> (Fabric, fabric::FabricOptimizer, nn::VarStore) {
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .precision("64-true")
        .build()
        .unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let w = vs.root().zeros("w", &[grad.len() as i64]);
    let opt = nn::Sgd::default().build(&vs, 0.1).unwrap();
    fabric
        .setup_module(&mut vs, nn::func(|x| x.shallow_clone()))
        .unwrap();
    let opt = fabric.setup_optimizer(opt).unwrap();
    let target = Tensor::from_slice(grad);
    // d/dw of sum(w * g) is g.
    let loss = (&w * &target).sum(Kind::Double);
    fabric.backward(&loss).unwrap();
    (fabric, opt, vs)
}

#[test]
fn clip_gradients_by_norm_scales_to_max_norm_and_returns_the_norm() {
    let (mut fabric, mut opt, _vs) = fabric_with_grads(&[3.0, 4.0]);
    let norm = fabric
        .clip_gradients(&mut opt, GradClip::norm(1.0))
        .unwrap()
        .unwrap();
    assert!((norm - 5.0).abs() < 1e-9, "{norm}");
    let grad = opt.parameters()[0].grad();
    let clipped = grad.norm().double_value(&[]);
    assert!((clipped - 1.0).abs() < 1e-5, "{clipped}");
    // Below the limit nothing changes.
    let norm = fabric
        .clip_gradients(&mut opt, GradClip::norm(10.0))
        .unwrap()
        .unwrap();
    assert!((norm - 1.0).abs() < 1e-5);
    assert!((opt.parameters()[0].grad().norm().double_value(&[]) - 1.0).abs() < 1e-5);
}

#[test]
fn clip_gradients_by_value_clamps_each_element() {
    let (mut fabric, mut opt, _vs) = fabric_with_grads(&[3.0, -0.5, -4.0]);
    assert_eq!(
        fabric
            .clip_gradients(&mut opt, GradClip::value(1.0))
            .unwrap(),
        None
    );
    let grad: Vec<f64> = Vec::try_from(opt.parameters()[0].grad()).unwrap();
    assert_eq!(grad, vec![1.0, -0.5, -1.0]);
}

#[test]
fn clip_gradients_refuses_a_non_finite_norm_unless_told() {
    let (mut fabric, mut opt, _vs) = fabric_with_grads(&[f64::INFINITY, 1.0]);
    let err = fabric
        .clip_gradients(&mut opt, GradClip::norm(1.0))
        .unwrap_err();
    assert!(matches!(err, Error::NonFiniteNorm { .. }), "{err:?}");
    let lenient = GradClip::Norm {
        max_norm: 1.0,
        norm_type: 2.0,
        error_if_nonfinite: false,
    };
    assert!(
        fabric
            .clip_gradients(&mut opt, lenient)
            .unwrap()
            .unwrap()
            .is_infinite()
    );
    let err = fabric
        .clip_gradients(&mut opt, GradClip::value(-1.0))
        .unwrap_err();
    assert!(
        err.to_string().contains("must be finite and not negative"),
        "{err}"
    );
}

#[test]
fn backward_rejects_losses_it_cannot_differentiate() {
    let mut fabric = Fabric::builder().accelerator("cpu").build().unwrap();
    let vector = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let err = fabric.backward(&(&vector * 2)).unwrap_err().to_string();
    assert!(err.contains("one element"), "{err}");
    let constant = Tensor::from(1.0f32);
    let err = fabric.backward(&constant).unwrap_err().to_string();
    assert!(err.contains("does not require a gradient"), "{err}");
}
