//! Any forward signature: a model of two inputs (and a plain value) and two
//! outputs, set up in every precision on the CPU and under simulated `dp`
//! (`fabric::testing::simulate_dp_on_cpu`, see tests/dp.rs).

mod common;

use std::sync::{Arc, Mutex};

use fabric::precision::autocast_state;
use fabric::{Fabric, FabricBuilder, FabricModule, Forward, Tensors};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// What the model saw in one call: the dtypes of its two tensor inputs,
/// whether autocast was on, and the dtype its linear layer (a matrix
/// product) returned.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Seen {
    x: Kind,
    mask: Kind,
    autocast: bool,
    matmul: Kind,
    scale: f64,
    train: bool,
}

/// Logits and a per-row auxiliary score from features `x` and an integer
/// 0/1 `mask`, scaled by a plain `f64`.
struct TwoHeads {
    fc: nn::Linear,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Forward<(Tensor, Tensor, f64)> for TwoHeads {
    type Output = (Tensor, Tensor);

    fn call(&self, (x, mask, scale): (Tensor, Tensor, f64), train: bool) -> (Tensor, Tensor) {
        let logits = self.fc.forward(&x) * scale;
        self.seen.lock().unwrap().push(Seen {
            x: x.kind(),
            mask: mask.kind(),
            autocast: autocast_state(Device::Cpu).unwrap().0,
            matmul: logits.kind(),
            scale,
            train,
        });
        let aux = logits.tanh().sum_dim_intlist(1, false, None) * mask.to_kind(logits.kind());
        (logits, aux)
    }
}

/// A fabric of `builder` and a model built by `build`, set up with it
/// (`setup_module_with`: under `dp`, `build` makes each replica).
fn set_up<M>(
    builder: FabricBuilder,
    build: impl Fn(&nn::Path) -> M,
) -> (Fabric, nn::VarStore, FabricModule<M>) {
    let mut fabric = builder.build().unwrap();
    let (vs, model) = set_up_in(&mut fabric, build);
    (fabric, vs, model)
}

/// A model built by `build` set up with `fabric`.
fn set_up_in<M>(
    fabric: &mut Fabric,
    build: impl Fn(&nn::Path) -> M,
) -> (nn::VarStore, FabricModule<M>) {
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = fabric.setup_module_with(&mut vs, build).unwrap();
    (vs, model)
}

/// [`TwoHeads`] set up with `fabric`, and what its calls (one per replica
/// under `dp`) see.
fn two_heads(fabric: &mut Fabric) -> (nn::VarStore, FabricModule<TwoHeads>, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (vs, model) = set_up_in(fabric, |p| TwoHeads {
        fc: nn::linear(p / "fc", 4, 3, Default::default()),
        seen: Arc::clone(&seen),
    });
    (vs, model, seen)
}

fn builder(precision: &str) -> FabricBuilder {
    Fabric::builder().accelerator("cpu").precision(precision)
}

fn dp(precision: &str, replicas: usize) -> FabricBuilder {
    fabric::testing::simulate_dp_on_cpu(Fabric::builder().strategy("dp"), replicas)
        .precision(precision)
}

/// (precision, what the model receives and its matmul returns, whether
/// autocast is on, what comes back)
const PRECISIONS: [(&str, Kind, bool, Kind); 5] = [
    ("32-true", Kind::Float, false, Kind::Float),
    ("64-true", Kind::Double, false, Kind::Double),
    ("bf16-true", Kind::BFloat16, false, Kind::Float),
    ("16-true", Kind::Half, false, Kind::Float),
    ("bf16-mixed", Kind::BFloat16, true, Kind::Float),
];

struct Run {
    outputs: (Tensor, Tensor),
    grads: Vec<(String, Tensor)>,
    seen: Vec<Seen>,
    /// The unwrapped model on the same arguments, cast and autocast by hand.
    by_hand: (Tensor, Tensor),
}

fn inputs(rows: i64) -> (Tensor, Tensor) {
    let x = Tensor::randn([rows, 4], (Kind::Float, Device::Cpu));
    let mask = Tensor::from_slice(&(0..rows).map(|i| (i % 3 != 0) as i64).collect::<Vec<_>>());
    (x, mask)
}

fn run(builder: FabricBuilder, rows: i64, input: Kind, autocast: bool) -> Run {
    let mut fabric = builder.build().unwrap();
    tch::manual_seed(3);
    let (vs, model, seen) = two_heads(&mut fabric);
    // Building the replicas under `dp` draws from the generator: seed again.
    tch::manual_seed(4);
    let (x, mask) = inputs(rows);
    let (logits, aux) = model.forward((&x, &mask, 0.5));
    let loss = logits.square().mean(Kind::Float) + aux.mean(Kind::Float);
    fabric.backward(&loss).unwrap();
    let mut grads: Vec<_> = vs
        .variables()
        .into_iter()
        .map(|(name, v)| (name, v.grad().to_kind(Kind::Double)))
        .collect();
    grads.sort_by(|a, b| a.0.cmp(&b.0));
    let seen_by_forward = seen.lock().unwrap().clone();
    let by_hand = tch::no_grad(|| {
        let _autocast = autocast
            .then(|| fabric::precision::AutocastGuard::new(Device::Cpu, Kind::BFloat16).unwrap());
        model
            .inner()
            .call((x.to_kind(input), mask.shallow_clone(), 0.5), true)
    });
    Run {
        outputs: (logits, aux),
        grads,
        seen: seen_by_forward,
        by_hand,
    }
}

#[test]
fn a_two_input_two_output_model_runs_in_every_precision() {
    let _rng = common::rng_lock();
    for (precision, input, autocast, output) in PRECISIONS {
        let run = run(builder(precision), 6, input, autocast);
        assert_eq!(
            run.seen,
            [Seen {
                x: input,
                mask: Kind::Int64,
                autocast,
                matmul: input,
                scale: 0.5,
                train: true,
            }],
            "{precision}: floating inputs cast, integer ones untouched, autocast as the precision says"
        );
        let (logits, aux) = &run.outputs;
        assert_eq!((logits.kind(), aux.kind()), (output, output), "{precision}");
        assert_eq!(
            (logits.size(), aux.size()),
            (vec![6, 3], vec![6]),
            "{precision}"
        );
        // The same values as the unwrapped model on the cast inputs.
        assert!(
            logits.equal(&run.by_hand.0.to_kind(output))
                && aux.equal(&run.by_hand.1.to_kind(output)),
            "{precision}: {logits} {aux} vs {:?}",
            run.by_hand
        );
        assert!(run.grads.iter().all(|(_, g)| g.defined()), "{precision}");
    }
}

#[test]
fn a_two_input_two_output_model_under_dp_equals_one_device() {
    let _rng = common::rng_lock();
    for (precision, input, autocast, output) in PRECISIONS {
        // 7 rows over 3 devices: chunks of 3, 3 and 1.
        let single = run(builder(precision), 7, input, autocast);
        let split = run(dp(precision, 3), 7, input, autocast);
        assert_eq!(split.seen.len(), 3, "{precision}: one call per device");
        for seen in &split.seen {
            assert_eq!(
                (seen.x, seen.mask, seen.autocast, seen.matmul, seen.scale),
                (input, Kind::Int64, autocast, input, 0.5),
                "{precision}: every replica gets the precision and the plain argument"
            );
        }
        let tolerance = match input {
            Kind::Double => 1e-12,
            Kind::Float => 1e-6,
            _ => 2e-2,
        };
        let (logits, aux) = &split.outputs;
        assert_eq!((logits.kind(), aux.kind()), (output, output), "{precision}");
        assert_eq!(
            (logits.size(), aux.size()),
            (vec![7, 3], vec![7]),
            "{precision}"
        );
        assert!(
            logits.allclose(&single.outputs.0, tolerance, tolerance, false)
                && aux.allclose(&single.outputs.1, tolerance, tolerance, false),
            "{precision}: the gathered outputs equal one device's"
        );
        assert_eq!(split.grads.len(), single.grads.len());
        for ((name, a), (_, b)) in split.grads.iter().zip(&single.grads) {
            assert!(
                a.allclose(b, tolerance, tolerance, false),
                "{precision} {name}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn dp_rejects_tensor_arguments_of_different_batch_sizes() {
    let _rng = common::rng_lock();
    let mut fabric = dp("64-true", 2).build().unwrap();
    let (_vs, model, seen) = two_heads(&mut fabric);
    let (x, _) = inputs(6);
    let (_, mask) = inputs(5);
    let err = model
        .f_forward_t((&x, &mask, 1.0), true)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tensor 0 (counting from 0, in argument order) has 6 rows, tensor 1 has 5"),
        "{err}"
    );
    assert!(seen.lock().unwrap().is_empty(), "the model did not run");
}

/// A struct of tensors in and out, with a plain field.
struct Batch {
    x: Tensor,
    ids: Tensor,
    tag: &'static str,
}

impl Tensors for Batch {
    type Owned = Batch;

    fn map_tensors(
        &self,
        f: &mut dyn FnMut(&Tensor) -> fabric::Result<Tensor>,
    ) -> fabric::Result<Batch> {
        Ok(Batch {
            x: f(&self.x)?,
            ids: f(&self.ids)?,
            tag: self.tag,
        })
    }
}

struct Doubler;

impl Forward<Batch> for Doubler {
    type Output = Batch;

    fn call(&self, batch: Batch, _train: bool) -> Batch {
        assert_eq!(batch.x.kind(), Kind::BFloat16);
        assert_eq!(batch.ids.kind(), Kind::Int64);
        Batch {
            x: &batch.x * 2,
            ids: batch.ids + 1,
            tag: batch.tag,
        }
    }
}

#[test]
fn a_struct_of_tensors_goes_in_and_out() {
    let _rng = common::rng_lock();
    for builder in [builder("bf16-true"), dp("bf16-true", 2)] {
        let (_fabric, _vs, model) = set_up(builder, |_| Doubler);
        let batch = Batch {
            x: Tensor::from_slice(&[1.0f64, 2.0, 3.0]),
            ids: Tensor::from_slice(&[4i64, 5, 6]),
            tag: "train",
        };
        let out = model.forward(&batch);
        assert_eq!(out.tag, "train");
        assert_eq!(out.x.kind(), Kind::Float, "16-bit outputs come back as f32");
        assert!(out.x.equal(&Tensor::from_slice(&[2.0f32, 4.0, 6.0])));
        assert!(out.ids.equal(&Tensor::from_slice(&[5i64, 6, 7])));
    }
}

#[test]
fn forward_with_runs_another_method_with_the_precision() {
    let _rng = common::rng_lock();
    let (_fabric, _vs, model) = set_up(builder("bf16-mixed"), |p| {
        nn::linear(p, 4, 3, Default::default())
    });
    let x = Tensor::randn([2, 4], (Kind::Float, Device::Cpu));
    let (inside, autocast) = model.forward_with(&x, |linear, x| {
        let ys = linear.forward(&x);
        (ys.kind(), autocast_state(Device::Cpu).unwrap().0)
    });
    assert_eq!((inside, autocast), (Kind::BFloat16, true));
    // A tch model still takes one tensor, and is still a tch model.
    assert_eq!(model.forward(&x).kind(), Kind::Float);
    assert_eq!(x.apply_t(&model, false).kind(), Kind::Float);
}

/// A precision plugin that records the dtypes it is asked to convert.
struct Recording(Arc<Mutex<Vec<Kind>>>);

impl fabric::precision::PrecisionPlugin for Recording {
    fn convert_input(&self, xs: &Tensor) -> Tensor {
        self.0.lock().unwrap().push(xs.kind());
        xs.to_kind(Kind::Float)
    }
}

#[test]
fn a_precision_plugin_converts_only_floating_point_arguments() {
    let _rng = common::rng_lock();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .plugin(fabric::Plugin::precision(Recording(Arc::clone(&asked))))
        .build()
        .unwrap();
    let (_vs, model, seen) = two_heads(&mut fabric);
    let (x, mask) = inputs(4);
    let _ = model.forward((&x.to_kind(Kind::Double), &mask, 1.0));
    assert_eq!(
        *asked.lock().unwrap(),
        [Kind::Double],
        "the mask is not converted"
    );
    let seen = seen.lock().unwrap();
    assert_eq!((seen[0].x, seen[0].mask), (Kind::Float, Kind::Int64));
}

/// Derived: named fields, a skipped field, a nested collection, generics.
#[derive(Tensors)]
struct Derived<T> {
    x: Tensor,
    extra: Option<(Tensor, Vec<Tensor>)>,
    label: T,
    #[tensors(skip)]
    note: std::rc::Rc<String>,
}

#[derive(Tensors)]
enum Head {
    Logits(Tensor),
    Both { logits: Tensor, ids: Tensor },
    Nothing,
}

#[test]
fn derived_tensors_traverse_every_field_in_order() {
    let derived = Derived {
        x: Tensor::from(1.0f64),
        extra: Some((
            Tensor::from(2.0f64),
            vec![Tensor::from(3i64), Tensor::from(4.0f64)],
        )),
        label: 7u8,
        note: std::rc::Rc::new("kept".into()),
    };
    let mut order = Vec::new();
    derived.for_each_tensor(&mut |t| order.push(t.double_value(&[])));
    assert_eq!(order, [1.0, 2.0, 3.0, 4.0]);
    let mapped = derived.map_tensors(&mut |t| Ok(t * 10)).unwrap();
    assert_eq!(mapped.x.double_value(&[]), 10.0);
    let (a, rest) = mapped.extra.unwrap();
    assert_eq!(
        (a.double_value(&[]), rest[1].double_value(&[])),
        (20.0, 40.0)
    );
    assert_eq!((mapped.label, mapped.note.as_str()), (7, "kept"));

    for (head, expected) in [
        (Head::Logits(Tensor::from(1.0f64)), vec![1.0]),
        (
            Head::Both {
                logits: Tensor::from(1.0f64),
                ids: Tensor::from(2i64),
            },
            vec![1.0, 2.0],
        ),
        (Head::Nothing, vec![]),
    ] {
        let mut seen = Vec::new();
        head.map_tensors(&mut |t| Ok(t + 1))
            .unwrap()
            .for_each_tensor(&mut |t| seen.push(t.double_value(&[]) - 1.0));
        assert_eq!(seen, expected);
    }
}

/// A derived struct through a set-up model under `dp`.
#[derive(Tensors)]
struct Pair {
    features: Tensor,
    ids: Tensor,
}

struct Echo;

impl Forward<Pair> for Echo {
    type Output = Pair;

    fn call(&self, pair: Pair, _train: bool) -> Pair {
        Pair {
            features: pair.features * 3,
            ids: pair.ids,
        }
    }
}

#[test]
fn a_derived_struct_goes_through_dp() {
    let _rng = common::rng_lock();
    let (_fabric, _vs, model) = set_up(dp("bf16-mixed", 3), |_| Echo);
    let pair = Pair {
        features: Tensor::arange(5, (Kind::Float, Device::Cpu)),
        ids: Tensor::arange(5, (Kind::Int64, Device::Cpu)),
    };
    let out = model.forward(&pair);
    assert!(
        out.features
            .equal(&(Tensor::arange(5, (Kind::Float, Device::Cpu)) * 3))
    );
    assert!(out.ids.equal(&pair.ids));
}
