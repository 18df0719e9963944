//! The variables of a `VarStore` in a stable order: sorted by name, the same
//! in every process and on every device (a `VarStore` keeps them in a hash
//! map).

use tch::Tensor;
use tch::nn::VarStore;

/// Every variable of `vs` with its name, sorted by name.
pub(crate) fn sorted(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    variables
}

/// The trainable variables of `vs` with their names, sorted by name.
pub(crate) fn sorted_trainable(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut variables = sorted(vs);
    variables.retain(|(_, t)| t.requires_grad());
    variables
}
