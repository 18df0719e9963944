//! A character-level GPT and its training, shared by the `gpt` example, its
//! tests and the GPT benchmark: the King James Bible shipped in
//! `examples/data/kjv.txt.gz` ([`Corpus`]), the model ([`Gpt`]: token and
//! position embeddings, pre-LayerNorm blocks of causal self-attention
//! through `scaled_dot_product_attention` and an MLP, the output layer tied
//! to the token embedding), and the training loop ([`train`]).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use fabric::checkpoint::State;
use fabric::data::{DataLoader, Dataset};
use fabric::optim::{AdamW, LrScheduler, ParamGroup, Schedule};
use fabric::{Fabric, GradClip, ReduceOp};
use serde::Serialize;
use tch::nn::{self, Init, ModuleT};
use tch::{Device, Kind, Tensor};

/// The shipped text, or the file `KJV_PATH` names.
pub fn default_path() -> PathBuf {
    match std::env::var_os("KJV_PATH") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/kjv.txt.gz"),
    }
}

/// A text as character ids: its alphabet, and a training and a validation
/// part (the last tenth).
#[derive(Debug)]
pub struct Corpus {
    /// The distinct characters (bytes: the text is ASCII), sorted; a
    /// character's id is its index here.
    pub alphabet: Vec<u8>,
    /// The first 90% of the text, as ids (`int64`).
    pub train: Tensor,
    /// The last 10%.
    pub val: Tensor,
}

impl Corpus {
    /// Reads a gzip-compressed ASCII text; `limit` keeps its first `limit`
    /// characters (for short runs).
    pub fn load(path: &Path, limit: Option<usize>) -> anyhow::Result<Corpus> {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(file)
            .read_to_end(&mut text)
            .with_context(|| format!("decompressing {}", path.display()))?;
        if let Some(limit) = limit {
            text.truncate(limit);
        }
        Corpus::from_text(&text)
    }

    /// The corpus of `text` (ASCII, at least 100 characters).
    pub fn from_text(text: &[u8]) -> anyhow::Result<Corpus> {
        ensure!(text.is_ascii(), "the text is not ASCII");
        ensure!(
            text.len() >= 100,
            "the text has only {} characters",
            text.len()
        );
        let mut seen = [false; 128];
        for &c in text {
            seen[c as usize] = true;
        }
        let alphabet: Vec<u8> = (0u8..128).filter(|&c| seen[c as usize]).collect();
        let mut id = [0i64; 128];
        for (i, &c) in alphabet.iter().enumerate() {
            id[c as usize] = i as i64;
        }
        let ids: Vec<i64> = text.iter().map(|&c| id[c as usize]).collect();
        let split = ids.len() * 9 / 10;
        Ok(Corpus {
            alphabet,
            train: Tensor::from_slice(&ids[..split]),
            val: Tensor::from_slice(&ids[split..]),
        })
    }

    /// The number of distinct characters.
    pub fn vocab(&self) -> i64 {
        self.alphabet.len() as i64
    }

    /// The ids of `text`'s characters (those outside the alphabet dropped).
    pub fn encode(&self, text: &str) -> Vec<i64> {
        text.bytes()
            .filter_map(|c| self.alphabet.iter().position(|&a| a == c))
            .map(|i| i as i64)
            .collect()
    }

    /// The text of `ids`.
    pub fn decode(&self, ids: &[i64]) -> String {
        ids.iter()
            .map(|&i| self.alphabet[i as usize] as char)
            .collect()
    }
}

/// Every window of `block + 1` consecutive characters of a text: sample
/// `i` is `(ids[i..i + block], ids[i + 1..i + block + 1])`, the input and
/// the next character at each position.
#[derive(Debug)]
pub struct Windows {
    ids: Tensor,
    block: i64,
}

impl Windows {
    /// The windows of `ids` (1-D `int64`).
    pub fn new(ids: &Tensor, block: i64) -> anyhow::Result<Windows> {
        ensure!(
            ids.size1()? > block,
            "a text of {} characters has no window of {} + 1",
            ids.size1()?,
            block
        );
        Ok(Windows {
            ids: ids.shallow_clone(),
            block,
        })
    }
}

