//! Lightning's argument docs, `plugins`: a cluster environment of one's own,
//! `Fabric(plugins=[MyCluster()], ...)`; and a precision plugin of one's own,
//! whose kind the attribute cannot see, checked when the `Fabric` is built.
#![deny(warnings)]

use fabric::precision::PrecisionPlugin;
use fabric::{ClusterEnvironment, Error, Fabric, Plugin, fabric};

struct MyCluster;

impl ClusterEnvironment for MyCluster {
    fn world_size(&self) -> usize {
        1
    }
    fn global_rank(&self) -> usize {
        0
    }
}

/// Keeps everything in f32.
struct Plain;

impl PrecisionPlugin for Plain {}

#[fabric(plugins = [MyCluster], accelerator = "cpu")]
fn my_cluster(fabric: &mut Fabric) -> fabric::Result<String> {
    Ok(fabric.environment_name().to_owned())
}

// A cluster environment and a precision plugin: one of each is fine.
#[fabric(plugins = [Plugin::precision(Plain), MyCluster], accelerator = "cpu")]
fn own_precision(fabric: &mut Fabric) -> fabric::Result<String> {
    Ok(fabric.precision_name().to_owned())
}

// `Plugin::precision(...)` together with `precision`: the builder finds it.
#[fabric(plugins = Plugin::precision(Plain), precision = "64-true")]
fn own_precision_and_precision(fabric: &mut Fabric) -> fabric::Result<()> {
    let _ = fabric;
    Ok(())
}

fn main() {
    assert_eq!(my_cluster().unwrap(), "MyCluster");
    assert_eq!(own_precision().unwrap(), "Plain");
    match own_precision_and_precision() {
        Err(Error::Option(error)) => assert_eq!(
            error.to_string(),
            "invalid `plugins`: both `precision` and a precision plugin were given; choose one"
        ),
        other => panic!("{:?}", other.err().map(|e| e.to_string())),
    }
}
