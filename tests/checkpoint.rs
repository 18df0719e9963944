//! Checkpoints: exact resumption, Python interoperability, every class of
//! bad checkpoint, and atomicity under SIGKILL.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fabric::checkpoint::State;
use fabric::optim::{AdamW, Optimizer, Sgd};
use fabric::precision::{GradScaler, GradScalerConfig};
use fabric::{Error, Fabric, FabricOptimizer};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

// The tests that seed libtorch's generator or draw from it (initialising
// layers) hold this lock: the generator is process-wide.
use common::rng_lock;

fn fabric() -> Fabric {
    Fabric::builder()
        .accelerator("cpu")
        .progress_bar(false)
        .build()
        .unwrap()
}

fn mlp(vs: &nn::Path) -> nn::Sequential {
    nn::seq()
        .add(nn::linear(vs / "l1", 8, 16, Default::default()))
        .add_fn(|x| x.tanh())
        .add(nn::linear(vs / "l2", 16, 1, Default::default()))
}

/// A model set up with one of fabric's optimizers, initialised from `seed`.
fn setup(
    fabric: &mut Fabric,
    seed: i64,
    optimizer: fn(&nn::VarStore) -> Optimizer,
) -> (
    nn::VarStore,
    fabric::FabricModule<nn::Sequential>,
    FabricOptimizer,
) {
    tch::manual_seed(seed);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = mlp(&vs.root());
    let opt = optimizer(&vs);
    let (model, opt) = fabric.setup(&mut vs, net, opt).unwrap();
    (vs, model, opt)
}

/// Steps `from..to`, each on its own seeded batch.
fn train(
    fabric: &mut Fabric,
    model: &fabric::FabricModule<nn::Sequential>,
    opt: &mut FabricOptimizer,
    steps: std::ops::Range<u64>,
) {
    for step in steps {
        tch::manual_seed(1000 + step as i64);
        let x = Tensor::randn([32, 8], (Kind::Float, Device::Cpu));
        let y = x.sum_dim_intlist(1, true, Kind::Float).sin();
        opt.zero_grad();
        let loss = model.forward(&x).mse_loss(&y, tch::Reduction::Mean);
        fabric.backward(&loss).unwrap();
        opt.step().unwrap();
    }
}

fn snapshot(vs: &nn::VarStore) -> BTreeMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy()))
        .collect()
}

fn optimizer_snapshot(opt: &FabricOptimizer) -> BTreeMap<String, Tensor> {
    let opt = opt.optimizer().unwrap();
    let mut all = BTreeMap::new();
    for name in opt.parameter_names() {
        for (key, tensor) in opt.state(name).unwrap() {
            all.insert(format!("{name}/{key}"), tensor.copy());
        }
    }
    all
}

fn assert_identical(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>, what: &str) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: names"
    );
    for (name, tensor) in a {
        assert_eq!(tensor.kind(), b[name].kind(), "{what}: {name}");
        assert!(tensor.equal(&b[name]), "{what}: {name} differs");
    }
}