impl Dataset for Windows {
    type Batch = (Tensor, Tensor);

    fn len(&self) -> usize {
        (self.ids.size()[0] - self.block) as usize
    }

    fn get_batch(&self, indices: &[usize]) -> fabric::Result<(Tensor, Tensor)> {
        let starts: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        let offsets = Tensor::arange(self.block + 1, (Kind::Int64, Device::Cpu));
        let index = Tensor::from_slice(&starts).unsqueeze(1) + offsets.unsqueeze(0);
        let windows = self
            .ids
            .f_index_select(0, &index.flatten(0, 1))?
            .view([starts.len() as i64, self.block + 1]);
        Ok((
            windows.narrow(1, 0, self.block).contiguous(),
            windows.narrow(1, 1, self.block).contiguous(),
        ))
    }
}

/// The shape of a [`Gpt`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Config {
    /// Distinct characters.
    pub vocab: i64,
    /// The longest context, in characters.
    pub block: i64,
    /// Transformer blocks.
    pub layers: i64,
    /// Attention heads per block.
    pub heads: i64,
    /// The width of the residual stream.
    pub width: i64,
}

impl Config {
    /// The example's model: 6 blocks of width 192 with 6 heads, a context
    /// of 128 characters (2.7 M parameters with the Bible's alphabet).
    pub fn example(vocab: i64) -> Config {
        Config {
            vocab,
            block: 128,
            layers: 6,
            heads: 6,
            width: 192,
        }
    }

    /// The number of parameters (the tied output layer counted once).
    pub fn parameters(&self) -> i64 {
        let d = self.width;
        let block = 4 * d /* 2 LayerNorms */ + 3 * d * d + 3 * d + d * d + d + 8 * d * d + 5 * d;
        self.vocab * d + self.block * d + self.layers * block + 2 * d
    }

    /// The floating-point operations of one training step per token
    /// (forward and backward, a multiply-add counted as 2), as in the PaLM
    /// paper's appendix B: `6 N` for the products with the weights (`N`
    /// without the position embedding, a look-up; the token embedding
    /// counted once, as the output layer) plus `12 L T d` for attention's
    /// `QK^T` and `AV` over the full square (the masked half included).
    /// LayerNorms, softmax and element-wise work are left out.
    pub fn flops_per_token(&self) -> f64 {
        let n = (self.parameters() - self.block * self.width) as f64;
        6.0 * n + 12.0 * (self.layers * self.block * self.width) as f64
    }
}

fn normal(stdev: f64) -> Init {
    Init::Randn { mean: 0.0, stdev }
}

fn linear(path: nn::Path, inputs: i64, outputs: i64, stdev: f64) -> nn::Linear {
    nn::linear(
        path,
        inputs,
        outputs,
        nn::LinearConfig {
            ws_init: normal(stdev),
            bs_init: Some(Init::Const(0.0)),
            bias: true,
        },
    )
}

#[derive(Debug)]
struct Block {
    ln1: nn::LayerNorm,
    qkv: nn::Linear,
    attn_proj: nn::Linear,
    ln2: nn::LayerNorm,
    fc: nn::Linear,
    mlp_proj: nn::Linear,
    heads: i64,
}

