//! Lightning's argument docs, `num_nodes`: each example line as an attribute.
#![deny(warnings)]

use fabric::{Fabric, fabric};

// Default used by Fabric
// fabric = Fabric(num_nodes=1)
#[fabric(num_nodes = 1)]
fn one_node(fabric: &mut Fabric) -> fabric::Result<usize> {
    Ok(fabric.node_rank())
}

// Run on 8 nodes
// fabric = Fabric(num_nodes=8)
#[fabric(num_nodes = 8)]
fn eight_nodes(fabric: &mut Fabric) -> fabric::Result<usize> {
    Ok(fabric.node_rank())
}

fn main() {
    assert_eq!(one_node().unwrap(), 0);
    // Eight nodes need a cluster (and the distributed runtime); here the
    // line compiles.
    let _: fn() -> fabric::Result<usize> = eight_nodes;
}