fn resume_is_bit_identical(optimizer: fn(&nn::VarStore) -> Optimizer) {
    let (n, m) = (7, 5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt");

    // N + M steps without interruption.
    let mut fabric_a = fabric();
    let (vs_a, model_a, mut opt_a) = setup(&mut fabric_a, 1, optimizer);
    train(&mut fabric_a, &model_a, &mut opt_a, 0..n + m);

    // N steps, save, drop everything.
    {
        let mut fabric_b = fabric();
        let (mut vs_b, model_b, mut opt_b) = setup(&mut fabric_b, 1, optimizer);
        train(&mut fabric_b, &model_b, &mut opt_b, 0..n);
        let mut step = n;
        fabric_b
            .save(
                &path,
                &State::new()
                    .model("model", &mut vs_b)
                    .optimizer("optimizer", &mut opt_b)
                    .value("step", &mut step),
            )
            .unwrap();
    }

    // A fresh run, initialised differently, loads and trains M more steps.
    let mut fabric_c = fabric();
    let (mut vs_c, model_c, mut opt_c) = setup(&mut fabric_c, 99, optimizer);
    let mut step = 0u64;
    let report = fabric_c
        .load(
            &path,
            &mut State::new()
                .model("model", &mut vs_c)
                .optimizer("optimizer", &mut opt_c)
                .value("step", &mut step),
        )
        .unwrap();
    assert!(report.is_complete(), "{report}");
    assert_eq!(step, n);
    train(&mut fabric_c, &model_c, &mut opt_c, step..n + m);

    assert_identical(&snapshot(&vs_a), &snapshot(&vs_c), "parameters");
    assert_identical(
        &optimizer_snapshot(&opt_a),
        &optimizer_snapshot(&opt_c),
        "optimizer state",
    );
}

#[test]
fn resuming_sgd_with_momentum_is_bit_identical_to_not_stopping() {
    let _rng = rng_lock();
    resume_is_bit_identical(|vs| {
        Sgd::new(0.05)
            .momentum(0.9)
            .nesterov(true)
            .weight_decay(1e-3)
            .build(vs)
            .unwrap()
    });
}

#[test]
fn resuming_adamw_is_bit_identical_to_not_stopping() {
    let _rng = rng_lock();
    resume_is_bit_identical(|vs| AdamW::new(1e-2).amsgrad(true).build(vs).unwrap());
}

#[test]
fn a_saved_model_loads_in_python_with_safetensors() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt");
    let mut fabric = fabric();
    let (mut vs, _model, mut opt) = setup(&mut fabric, 3, |vs| Sgd::new(0.1).build(vs).unwrap());
    // A non-trainable buffer and a 64-bit tensor are saved too.
    let _buffer = vs
        .root()
        .var_copy("running_count", &Tensor::from_slice(&[3i64, 4]));
    fabric
        .save(
            &path,
            &State::new()
                .model("model", &mut vs)
                .optimizer("optimizer", &mut opt),
        )
        .unwrap();
    let code = "import json, sys\n\
from safetensors.torch import load_file\n\
tensors = load_file(sys.argv[1])\n\
print(json.dumps({k: [str(v.dtype), list(v.shape), v.flatten().tolist()] for k, v in tensors.items()}))";
    let output = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"))
        .args(["-c", code])
        .arg(path.join("model.safetensors"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let loaded: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let variables = vs.variables();
    assert_eq!(loaded.as_object().unwrap().len(), variables.len());
    for (name, tensor) in variables {
        let entry = &loaded[&name];
        let dtype = match tensor.kind() {
            Kind::Float => "torch.float32",
            Kind::Int64 => "torch.int64",
            other => panic!("{other:?}"),
        };
        assert_eq!(entry[0], dtype, "{name}");
        assert_eq!(entry[1], serde_json::json!(tensor.size()), "{name}");
        let ours: Vec<f64> =
            Vec::<f64>::try_from(tensor.to_kind(Kind::Double).flatten(0, -1)).unwrap();
        let theirs: Vec<f64> = entry[2]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(ours, theirs, "{name}");
    }
    // The checkpoint's files, as documented.
    let mut files: Vec<String> = std::fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["meta.json", "model.safetensors", "optimizer.safetensors"]
    );
}

/// A checkpoint of the MLP with an SGD optimizer that has stepped, plus a
/// value; returns its path.
fn good_checkpoint(dir: &Path) -> PathBuf {
    let path = dir.join("good");
    let mut fabric = fabric();
    let (mut vs, model, mut opt) = setup(&mut fabric, 5, |vs| {
        Sgd::new(0.1).momentum(0.9).build(vs).unwrap()
    });
    train(&mut fabric, &model, &mut opt, 0..2);
    let mut step = 2u64;
    fabric
        .save(
            &path,
            &State::new()
                .model("model", &mut vs)
                .optimizer("optimizer", &mut opt)
                .value("step", &mut step),
        )
        .unwrap();
    path
}

/// Loads `path` into a fresh state shaped by `net`, and checks that the load
/// fails with an error containing `expected` and that nothing changed.
fn assert_rejected(
    path: &Path,
    net: fn(&nn::Path) -> nn::Sequential,
    kind: Kind,
    expected: &str,
) -> Error {
    let precision = if kind == Kind::Double {
        "64-true"
    } else {
        "32-true"
    };
    let mut fabric = Fabric::builder()
        .accelerator("cpu")
        .precision(precision)
        .build()
        .unwrap();
    tch::manual_seed(42);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = net(&vs.root());
    let opt = Sgd::new(0.1).momentum(0.9).build(&vs).unwrap();
    let (model, mut opt) = fabric.setup(&mut vs, model, opt).unwrap();
    // Give the optimizer some state of its own.
    let x = Tensor::ones([2, 8], (kind, Device::Cpu));
    opt.zero_grad();
    fabric.backward(&model.forward(&x).sum(kind)).unwrap();
    opt.step().unwrap();
    let (before, state_before) = (snapshot(&vs), optimizer_snapshot(&opt));
    let mut step = 7u64;
    let err = fabric
        .load(
            path,
            &mut State::new()
                .model("model", &mut vs)
                .optimizer("optimizer", &mut opt)
                .value("step", &mut step),
        )
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(expected),
        "expected `{expected}` in: {message}"
    );
    assert_identical(&before, &snapshot(&vs), "parameters after a rejected load");
    assert_identical(
        &state_before,
        &optimizer_snapshot(&opt),
        "optimizer state after a rejected load",
    );
    assert_eq!(step, 7, "values after a rejected load");
    err
}