impl Block {
    fn new(p: nn::Path, c: &Config) -> Block {
        let d = c.width;
        // GPT-2's initialisation: N(0, 0.02), the projections into the
        // residual stream scaled down by sqrt(2 * layers).
        let residual = 0.02 / ((2 * c.layers) as f64).sqrt();
        Block {
            ln1: nn::layer_norm(&p / "ln1", vec![d], Default::default()),
            qkv: linear(&p / "attn" / "qkv", d, 3 * d, 0.02),
            attn_proj: linear(&p / "attn" / "proj", d, d, residual),
            ln2: nn::layer_norm(&p / "ln2", vec![d], Default::default()),
            fc: linear(&p / "mlp" / "fc", d, 4 * d, 0.02),
            mlp_proj: linear(&p / "mlp" / "proj", 4 * d, d, residual),
            heads: c.heads,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, t, d) = x.size3().expect("a block takes [batch, time, width]");
        let h = self.heads;
        let qkv = x.apply(&self.ln1).apply(&self.qkv);
        let heads = |i: i64| {
            qkv.narrow(2, i * d, d)
                .view([b, t, h, d / h])
                .transpose(1, 2)
        };
        let y = Tensor::scaled_dot_product_attention(
            &heads(0),
            &heads(1),
            &heads(2),
            None::<Tensor>,
            0.0,
            true,
            None,
            false,
        );
        let y = y.transpose(1, 2).contiguous().view([b, t, d]);
        let x = x + y.apply(&self.attn_proj);
        let m = x
            .apply(&self.ln2)
            .apply(&self.fc)
            .gelu("none")
            .apply(&self.mlp_proj);
        x + m
    }
}

/// A GPT over characters: token and position embeddings, pre-LayerNorm
/// transformer blocks (causal multi-head self-attention through
/// `scaled_dot_product_attention`, then an MLP of width `4 * width` with
/// GELU), a final LayerNorm, and the output layer tied to the token
/// embedding (its weight is the embedding matrix). No dropout. Its forward
/// pass takes token ids `[batch, time]` (`time <= block`) and returns the
/// logits `[batch, time, vocab]`.
#[derive(Debug)]
pub struct Gpt {
    wte: nn::Embedding,
    wpe: nn::Embedding,
    blocks: Vec<Block>,
    ln_f: nn::LayerNorm,
    config: Config,
}

impl Gpt {
    /// The model, its variables under `p`: `wte.weight`, `wpe.weight`,
    /// `h.{i}.ln1.weight`, ..., `ln_f.bias`.
    pub fn new(p: &nn::Path, config: Config) -> Gpt {
        let embedding = nn::EmbeddingConfig {
            ws_init: normal(0.02),
            ..Default::default()
        };
        Gpt {
            wte: nn::embedding(p / "wte", config.vocab, config.width, embedding),
            wpe: nn::embedding(p / "wpe", config.block, config.width, embedding),
            blocks: (0..config.layers)
                .map(|i| Block::new(p / "h" / i, &config))
                .collect(),
            ln_f: nn::layer_norm(p / "ln_f", vec![config.width], Default::default()),
            config,
        }
    }

    /// The model's shape.
    pub fn config(&self) -> Config {
        self.config
    }
}

impl ModuleT for Gpt {
    fn forward_t(&self, ids: &Tensor, _train: bool) -> Tensor {
        let t = ids.size()[1];
        assert!(
            t <= self.config.block,
            "{t} characters are more than the context of {}",
            self.config.block
        );
        let positions = Tensor::arange(t, (Kind::Int64, ids.device()));
        let mut x = ids.apply(&self.wte) + positions.apply(&self.wpe);
        for block in &self.blocks {
            x = block.forward(&x);
        }
        x.apply(&self.ln_f).matmul(&self.wte.ws.tr())
    }
}

/// The mean cross-entropy (nats per character) of `logits` `[b, t, v]`
/// against `targets` `[b, t]`, in float32.
pub fn loss(logits: &Tensor, targets: &Tensor) -> Tensor {
    let v = logits.size()[2];
    logits
        .view([-1, v])
        .to_kind(Kind::Float)
        .cross_entropy_for_logits(&targets.view([-1]))
}

