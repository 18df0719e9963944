//! Crate-internal tests of failed fused steps: they give a parameter a
//! gradient of another shape through the shim, which safe code cannot.

use tch::{Device, Kind, Tensor};

use super::{AdamW, Optimizer, Sgd};
use crate::shim;

/// A zero parameter `w` of 3 elements, its optimizer from `build`, and a
/// gradient of 2 elements, which the fused kernels refuse.
fn wrong_gradient(build: impl FnOnce(Vec<(String, Tensor)>) -> Optimizer) -> (Tensor, Optimizer) {
    let w = Tensor::zeros([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let opt = build(vec![("w".into(), w.shallow_clone())]);
    let wrong = Tensor::ones([2], (Kind::Float, Device::Cpu));
    shim::set_grad(&w, Some(&wrong)).unwrap();
    (w, opt)
}

/// A gradient whose shape is not its parameter's is an error before the
/// fused kernel runs (which would read past its end), and the step count
/// does not advance.
#[test]
fn a_gradient_of_another_shape_is_an_error_and_steps_nothing() {
    let (w, mut opt) = wrong_gradient(|p| AdamW::new(0.1).build_for(p).unwrap());
    let error = opt.step().unwrap_err().to_string();
    assert!(
        error.contains(
            "the gradient of parameter 0 of the group has the sizes [2], the parameter [3]"
        ),
        "{error}"
    );
    assert_eq!(opt.state("w").unwrap()["step"].double_value(&[]), 0.0);
    assert_eq!(Vec::<f32>::try_from(&w).unwrap(), [0.0; 3]);
}

/// A first fused step that fails leaves no momentum buffer behind: the next
/// step starts the buffers afresh instead of reading memory the kernel
/// never wrote.
#[test]
fn a_failed_first_fused_step_keeps_no_momentum_buffer() {
    let (_w, mut opt) = wrong_gradient(|p| Sgd::new(0.1).momentum(0.9).build_for(p).unwrap());
    assert!(opt.step().is_err());
    assert!(opt.state("w").unwrap().is_empty());
}