fn wider(vs: &nn::Path) -> nn::Sequential {
    nn::seq()
        .add(nn::linear(vs / "l1", 8, 32, Default::default()))
        .add_fn(|x| x.tanh())
        .add(nn::linear(vs / "l2", 32, 1, Default::default()))
}

fn deeper(vs: &nn::Path) -> nn::Sequential {
    mlp(vs).add(nn::linear(vs / "l3", 1, 1, Default::default()))
}

fn shallower(vs: &nn::Path) -> nn::Sequential {
    nn::seq().add(nn::linear(vs / "l1", 8, 16, Default::default()))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn every_bad_checkpoint_is_a_clear_error_and_changes_nothing() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let good = good_checkpoint(dir.path());

    // Names, shapes and dtypes that do not fit.
    let err = assert_rejected(
        &good,
        deeper,
        Kind::Float,
        "missing in the checkpoint: model: l3.weight",
    );
    assert!(matches!(err, Error::CheckpointMismatch { .. }));
    assert_rejected(
        &good,
        shallower,
        Kind::Float,
        "not in the state: model: l2.weight",
    );
    assert_rejected(
        &good,
        wider,
        Kind::Float,
        "model: `l1.weight` is Float [16, 8] in the checkpoint and Float [32, 8] in the model",
    );
    assert_rejected(
        &good,
        mlp,
        Kind::Double,
        "model: `l1.bias` is Float [16] in the checkpoint and Double [16] in the model",
    );

    // A truncated tensor file.
    let truncated = dir.path().join("truncated");
    copy_dir(&good, &truncated);
    let file = truncated.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = assert_rejected(&truncated, mlp, Kind::Float, "model.safetensors has");
    assert!(err.to_string().contains("truncated"), "{err}");
    assert!(matches!(err, Error::Checkpoint { .. }));

    // A damaged one, same size.
    let damaged = dir.path().join("damaged");
    copy_dir(&good, &damaged);
    let file = damaged.join("optimizer.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    assert_rejected(&damaged, mlp, Kind::Float, "does not match its checksum");

    // A truncated meta.json.
    let bad_meta = dir.path().join("bad-meta");
    copy_dir(&good, &bad_meta);
    let meta = std::fs::read(bad_meta.join("meta.json")).unwrap();
    std::fs::write(bad_meta.join("meta.json"), &meta[..meta.len() / 2]).unwrap();
    assert_rejected(&bad_meta, mlp, Kind::Float, "meta.json is not valid JSON");

    // Foreign files: a plain file, a directory of something else, another
    // tool's JSON, a path that does not exist.
    let plain = dir.path().join("model.pt");
    std::fs::write(&plain, b"PK\x03\x04 a torch.save zip").unwrap();
    assert_rejected(
        &plain,
        mlp,
        Kind::Float,
        "is a file, not a fabric checkpoint",
    );
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    std::fs::write(other_dir.join("weights.bin"), b"...").unwrap();
    assert_rejected(&other_dir, mlp, Kind::Float, "cannot read meta.json");
    let other_json = dir.path().join("other-json");
    copy_dir(&good, &other_json);
    std::fs::write(other_json.join("meta.json"), br#"{"format": "hf-config"}"#).unwrap();
    assert_rejected(&other_json, mlp, Kind::Float, "not a fabric checkpoint");
    assert_rejected(
        &dir.path().join("nowhere"),
        mlp,
        Kind::Float,
        "does not exist",
    );

    // A safetensors file of another model under the right name, with a
    // meta.json updated to match it: caught by the name check.
    let swapped = dir.path().join("swapped");
    copy_dir(&good, &swapped);
    let other = Tensor::zeros([3], (Kind::Float, Device::Cpu));
    Tensor::write_safetensors(
        &[("encoder.weight", &other)],
        swapped.join("model.safetensors"),
    )
    .unwrap();
    let bytes = std::fs::read(swapped.join("model.safetensors")).unwrap();
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(swapped.join("meta.json")).unwrap()).unwrap();
    meta["entries"]["model"]["bytes"] = bytes.len().into();
    meta["entries"]["model"]["crc32c"] = crc32c_of(&bytes).into();
    std::fs::write(swapped.join("meta.json"), meta.to_string()).unwrap();
    assert_rejected(
        &swapped,
        mlp,
        Kind::Float,
        "not in the state: model: encoder.weight",
    );

    // Optimizer settings no optimizer accepts, in an edited meta.json.
    let edited = dir.path().join("edited");
    copy_dir(&good, &edited);
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(edited.join("meta.json")).unwrap()).unwrap();
    meta["entries"]["optimizer"]["algorithm"]["lr"] = (-1.0).into();
    std::fs::write(edited.join("meta.json"), meta.to_string()).unwrap();
    assert_rejected(&edited, mlp, Kind::Float, "optimizer `optimizer`: ");
}