/// The settings of a training run.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    /// The model's shape (`vocab` is taken from the text).
    pub model: Config,
    /// Windows per micro-batch and rank.
    pub batch_size: usize,
    /// Micro-batches whose gradients add up to one optimizer step.
    pub accumulate: usize,
    /// Optimizer steps in all (the cosine schedule reaches its end there).
    pub steps: u64,
    /// Steps of linear warm-up.
    pub warmup_steps: u64,
    /// The peak learning rate.
    pub lr: f64,
    /// The learning rate at the end, as a fraction of the peak.
    pub min_lr_ratio: f64,
    /// AdamW's weight decay (not on biases, LayerNorms and the position
    /// embedding).
    pub weight_decay: f64,
    /// The largest gradient norm.
    pub max_grad_norm: f64,
    /// Evaluate on the validation text every this many steps (and at the
    /// end).
    pub eval_every: u64,
    /// Validation batches per evaluation (of `batch_size` windows).
    pub eval_batches: usize,
    /// Log the training loss every this many steps.
    pub log_every: u64,
    /// Save the checkpoint every this many steps (and at the end).
    pub checkpoint_every: u64,
    /// Stop (after saving the checkpoint) at this step, as if interrupted.
    pub stop_at: Option<u64>,
    /// Characters to sample at the end.
    pub sample_chars: usize,
    /// Seeds the model's initialisation, the data order and the sample.
    pub seed: u64,
    /// Keep only the first this many characters of the text.
    pub text_limit: Option<usize>,
    /// The text.
    #[serde(skip)]
    pub data: PathBuf,
    /// Where the checkpoints (`checkpoints/step-<step>`, the last two) and
    /// the TensorBoard logs go; a run finding a checkpoint there resumes
    /// from the newest complete one.
    #[serde(skip)]
    pub dir: PathBuf,
}

