//! `ddp` in one process: which models a backward pass reaches, and unused
//! parameters (the several-rank cases are in `tests/ddp_models.rs`).

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::DdpStrategy;
use crate::{Error, Fabric};

/// A fabric running `ddp` in one process, and two heads set up as one model.
fn two_heads(ddp: DdpStrategy) -> (Fabric, nn::VarStore, nn::Linear, nn::Linear) {
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .strategy(ddp)
        .build()
        .unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let a = nn::linear(vs.root() / "a", 3, 1, Default::default());
    let b = nn::linear(vs.root() / "b", 3, 1, Default::default());
    let _model = fabric
        .setup_module(&mut vs, nn::func_t(|xs, _| xs.shallow_clone()))
        .unwrap();
    (fabric, vs, a, b)
}

fn xs() -> Tensor {
    Tensor::ones([2, 3], (Kind::Float, Device::Cpu))
}

#[test]
fn a_parameter_the_loss_did_not_reach_is_an_error_naming_it_and_the_option() {
    let (mut fabric, _vs, a, _b) = two_heads(DdpStrategy::new());
    let e = fabric
        .backward(&a.forward(&xs()).sum(Kind::Float))
        .unwrap_err();
    assert!(matches!(e, Error::Distributed(_)), "{e}");
    let message = e.to_string();
    assert!(
        message.contains("`b.weight` of model 1 (on this rank)"),
        "{message}"
    );
    assert!(message.contains("`b.bias` of model 1"), "{message}");
    assert!(!message.contains("`a.weight`"), "{message}");
    assert!(message.contains("find_unused_parameters"), "{message}");
    assert!(
        message.contains("ddp_find_unused_parameters_true"),
        "{message}"
    );
}

#[test]
fn with_find_unused_parameters_or_static_graph_an_unused_parameter_keeps_no_gradient() {
    for ddp in [
        DdpStrategy::new().find_unused_parameters(true),
        DdpStrategy::new().static_graph(true),
    ] {
        let (mut fabric, vs, a, _b) = two_heads(ddp);
        fabric.backward(&a.forward(&xs()).sum(Kind::Float)).unwrap();
        let grads = vs.variables();
        assert!(grads["a.weight"].grad().defined());
        assert!(!grads["b.weight"].grad().defined());
    }
}

#[test]
fn a_model_the_backward_pass_did_not_reach_is_left_alone() {
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .strategy(DdpStrategy::new())
        .build()
        .unwrap();
    let mut first = nn::VarStore::new(Device::Cpu);
    let f = nn::linear(first.root() / "f", 3, 1, Default::default());
    let mut second = nn::VarStore::new(Device::Cpu);
    let s = nn::linear(second.root() / "s", 3, 1, Default::default());
    let _f = fabric
        .setup_module(&mut first, nn::func_t(|xs, _| xs.shallow_clone()))
        .unwrap();
    let _s = fabric
        .setup_module(&mut second, nn::func_t(|xs, _| xs.shallow_clone()))
        .unwrap();
    // The second model's output detached: only the first takes part.
    let hidden = s.forward(&xs()).detach();
    fabric
        .backward(&(f.forward(&xs()) + hidden).sum(Kind::Float))
        .unwrap();
    // Then the second alone, over two backward passes without sync.
    fabric
        .no_backward_sync(true, |fabric| {
            fabric.backward(&s.forward(&xs()).sum(Kind::Float))
        })
        .unwrap();
    fabric.backward(&s.forward(&xs()).sum(Kind::Float)).unwrap();
    assert!(s.ws.grad().defined());
}

/// A panic inside `no_backward_sync(_for)` that the caller catches leaves
/// averaging as it was before the call, not silently off.
#[test]
fn a_caught_panic_inside_no_backward_sync_restores_averaging() {
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .strategy(DdpStrategy::new())
        .build()
        .unwrap();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = fabric
        .setup_module_with(&mut vs, |p| nn::linear(p / "fc", 3, 1, Default::default()))
        .unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        fabric.no_backward_sync(true, |_| panic!("in the closure"))
    }));
    let caught_for = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        fabric.no_backward_sync_for(&model, true, |_| panic!("in the closure"))
    }));
    assert!(caught.is_err() && caught_for.is_err(), "the panics go on");
    // Each setter returns the value before: both still averaging.
    assert!(fabric.strategy_mut().set_backward_sync(true));
    assert!(
        fabric
            .strategy_mut()
            .set_model_backward_sync(0, true)
            .unwrap()
    );
}