/// CRC-32C (Castagnoli), bitwise, for the test's own use.
fn crc32c_of(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn state_that_does_not_fit_the_checkpoint_is_an_error_listing_every_problem() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let good = good_checkpoint(dir.path());
    let mut fabric = fabric();
    let (mut vs, _model, mut opt) = setup(&mut fabric, 1, |vs| AdamW::new(0.1).build(vs).unwrap());
    let mut step = String::from("seven");
    let mut missing = 0u8;
    let err = fabric
        .load(
            &good,
            &mut State::new()
                .model("model", &mut vs)
                .optimizer("optimizer", &mut opt)
                .value("step", &mut step)
                .value("epoch", &mut missing),
        )
        .unwrap_err();
    let Error::CheckpointMismatch { problems, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(problems.len(), 3, "{problems:#?}");
    let text = err.to_string();
    assert!(
        text.contains("optimizer `optimizer` is sgd in the checkpoint and adamw in the state"),
        "{text}"
    );
    assert!(
        text.contains("value `step`: the saved 2 does not fit"),
        "{text}"
    );
    assert!(text.contains("missing in the checkpoint: epoch"), "{text}");
    assert_eq!(step, "seven");
}

#[test]
fn tch_optimizers_cannot_be_checkpointed() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let mut fabric = fabric();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = mlp(&vs.root());
    let opt = nn::Adam::default().build(&vs, 1e-3).unwrap();
    let (_model, mut opt) = fabric.setup(&mut vs, net, opt).unwrap();
    let err = fabric
        .save(
            dir.path().join("c"),
            &State::new()
                .model("model", &mut vs)
                .optimizer("opt", &mut opt),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("build it with `fabric::optim`"), "{err}");
    assert!(!dir.path().join("c").exists());
    let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(leftovers, 0, "the temporary directory is removed");
}

