//! scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), shipped
//! in `examples/data/digits.csv.gz`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use tch::{Kind, Tensor};

/// Number of images in the data set.
pub const SAMPLES: usize = 1797;
/// Pixels per image (8x8).
pub const FEATURES: usize = 64;
/// Number of classes (the digits 0 to 9).
pub const CLASSES: usize = 10;

/// The shipped data file, or the file `DIGITS_PATH` names (for binaries
/// run away from the checkout, as in the GPU bundle).
pub fn default_path() -> PathBuf {
    match std::env::var_os("DIGITS_PATH") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/digits.csv.gz"),
    }
}

/// The digits as `(images, labels)`: images `[1797, 64]` f32 scaled to
/// `[0, 1]`, labels `[1797]` i64.
pub fn load(path: &Path) -> anyhow::Result<(Tensor, Tensor)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = BufReader::new(flate2::read::GzDecoder::new(file));
    let mut pixels = Vec::with_capacity(SAMPLES * FEATURES);
    let mut labels = Vec::with_capacity(SAMPLES);
    for (row, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        let values: Vec<&str> = line.split(',').collect();
        ensure!(
            values.len() == FEATURES + 1,
            "row {row} of {} has {} values, expected 65",
            path.display(),
            values.len()
        );
        for v in &values[..FEATURES] {
            let v: f32 = v
                .trim()
                .parse()
                .with_context(|| format!("row {row}: pixel {v:?}"))?;
            pixels.push(v / 16.0);
        }
        let label: i64 = values[FEATURES]
            .trim()
            .parse()
            .with_context(|| format!("row {row}: label"))?;
        ensure!(
            (0..CLASSES as i64).contains(&label),
            "row {row}: label {label} is not a digit"
        );
        labels.push(label);
    }
    if labels.len() != SAMPLES {
        bail!(
            "{} holds {} images, expected {SAMPLES}",
            path.display(),
            labels.len()
        );
    }
    let images = Tensor::from_slice(&pixels).view([SAMPLES as i64, FEATURES as i64]);
    Ok((images, Tensor::from_slice(&labels).to_kind(Kind::Int64)))
}

/// A seeded split into `(train_x, train_y, test_x, test_y)` with
/// `test_fraction` of the images held out.
pub fn split(
    images: &Tensor,
    labels: &Tensor,
    test_fraction: f64,
    seed: u64,
) -> (Tensor, Tensor, Tensor, Tensor) {
    let n = images.size()[0] as usize;
    let mut order: Vec<i64> = (0..n as i64).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let test = ((n as f64) * test_fraction).round() as usize;
    let test_idx = Tensor::from_slice(&order[..test]);
    let train_idx = Tensor::from_slice(&order[test..]);
    (
        images.index_select(0, &train_idx),
        labels.index_select(0, &train_idx),
        images.index_select(0, &test_idx),
        labels.index_select(0, &test_idx),
    )
}

/// The two-layer perceptron the examples train: `64 -> hidden -> relu -> 10`.
pub fn mlp(vs: &tch::nn::Path, hidden: i64) -> tch::nn::Sequential {
    use tch::nn;
    nn::seq()
        .add(nn::linear(
            vs / "hidden",
            FEATURES as i64,
            hidden,
            Default::default(),
        ))
        .add_fn(|x| x.relu())
        .add(nn::linear(
            vs / "out",
            hidden,
            CLASSES as i64,
            Default::default(),
        ))
}

/// The fraction of `logits` whose largest entry is at the label.
pub fn accuracy(logits: &Tensor, labels: &Tensor) -> f64 {
    logits
        .argmax(-1, false)
        .eq_tensor(labels)
        .to_kind(Kind::Double)
        .mean(None)
        .double_value(&[])
}