impl Options {
    /// The example's settings: [`Config::example`], batches of 16 windows
    /// of 128 characters, 800 steps, AdamW at 2e-3 (weight decay 0.1,
    /// betas 0.9 and 0.99) with 80 warm-up steps and a cosine down to a
    /// tenth, gradients clipped at norm 1.
    pub fn example(dir: PathBuf) -> Options {
        Options {
            model: Config::example(0),
            batch_size: 16,
            accumulate: 1,
            steps: 800,
            warmup_steps: 80,
            lr: 2e-3,
            min_lr_ratio: 0.1,
            weight_decay: 0.1,
            max_grad_norm: 1.0,
            eval_every: 250,
            eval_batches: 40,
            log_every: 10,
            checkpoint_every: 500,
            stop_at: None,
            sample_chars: 400,
            seed: 1337,
            text_limit: None,
            data: default_path(),
            dir,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The step the run started from (0, or the checkpoint's).
    pub start_step: u64,
    /// The step it ended at.
    pub step: u64,
    /// The training loss of each step this run took (mean over its
    /// micro-batches, this rank's).
    pub train_losses: Vec<f64>,
    /// The last validation loss, nats per character, over every rank's
    /// share of the validation batches.
    pub val_loss: f64,
    /// Characters sampled from the model at the end (empty when stopped
    /// early).
    pub sample: String,
    /// Training time (without evaluation and checkpoints), and the
    /// characters trained on by all ranks in it.
    pub train_time: Duration,
    /// The characters (tokens) of the batches of all ranks.
    pub tokens: u64,
    /// The number of parameters.
    pub parameters: i64,
}

fn evaluate(
    fabric: &Fabric,
    model: &fabric::FabricModule<Gpt>,
    val: &Windows,
    options: &Options,
) -> anyhow::Result<f64> {
    model.eval();
    let (rank, world) = (fabric.global_rank(), fabric.world_size());
    let n = options.eval_batches * options.batch_size;
    // Evenly spaced windows over the validation text, the same every time;
    // rank r takes batches r, r + world, ...
    let spacing = val.len() / n.max(1);
    let (mut sum, mut count) = (0.0, 0.0);
    tch::no_grad(|| -> anyhow::Result<()> {
        for b in (rank..options.eval_batches).step_by(world) {
            let indices: Vec<usize> = (0..options.batch_size)
                .map(|i| (b * options.batch_size + i) * spacing)
                .collect();
            let (x, y) = fabric.to_device(val.get_batch(&indices)?);
            sum += loss(&model.forward(&x), &y).double_value(&[]);
            count += 1.0;
        }
        Ok(())
    })?;
    let totals = fabric.all_reduce(&Tensor::from_slice(&[sum, count]), ReduceOp::Sum)?;
    model.train();
    Ok(totals.double_value(&[0]) / totals.double_value(&[1]))
}

/// Samples `n` characters after `prompt`, drawing from the model's
/// distribution (temperature 0.8) after seeding libtorch's generator with
/// `seed`.
pub fn sample(
    model: &fabric::FabricModule<Gpt>,
    corpus: &Corpus,
    prompt: &str,
    n: usize,
    seed: u64,
    device: Device,
) -> String {
    model.eval();
    let block = model.inner().config().block;
    let mut ids = corpus.encode(prompt);
    if ids.is_empty() {
        ids.push(0);
    }
    tch::manual_seed(seed as i64);
    tch::no_grad(|| {
        for _ in 0..n {
            let start = ids.len().saturating_sub(block as usize);
            let x = Tensor::from_slice(&ids[start..]).unsqueeze(0).to(device);
            let logits = model.forward(&x).select(1, -1).to_kind(Kind::Float) / 0.8;
            let probs = logits.softmax(-1, Kind::Float);
            ids.push(probs.multinomial(1, false).int64_value(&[0, 0]));
        }
    });
    model.train();
    corpus.decode(&ids)
}

/// The directory of a run's numbered checkpoints: `dir/checkpoints`.
pub fn checkpoint_dir(dir: &Path) -> PathBuf {
    dir.join("checkpoints")
}

/// Everything a checkpoint of the training holds, the same entries for
/// saving and for loading: weights, AdamW's state, the schedule, the
/// loader's position, the random generators and the step.
fn training_state<'a>(
    vs: &'a mut nn::VarStore,
    optimizer: &'a mut fabric::FabricOptimizer,
    scheduler: &'a mut LrScheduler,
    loader: &'a mut fabric::data::FabricDataLoader<Windows>,
    step: &'a mut u64,
) -> State<'a> {
    State::new()
        .model("model", vs)
        .optimizer("optimizer", optimizer)
        .scheduler("scheduler", scheduler)
        .loader("train", loader)
        .rng()
        .value("step", step)
}

/// Trains a GPT on `options.data` with `fabric`, resuming from the newest
/// checkpoint in `options.dir` if there is one, and samples from it at the
/// end. Every rank calls it; rank 0 logs to the loggers fabric has.
pub fn train(fabric: &mut Fabric, options: &Options) -> anyhow::Result<Summary> {
    let corpus = Corpus::load(&options.data, options.text_limit)?;
    let config = Config {
        vocab: corpus.vocab(),
        ..options.model
    };
    ensure!(
        config.width % config.heads == 0,
        "the width {} is not a multiple of the {} heads",
        config.width,
        config.heads
    );
    fabric.log_hyperparams(options)?;
    fabric.seed_everything(options.seed);

    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = fabric.setup_module_with(&mut vs, |p| Gpt::new(p, config))?;
    // Weight decay on the matrices only: not on biases and LayerNorms
    // (`no_weight_decay`), nor on the position embedding.
    let optimizer = AdamW::new(options.lr)
        .betas(0.9, 0.99)
        .weight_decay(options.weight_decay)
        .group(ParamGroup::no_weight_decay())
        .group(ParamGroup::names("positions", ["wpe.weight"]).weight_decay(0.0))
        .build(&vs)?;
    let mut optimizer = fabric.setup_optimizer(optimizer)?;
    let mut scheduler = LrScheduler::new(
        &mut optimizer,
        Schedule::warmup_cosine(options.warmup_steps, options.steps, options.min_lr_ratio),
    )?;
    let train_windows = Windows::new(&corpus.train, config.block)?;
    let val_windows = Windows::new(&corpus.val, config.block)?;
    let mut loader = fabric.setup_dataloaders(
        DataLoader::new(train_windows)
            .batch_size(options.batch_size)
            .shuffle(true)
            .drop_last(true)
            .seed(options.seed),
    )?;
    let batches_per_epoch = loader.len() as u64;
    ensure!(batches_per_epoch > 0, "the text is shorter than one batch");

    // One code path for a fresh start and a restart: the newest complete
    // checkpoint, if any, holds everything that changes during training,
    // the loader's position in its epoch and the random generators
    // included, so a resumed run goes on with the batches it would have had.
    let checkpoints = checkpoint_dir(&options.dir);
    let mut step = 0u64;
    if let Some(resumed) = fabric.load_latest(
        &checkpoints,
        &mut training_state(
            &mut vs,
            &mut optimizer,
            &mut scheduler,
            &mut loader,
            &mut step,
        ),
    )? {
        fabric.print(format!(
            "resuming from {} at step {step}",
            resumed.path.display()
        ));
    }
    let start_step = step;
    let mut batches = loader.iter();

    let parameters = config.parameters();
    fabric.print(format!(
        "{} parameters, {} characters ({} distinct), {} ranks x {} windows x {} characters x {} micro-batches per step",
        parameters,
        corpus.train.size()[0] + corpus.val.size()[0],
        config.vocab,
        fabric.world_size(),
        options.batch_size,
        config.block,
        options.accumulate
    ));

    let stop = options.stop_at.unwrap_or(options.steps).min(options.steps);
    let mut train_losses = Vec::new();
    let mut val_loss = f64::NAN;
    let mut train_time = Duration::ZERO;
    let tokens_per_step = (options.batch_size * options.accumulate * fabric.world_size()) as u64
        * config.block as u64;
    let progress = fabric.progress(stop.saturating_sub(step));
    model.train();
    while step < stop {
        let started = Instant::now();
        let mut step_loss = Tensor::zeros([], (Kind::Float, Device::Cpu));
        for m in 0..options.accumulate {
            let batch = match batches.next() {
                Some(batch) => batch?,
                None => {
                    batches = loader.iter();
                    batches.next().context("an epoch without batches")??
                }
            };
            let (x, y) = batch;
            let l = loss(&model.forward(&x), &y) / options.accumulate as f64;
            // Gradients are averaged over the ranks once per step, in the
            // last micro-batch's backward pass.
            let last = m + 1 == options.accumulate;
            fabric.no_backward_sync(!last, |fabric| fabric.backward(&l))?;
            step_loss += l.detach();
        }
        fabric.clip_gradients(&mut optimizer, GradClip::norm(options.max_grad_norm))?;
        optimizer.step()?;
        optimizer.zero_grad();
        scheduler.step(&mut optimizer)?;
        step += 1;
        train_time += started.elapsed();
        let step_loss = step_loss.double_value(&[]);
        train_losses.push(step_loss);
        progress.inc(1);
        if step.is_multiple_of(options.log_every) || step == stop {
            fabric.log_dict(
                [
                    ("train/loss", step_loss),
                    ("lr", scheduler.last_lr()[0]),
                    (
                        "tokens_per_second",
                        tokens_per_step as f64 * (step - start_step) as f64
                            / train_time.as_secs_f64(),
                    ),
                ],
                Some(step),
            )?;
        }
        if step.is_multiple_of(options.eval_every) || step == options.steps {
            val_loss = evaluate(fabric, &model, &val_windows, options)?;
            fabric.log_dict([("val/loss", val_loss)], Some(step))?;
            if fabric.local_rank() == 0 {
                progress.println(format!(
                    "step {step}: train loss {step_loss:.4}, validation loss {val_loss:.4} nats per character"
                ));
            }
        }
        if step.is_multiple_of(options.checkpoint_every) || step == stop {
            fabric.save_step_keep_last(
                &checkpoints,
                step,
                2,
                &training_state(
                    &mut vs,
                    &mut optimizer,
                    &mut scheduler,
                    &mut loader,
                    &mut step,
                ),
            )?;
        }
    }
    progress.finish();
    drop(batches);

    let sample = if step == options.steps && options.sample_chars > 0 {
        sample(
            &model,
            &corpus,
            "And ",
            options.sample_chars,
            options.seed,
            fabric.device(),
        )
    } else {
        String::new()
    };
    Ok(Summary {
        start_step,
        step,
        train_losses,
        val_loss,
        sample,
        train_time,
        tokens: tokens_per_step * (step - start_step),
        parameters,
    })
}