#[test]
fn non_strict_loading_takes_what_fits_and_reports_the_rest() {
    let _rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    let good = good_checkpoint(dir.path());
    let saved: BTreeMap<String, Tensor> = Tensor::read_safetensors(good.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let mut fabric = fabric();
    tch::manual_seed(8);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = nn::seq()
        .add(nn::linear(vs.root() / "l1", 8, 16, Default::default()))
        .add(nn::linear(vs.root() / "l2", 16, 4, Default::default()))
        .add(nn::linear(vs.root() / "head", 4, 1, Default::default()));
    let opt = Sgd::new(0.1).momentum(0.9).build(&vs).unwrap();
    let (_model, mut opt) = fabric.setup(&mut vs, net, opt).unwrap();
    let l2_before = vs.variables()["l2.weight"].copy();
    let report = fabric
        .load_with(
            &good,
            &mut State::new()
                .model("model", &mut vs)
                .optimizer("optimizer", &mut opt),
            false,
        )
        .unwrap();
    let variables = vs.variables();
    assert!(variables["l1.weight"].equal(&saved["l1.weight"]));
    assert!(variables["l1.bias"].equal(&saved["l1.bias"]));
    assert!(
        variables["l2.weight"].equal(&l2_before),
        "a wrong shape is not loaded"
    );
    assert!(!report.is_complete());
    assert!(
        report.missing.contains(&"model: head.weight".to_owned()),
        "{report:?}"
    );
    assert!(
        report.missing.contains(&"optimizer: head.bias".to_owned()),
        "{report:?}"
    );
    assert_eq!(report.mismatched.len(), 4, "{report:?}");
    assert!(report.unexpected.is_empty(), "{report:?}");
    // Values of the checkpoint that were not asked for come back.
    assert_eq!(report.remainder["step"], 2);
    // The loaded optimizer state is the saved one.
    let state = opt.optimizer().unwrap().state("l1.weight").unwrap();
    assert_eq!(state["momentum_buffer"].size(), [16, 8]);
}

#[test]
fn the_loss_scaler_and_values_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scaler");
    let mut fabric = fabric();
    let config = GradScalerConfig {
        init_scale: 1024.0,
        growth_interval: 3,
        ..Default::default()
    };
    let scaler = Arc::new(Mutex::new(GradScaler::new(config, Device::Cpu).unwrap()));
    let found_inf = Tensor::zeros([1], (Kind::Float, Device::Cpu));
    for _ in 0..4 {
        scaler.lock().unwrap().update(&found_inf).unwrap();
    }
    let saved = scaler.lock().unwrap().state();
    assert_eq!(saved.scale, 2048.0);
    assert_eq!(saved.growth_tracker, 1);

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Progress {
        epoch: u32,
        best: Option<f64>,
        history: Vec<f64>,
    }
    let mut progress = Progress {
        epoch: 3,
        best: Some(0.25),
        history: vec![1.0, 0.5],
    };
    fabric
        .save(
            &path,
            &State::new()
                .grad_scaler("scaler", Some(Arc::clone(&scaler)))
                .grad_scaler("absent", None)
                .value("progress", &mut progress),
        )
        .unwrap();

    let other = Arc::new(Mutex::new(
        GradScaler::new(GradScalerConfig::default(), Device::Cpu).unwrap(),
    ));
    let mut restored = Progress {
        epoch: 0,
        best: None,
        history: vec![],
    };
    fabric
        .load(
            &path,
            &mut State::new()
                .grad_scaler("scaler", Some(Arc::clone(&other)))
                .value("progress", &mut restored),
        )
        .unwrap();
    assert_eq!(other.lock().unwrap().state(), saved);
    assert_eq!(restored, progress);
}

