// `#[tensors(...)]` knows `skip` only; the error names it.
use fabric::Tensors;
use tch::Tensor;

#[derive(Tensors)]
struct Batch {
    xs: Tensor,
    #[tensors(ignore)]
    name: String,
}

fn main() {}
