//! A data set whose batches cost CPU work, as decoding and augmenting images
//! does, and the measurement of worker threads on it.

use std::time::Instant;

use fabric::data::{DataLoader, Dataset};
use tch::Tensor;

const SIDE: usize = 32;

/// Samples that are "decoded" (3x32x32 bytes generated from the sample's
/// index), "augmented" (flipped as the index says) and blurred `passes`
/// times, all in Rust on the thread that makes the batch. Deterministic:
/// sample `i` is always the same image, labelled `i % 10`.
pub struct Decode {
    len: usize,
    passes: usize,
}

impl Decode {
    pub fn new(len: usize, passes: usize) -> Self {
        Decode { len, passes }
    }

    fn image(&self, index: usize, out: &mut Vec<f32>) {
        let mut state = (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut pixels: Vec<f32> = (0..3 * SIDE * SIDE)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 56) as f32
            })
            .collect();
        let flip = index % 2 == 1;
        let mut blurred = pixels.clone();
        for _ in 0..self.passes {
            for c in 0..3 {
                for y in 0..SIDE {
                    for x in 0..SIDE {
                        let mut sum = 0.0;
                        for (dy, dx) in [(0, 0), (0, 1), (1, 0), (0, -1), (-1, 0)] {
                            let yy = (y as i64 + dy).clamp(0, SIDE as i64 - 1) as usize;
                            let xx = (x as i64 + dx).clamp(0, SIDE as i64 - 1) as usize;
                            sum += pixels[(c * SIDE + yy) * SIDE + xx];
                        }
                        blurred[(c * SIDE + y) * SIDE + x] = sum / 5.0;
                    }
                }
            }
            std::mem::swap(&mut pixels, &mut blurred);
        }
        for c in 0..3 {
            for y in 0..SIDE {
                for x in 0..SIDE {
                    let x = if flip { SIDE - 1 - x } else { x };
                    out.push(pixels[(c * SIDE + y) * SIDE + x] / 255.0);
                }
            }
        }
    }
}

impl Dataset for Decode {
    type Batch = (Tensor, Tensor);

    fn len(&self) -> usize {
        self.len
    }

    fn get_batch(&self, indices: &[usize]) -> fabric::Result<(Tensor, Tensor)> {
        let mut pixels = Vec::with_capacity(indices.len() * 3 * SIDE * SIDE);
        for &i in indices {
            self.image(i, &mut pixels);
        }
        let labels: Vec<i64> = indices.iter().map(|&i| (i % 10) as i64).collect();
        let n = indices.len() as i64;
        Ok((
            Tensor::from_slice(&pixels).view([n, 3, SIDE as i64, SIDE as i64]),
            Tensor::from_slice(&labels),
        ))
    }
}

/// Seconds for one epoch of 4096 samples in batches of 64, the loop doing
/// nothing with the batches but count their samples (no libtorch work on
/// the loop's thread, whose intra-op threads would compete for the cores).
fn epoch_seconds(workers: usize) -> f64 {
    let mut loader = DataLoader::new(Decode::new(4096, 16))
        .batch_size(64)
        .shuffle(true)
        .seed(0)
        .num_workers(workers);
    let start = Instant::now();
    let mut samples = 0;
    for batch in &mut loader {
        samples += batch.unwrap().0.size()[0];
    }
    assert_eq!(samples, 4096);
    start.elapsed().as_secs_f64()
}

/// The figure in the README: `cargo test --release --test data -- --ignored --nocapture workers_speed_up`.
#[test]
#[ignore = "a measurement, not a check; run with --release"]
fn workers_speed_up_a_data_set_that_computes() {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "{cores} cores; one epoch of 4096 decoded 3x32x32 samples (16 blur passes), batches of 64, median of 7:"
    );
    for workers in [0, 1, 2] {
        let _warm_up = epoch_seconds(workers);
        let mut times: Vec<f64> = (0..7).map(|_| epoch_seconds(workers)).collect();
        times.sort_by(f64::total_cmp);
        println!(
            "  num_workers({workers}): {:.3} s (fastest {:.3}, slowest {:.3})",
            times[3], times[0], times[6]
        );
    }
}