#[test]
fn saving_replaces_a_checkpoint_but_never_a_foreign_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/ckpt");
    let mut fabric = fabric();
    for value in [1u32, 2] {
        let mut v = value;
        fabric
            .save(&path, &State::new().value("v", &mut v))
            .unwrap();
        let mut read = 0u32;
        fabric
            .load(&path, &mut State::new().value("v", &mut read))
            .unwrap();
        assert_eq!(read, value);
    }
    let entries: Vec<_> = std::fs::read_dir(dir.path().join("nested"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["ckpt"], "no temporary entry is left");

    let foreign = dir.path().join("notes.txt");
    std::fs::write(&foreign, "keep me").unwrap();
    let mut v = 1u32;
    let err = fabric
        .save(&foreign, &State::new().value("v", &mut v))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is not a fabric checkpoint; it is left as it is"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&foreign).unwrap(), "keep me");

    let err = fabric
        .save(&path, &State::new().value("a/b", &mut v))
        .unwrap_err()
        .to_string();
    assert!(err.contains("entry name `a/b` is not allowed"), "{err}");
    let mut w = 2u32;
    let err = fabric
        .save(&path, &State::new().value("v", &mut v).value("v", &mut w))
        .unwrap_err()
        .to_string();
    assert!(err.contains("given twice"), "{err}");
}

const KILL_CHILD: &str = "FABRIC_CHECKPOINT_KILL_CHILD";

/// Sets every parameter and momentum buffer to `k`: a save of this state
/// is consistent when all its elements and its `step` value are equal.
fn big_state_filled(vs: &mut nn::VarStore, opt: &Optimizer, k: f64) {
    tch::no_grad(|| {
        for (_, mut t) in vs.variables() {
            let _ = t.fill_(k);
        }
        for name in opt.parameter_names() {
            for tensor in opt.state(name).unwrap().values() {
                let _ = tensor.shallow_clone().fill_(k);
            }
        }
    });
}

/// The child: saves a large state in a loop, each save with all values k.
fn kill_child(dir: &Path) {
    let mut fabric = fabric();
    let mut vs = nn::VarStore::new(Device::Cpu);
    for i in 0..3 {
        let _ = vs
            .root()
            .var(&format!("w{i}"), &[1024, 1024 * 4], nn::Init::Const(0.0));
    }
    let mut opt = Sgd::new(0.1).momentum(0.9).build(&vs).unwrap();
    // One step so that every parameter has a momentum buffer.
    let loss = vs
        .trainable_variables()
        .iter()
        .map(|t| t.sum(Kind::Float))
        .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, b| a + b);
    loss.backward();
    opt.step().unwrap();
    for k in 1.. {
        big_state_filled(&mut vs, &opt, k as f64);
        let mut step = k as u64;
        fabric
            .save(
                dir.join("ckpt"),
                &State::new()
                    .model("model", &mut vs)
                    .optimizer("optimizer", &mut opt)
                    .value("step", &mut step),
            )
            .unwrap();
        println!("saved {k}");
    }
}

#[test]
fn a_process_killed_while_saving_leaves_the_previous_checkpoint() {
    if let Some(dir) = std::env::var_os(KILL_CHILD) {
        kill_child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut killed_mid_save = 0;
    for round in 0..4u64 {
        let test = "a_process_killed_while_saving_leaves_the_previous_checkpoint";
        let scenario = common::Scenario::direct(test).env(KILL_CHILD, dir.path());
        let mut child = scenario
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Wait for one complete save of this round...
        loop {
            let line = lines.next().expect("the child saves").unwrap();
            if line.starts_with("saved") {
                break;
            }
        }
        // ... then kill it as soon as (and a little after) the next save's
        // temporary directory appears.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !has_temporary(dir.path()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_millis(round * 15));
        let mid_save = has_temporary(dir.path());
        child.kill().unwrap();
        child.wait().unwrap();
        killed_mid_save += usize::from(mid_save);

        // Under the final name: a complete checkpoint, all of one save.
        let path = dir.path().join("ckpt");
        let mut files: Vec<String> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(
            files,
            ["meta.json", "model.safetensors", "optimizer.safetensors"]
        );
        let mut vs = nn::VarStore::new(Device::Cpu);
        for i in 0..3 {
            let _ = vs
                .root()
                .var(&format!("w{i}"), &[1024, 1024 * 4], nn::Init::Const(-1.0));
        }
        let mut opt = Sgd::new(0.1).momentum(0.9).build(&vs).unwrap();
        let mut step = 0u64;
        fabric()
            .load(
                &path,
                &mut State::new()
                    .model("model", &mut vs)
                    .optimizer("optimizer", &mut opt)
                    .value("step", &mut step),
            )
            .unwrap();
        assert!(step >= 1);
        let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        for name in opt.parameter_names() {
            for (key, tensor) in opt.state(name).unwrap() {
                tensors.push((format!("{name}/{key}"), tensor.shallow_clone()));
            }
        }
        assert_eq!(tensors.len(), 6);
        for (name, t) in tensors {
            let (min, max) = (t.min().double_value(&[]), t.max().double_value(&[]));
            assert_eq!(
                (min, max),
                (step as f64, step as f64),
                "{name} is of save {step}"
            );
        }
    }
    assert!(
        killed_mid_save >= 2,
        "only {killed_mid_save} kills landed mid-save"
    );
    // The next save removes what the killed ones left.
    let mut v = 0u8;
    fabric()
        .save(dir.path().join("ckpt"), &State::new().value("v", &mut v))
        .unwrap();
    assert!(!has_temporary(dir.path()));
}

fn has_temporary(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".ckpt.tmp-")
    })
}

/// Sets (`+i`) or clears (`-i`) the immutable attribute of `file`; `false`
/// where `chattr` or the file system cannot (then the test has nothing to
/// check: permission bits do not stop root, the immutable attribute does).
fn chattr(flag: &str, file: &Path) -> bool {
    Command::new("chattr")
        .arg(flag)
        .arg(file)
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_previous_checkpoint_that_cannot_be_deleted_is_left_and_later_saves_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt");
    let mut fabric = fabric();
    let save = |fabric: &mut Fabric, value: u32| {
        let mut v = value;
        fabric.save(&path, &State::new().value("v", &mut v))
    };
    let load = |fabric: &mut Fabric| {
        let mut v = 0u32;
        fabric
            .load(&path, &mut State::new().value("v", &mut v))
            .map(|_| v)
    };
    save(&mut fabric, 1).unwrap();
    let immutable = path.join("meta.json");
    if !chattr("+i", &immutable) {
        eprintln!("skipped: `chattr +i` is not available here");
        return;
    }
    let saved = save(&mut fabric, 2);
    // Find the old copy, wherever it was left, and make it deletable again.
    let left: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p != &path)
        .collect();
    let unlock = || {
        for p in left.iter().chain([&path]) {
            chattr("-i", &p.join("meta.json"));
        }
    };
    if let Err(e) = saved {
        unlock();
        panic!("the new checkpoint is in place, so the save succeeded: {e}");
    }
    let later = save(&mut fabric, 3);
    let loaded = load(&mut fabric);
    unlock();
    later.expect("a later save works although the old copy is still there");
    assert_eq!(loaded.unwrap(), 3);
    assert_eq!(left.len(), 1, "the old copy is left beside: {left:?}");
    assert!(has_temporary(dir.path()));

    save(&mut fabric, 4).unwrap();
    assert_eq!(load(&mut fabric).unwrap(), 4);
    assert!(!has_temporary(dir.path()), "deletable again, it is deleted");
}
