//! [`LrScheduler`]: learning-rate schedules stepped once per optimizer
//! step, matching `torch.optim.lr_scheduler`.

use std::f64::consts::PI;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::OptimizerSlot;
use super::invalid;
use crate::error::Result;

/// A learning-rate factor by step, for [`Schedule::lambda`].
type LrLambda = Arc<dyn Fn(u64) -> f64 + Send + Sync>;

/// How [`OneCycle`] anneals within a phase, as `anneal_strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Anneal {
    /// Along half a cosine (`"cos"`, the default).
    Cos,
    /// Along a straight line (`"linear"`).
    Linear,
}

/// The settings of `torch.optim.lr_scheduler.OneCycleLR` (its defaults): up
/// from `max_lr / div_factor` to `max_lr` over the first `pct_start` of
/// `total_steps`, then down to `max_lr / div_factor / final_div_factor`;
/// the momentum (SGD's, or Adam's first beta) cycles the other way between
/// `max_momentum` and `base_momentum`. Each parameter group may peak at its
/// own learning rate ([`OneCycle::per_group`], PyTorch's `max_lr` given as a
/// list).
///
/// ```
/// use fabric::optim::{Anneal, OneCycle, Schedule};
///
/// let schedule: Schedule = OneCycle::new(0.1, 1000).pct_start(0.25).anneal(Anneal::Linear).into();
/// assert_eq!(schedule.name(), "one_cycle");
/// // A body at 1e-3 and a head at 1e-2, for an optimizer of two groups.
/// let per_group: Schedule = OneCycle::per_group([1e-3, 1e-2], 1000).into();
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OneCycle {
    /// The peak learning rate, of every group (unless `group_max_lrs`).
    pub max_lr: f64,
    /// The peak learning rate of each parameter group, in the optimizer's
    /// order, when they differ (`max_lr` is then the first of them); the
    /// scheduler checks there is one per group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_max_lrs: Option<Vec<f64>>,
    /// The steps of the whole cycle; stepping past them is an error.
    pub total_steps: u64,
    /// The share of the steps spent increasing the learning rate (0.3).
    pub pct_start: f64,
    /// How the learning rate moves within a phase ([`Anneal::Cos`]).
    pub anneal: Anneal,
    /// Whether the momentum cycles too (true).
    pub cycle_momentum: bool,
    /// The lowest momentum (0.85).
    pub base_momentum: f64,
    /// The highest momentum (0.95).
    pub max_momentum: f64,
    /// The initial learning rate is `max_lr / div_factor` (25).
    pub div_factor: f64,
    /// The final learning rate is the initial one over this (1e4).
    pub final_div_factor: f64,
    /// A third phase: up, down to the initial learning rate, then down to
    /// the final one (false).
    pub three_phase: bool,
}

impl OneCycle {
    /// A one-cycle schedule peaking at `max_lr` over `total_steps`.
    pub fn new(max_lr: f64, total_steps: u64) -> Self {
        OneCycle {
            max_lr,
            group_max_lrs: None,
            total_steps,
            pct_start: 0.3,
            anneal: Anneal::Cos,
            cycle_momentum: true,
            base_momentum: 0.85,
            max_momentum: 0.95,
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: false,
        }
    }

    /// A one-cycle schedule over `total_steps` whose `i`-th parameter group
    /// peaks at `max_lrs[i]` (PyTorch's `OneCycleLR(max_lr=[...])`); the
    /// other settings as [`new`](Self::new)'s. Making the scheduler is an
    /// error unless the optimizer has one group per value.
    pub fn per_group(max_lrs: impl IntoIterator<Item = f64>, total_steps: u64) -> Self {
        let max_lrs: Vec<f64> = max_lrs.into_iter().collect();
        let first = max_lrs.first().copied().unwrap_or(f64::NAN);
        OneCycle {
            group_max_lrs: Some(max_lrs),
            ..OneCycle::new(first, total_steps)
        }
    }

    /// The peak learning rate of each of `groups` parameter groups; an
    /// error if the schedule has one per group for another count.
    fn max_lrs(&self, groups: usize) -> Result<Vec<f64>> {
        match &self.group_max_lrs {
            None => Ok(vec![self.max_lr; groups]),
            Some(max_lrs) if max_lrs.len() == groups => Ok(max_lrs.clone()),
            Some(max_lrs) => Err(invalid(format!(
                "this one-cycle schedule has {} peak learning rates (one per parameter group) and the optimizer {groups} parameter groups: give one per group",
                max_lrs.len()
            ))),
        }
    }

    setters! {
        /// Sets the share of the steps spent increasing.
        pct_start: f64;
        /// Sets how the learning rate moves within a phase.
        anneal: Anneal;
        /// Turns the momentum's cycle on or off.
        cycle_momentum: bool;
        /// Sets the divisor of the initial learning rate.
        div_factor: f64;
        /// Sets the divisor of the final learning rate.
        final_div_factor: f64;
        /// Turns the three-phase variant on or off.
        three_phase: bool;
    }

    /// Sets the lowest and highest momentum.
    pub fn momentum(mut self, base_momentum: f64, max_momentum: f64) -> Self {
        self.base_momentum = base_momentum;
        self.max_momentum = max_momentum;
        self
    }

    /// The phases: (end step, start, end) of the learning rate as
    /// (initial, max, min) picks, as PyTorch's `_schedule_phases`.
    fn phases(&self) -> Vec<(f64, Point, Point)> {
        let total = self.total_steps as f64;
        if self.three_phase {
            vec![
                (self.pct_start * total - 1.0, Point::Initial, Point::Max),
                (
                    2.0 * self.pct_start * total - 2.0,
                    Point::Max,
                    Point::Initial,
                ),
                (total - 1.0, Point::Initial, Point::Min),
            ]
        } else {
            vec![
                (self.pct_start * total - 1.0, Point::Initial, Point::Max),
                (total - 1.0, Point::Max, Point::Min),
            ]
        }
    }

    fn interpolate(&self, start: f64, end: f64, pct: f64) -> f64 {
        match self.anneal {
            Anneal::Cos => {
                let cos_out = (PI * pct).cos() + 1.0;
                end + (start - end) / 2.0 * cos_out
            }
            Anneal::Linear => (end - start) * pct + start,
        }
    }
}

/// The learning rates and momentums of a [`OneCycle`] phase's ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Point {
    Initial,
    Max,
    Min,
}

/// The schedules, with their settings, as a checkpoint records them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Kind {
    Lambda,
    Step {
        step_size: u64,
        gamma: f64,
    },
    Linear {
        start_factor: f64,
        end_factor: f64,
        total_iters: u64,
    },
    CosineAnnealing {
        t_max: u64,
        eta_min: f64,
    },
    WarmupCosine {
        warmup_steps: u64,
        total_steps: u64,
        min_lr_ratio: f64,
    },
    OneCycle(OneCycle),
}

/// A learning-rate schedule, as one of `torch.optim.lr_scheduler`'s
/// schedulers, for an [`LrScheduler`].
///
/// Each matches PyTorch's formulas operation for operation, in f64 as
/// Python's floats, so the learning rates are PyTorch's bit for bit
/// (checked against the venv's PyTorch in `tests/schedulers.rs`):
/// `StepLR`, `LinearLR` and `CosineAnnealingLR` update the current
/// learning rate recursively as PyTorch's do (not their closed forms),
/// and linear warm-up then cosine decay is `LambdaLR` with the factor of
/// Hugging Face's `get_cosine_schedule_with_warmup`.
///
/// ```
/// use fabric::optim::Schedule;
///
/// let warmup_cosine = Schedule::warmup_cosine(100, 10_000, 0.1);
/// let inverse_sqrt = Schedule::lambda(|step| 1.0 / ((step + 1) as f64).sqrt());
/// assert_eq!(warmup_cosine.name(), "warmup_cosine");
/// assert_eq!(inverse_sqrt.name(), "lambda");
/// ```
#[derive(Clone)]
pub struct Schedule {
    kind: Kind,
    lambda: Option<LrLambda>,
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.kind.fmt(f)
    }
}

impl From<OneCycle> for Schedule {
    fn from(one_cycle: OneCycle) -> Self {
        Schedule::of(Kind::OneCycle(one_cycle))
    }
}

impl Schedule {
    fn of(kind: Kind) -> Self {
        Schedule { kind, lambda: None }
    }

    /// `LambdaLR(optimizer, factor)`: each group's initial learning rate
    /// times `factor(step)`, with `step` 0 before the first optimizer step.
    /// A checkpoint saves the schedule's position, not the closure: the
    /// scheduler it loads into keeps its own.
    pub fn lambda(factor: impl Fn(u64) -> f64 + Send + Sync + 'static) -> Self {
        Schedule {
            kind: Kind::Lambda,
            lambda: Some(Arc::new(factor)),
        }
    }

    /// `StepLR(optimizer, step_size, gamma)`: the learning rate times
    /// `gamma` every `step_size` steps.
    pub fn step_lr(step_size: u64, gamma: f64) -> Self {
        Schedule::of(Kind::Step { step_size, gamma })
    }

    /// `LinearLR(optimizer, start_factor, end_factor, total_iters)`: the
    /// factor of the initial learning rate goes linearly from
    /// `start_factor` to `end_factor` over `total_iters` steps, then stays.
    pub fn linear(start_factor: f64, end_factor: f64, total_iters: u64) -> Self {
        Schedule::of(Kind::Linear {
            start_factor,
            end_factor,
            total_iters,
        })
    }

    /// `CosineAnnealingLR(optimizer, T_max, eta_min)`: from the initial
    /// learning rate down to `eta_min` along half a cosine over `t_max`
    /// steps (and back up over the next `t_max`, as PyTorch's).
    pub fn cosine_annealing(t_max: u64, eta_min: f64) -> Self {
        Schedule::of(Kind::CosineAnnealing { t_max, eta_min })
    }

    /// Linear warm-up then cosine decay, the transformer recipe: the factor
    /// of the initial learning rate goes linearly from 0 to 1 over
    /// `warmup_steps`, then along half a cosine down to `min_lr_ratio` at
    /// `total_steps`. It is `LambdaLR` with the factor of Hugging Face's
    /// `get_cosine_with_min_lr_schedule_with_warmup(num_warmup_steps,
    /// num_training_steps, min_lr_rate=min_lr_ratio)` (with `min_lr_ratio =
    /// 0`, of `get_cosine_schedule_with_warmup`), whose first step has a
    /// learning rate of 0 when there is a warm-up.
    pub fn warmup_cosine(warmup_steps: u64, total_steps: u64, min_lr_ratio: f64) -> Self {
        Schedule::of(Kind::WarmupCosine {
            warmup_steps,
            total_steps,
            min_lr_ratio,
        })
    }

    /// `OneCycleLR`: see [`OneCycle`].
    pub fn one_cycle(one_cycle: OneCycle) -> Self {
        one_cycle.into()
    }

    /// `"lambda"`, `"step"`, `"linear"`, `"cosine_annealing"`,
    /// `"warmup_cosine"` or `"one_cycle"`.
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Lambda => "lambda",
            Kind::Step { .. } => "step",
            Kind::Linear { .. } => "linear",
            Kind::CosineAnnealing { .. } => "cosine_annealing",
            Kind::WarmupCosine { .. } => "warmup_cosine",
            Kind::OneCycle(_) => "one_cycle",
        }
    }

    /// Checks the settings: an error says which are out of range and what
    /// is accepted.
    fn validate(&self) -> Result<()> {
        let problem = match *self {
            Kind::Lambda => None,
            Kind::Step { step_size, gamma } => (step_size == 0 || !gamma.is_finite() || gamma < 0.0)
                .then(|| format!("StepLR needs step_size >= 1 and a finite gamma >= 0, got step_size = {step_size}, gamma = {gamma}")),
            Kind::Linear { start_factor, end_factor, total_iters } => {
                (!(start_factor > 0.0 && start_factor <= 1.0 && (0.0..=1.0).contains(&end_factor)) || total_iters == 0)
                    .then(|| format!("LinearLR needs 0 < start_factor <= 1, 0 <= end_factor <= 1 and total_iters >= 1, got start_factor = {start_factor}, end_factor = {end_factor}, total_iters = {total_iters}"))
            }
            Kind::CosineAnnealing { t_max, eta_min } => (t_max == 0 || !eta_min.is_finite() || eta_min < 0.0)
                .then(|| format!("CosineAnnealingLR needs t_max >= 1 and a finite eta_min >= 0, got t_max = {t_max}, eta_min = {eta_min}")),
            Kind::WarmupCosine { warmup_steps, total_steps, min_lr_ratio } => {
                if total_steps == 0 || warmup_steps > total_steps {
                    Some(format!("warm-up then cosine needs total_steps >= 1 and warmup_steps <= total_steps (the warm-up is part of the total), got warmup_steps = {warmup_steps}, total_steps = {total_steps}"))
                } else {
                    (!(0.0..=1.0).contains(&min_lr_ratio)).then(|| format!("warm-up then cosine needs 0 <= min_lr_ratio <= 1, got {min_lr_ratio}"))
                }
            }
            Kind::OneCycle(ref c) => c.problem(),
        };
        match problem {
            Some(problem) => Err(invalid(problem)),
            None => Ok(()),
        }
    }
}

impl OneCycle {
    fn problem(&self) -> Option<String> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let momentum = |m: f64| (0.0..1.0).contains(&m);
        if let Some(max_lrs) = &self.group_max_lrs
            && (max_lrs.is_empty() || !max_lrs.iter().all(|&lr| positive(lr)))
        {
            return Some(format!(
                "OneCycleLR needs a finite max_lr > 0 for each parameter group, got {max_lrs:?}"
            ));
        }
        if self.total_steps == 0
            || !positive(self.max_lr)
            || !positive(self.div_factor)
            || !positive(self.final_div_factor)
        {
            return Some(format!(
                "OneCycleLR needs total_steps >= 1 and finite max_lr, div_factor and final_div_factor > 0, got {self:?}"
            ));
        }
        if !(0.0..=1.0).contains(&self.pct_start) {
            return Some(format!(
                "OneCycleLR needs 0 <= pct_start <= 1, got {}",
                self.pct_start
            ));
        }
        if self.cycle_momentum && !(momentum(self.base_momentum) && momentum(self.max_momentum)) {
            return Some(format!(
                "OneCycleLR needs momentums in [0, 1), got base_momentum = {}, max_momentum = {}",
                self.base_momentum, self.max_momentum
            ));
        }
        let mut start = 0.0;
        for (end, _, _) in self.phases() {
            if end <= start || end.is_nan() {
                return Some(format!(
                    "OneCycleLR with total_steps = {} and pct_start = {}{} has a phase of no steps (from step {start} to {end}): PyTorch divides by its length; use more steps or another pct_start",
                    self.total_steps,
                    self.pct_start,
                    if self.three_phase {
                        " (three phases)"
                    } else {
                        ""
                    }
                ));
            }
            start = end;
        }
        None
    }
}

/// A learning-rate scheduler, as `torch.optim.lr_scheduler`'s: made for an
/// optimizer of fabric's (set up or not), it sets the learning rate of
/// each of its parameter groups at every [`step`](Self::step), which comes
/// once per optimizer step, after it.
///
/// As in PyTorch, making it sets the learning rates of step 0 (the
/// schedule's start), [`last_lr`](Self::last_lr) is PyTorch's
/// `get_last_lr()`, and a checkpoint holds it
/// ([`State::scheduler`](crate::checkpoint::State::scheduler)) as the
/// optimizer it schedules (whose state holds the current learning rates).
///
/// ```
/// use fabric::Fabric;
/// use fabric::optim::{AdamW, LrScheduler, Schedule};
/// use tch::{nn, Kind, Tensor};
///
/// # fn main() -> fabric::Result<()> {
/// let mut fabric = Fabric::builder().accelerator("cpu").build()?;
/// let mut vs = nn::VarStore::new(tch::Device::Cpu);
/// let net = nn::linear(vs.root(), 3, 1, Default::default());
/// let opt = AdamW::new(1e-3).build(&vs)?;
/// let (model, mut opt) = fabric.setup(&mut vs, net, opt)?;
/// let mut scheduler = LrScheduler::new(&mut opt, Schedule::warmup_cosine(2, 10, 0.0))?;
/// assert_eq!(scheduler.last_lr(), [0.0]);
/// for _ in 0..2 {
///     opt.zero_grad();
///     let loss = model.forward(&Tensor::ones([4, 3], (Kind::Float, tch::Device::Cpu))).mean(None);
///     fabric.backward(&loss)?;
///     opt.step()?;
///     scheduler.step(&mut opt)?;
/// }
/// assert_eq!(scheduler.last_lr(), [1e-3]);
/// assert_eq!(opt.optimizer().unwrap().lr(), 1e-3);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct LrScheduler {
    schedule: Schedule,
    state: SchedulerState,
}

/// What a checkpoint records of a scheduler: its schedule's settings and
/// its position, PyTorch's `state_dict()` of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SchedulerState {
    schedule: Kind,
    /// PyTorch's `last_epoch`: the steps taken, 0 after construction.
    last_epoch: u64,
    /// PyTorch's `_step_count`: the calls of `step`, construction's included.
    step_count: u64,
    /// Each group's initial learning rate (PyTorch's `base_lrs`).
    base_lrs: Vec<f64>,
    /// The learning rates set last (`get_last_lr()`).
    last_lrs: Vec<f64>,
}

impl LrScheduler {
    /// A scheduler of `optimizer`'s learning rates: their values now are
    /// the schedule's initial ones (for [`OneCycle`], `max_lr /
    /// div_factor`, and the momentum starts at `max_momentum`), and it sets
    /// those of step 0. An error if the schedule's settings are out of
    /// range, or the optimizer is tch's, whose learning rates cannot be
    /// read.
    pub fn new(optimizer: &mut dyn OptimizerSlot, schedule: impl Into<Schedule>) -> Result<Self> {
        let schedule = schedule.into();
        schedule.kind.validate()?;
        let optimizer = optimizer.stateful_mut()?;
        let groups = optimizer.groups().len();
        let base_lrs = match &schedule.kind {
            Kind::OneCycle(c) => {
                let max_lrs = c.max_lrs(groups)?;
                if c.cycle_momentum {
                    optimizer.set_momentums(&vec![c.max_momentum; groups]);
                }
                max_lrs.iter().map(|max_lr| max_lr / c.div_factor).collect()
            }
            _ => optimizer.lrs(),
        };
        let mut scheduler = LrScheduler {
            state: SchedulerState {
                schedule: schedule.kind.clone(),
                last_epoch: 0,
                step_count: 1,
                base_lrs,
                last_lrs: Vec::new(),
            },
            schedule,
        };
        let lrs = scheduler.lrs_at(optimizer, 0, true)?;
        optimizer.set_scheduled_lrs(&lrs.0)?;
        if let Some(momentums) = lrs.1 {
            optimizer.set_momentums(&momentums);
        }
        scheduler.state.last_lrs = lrs.0;
        Ok(scheduler)
    }

    /// Sets the learning rates of the next step (call it once per optimizer
    /// step, after it). An error if `optimizer` has another number of
    /// parameter groups than the one this scheduler was made for, or a
    /// [`OneCycle`] schedule is stepped past its `total_steps` (nothing
    /// changes then).
    pub fn step(&mut self, optimizer: &mut dyn OptimizerSlot) -> Result<()> {
        let optimizer = optimizer.stateful_mut()?;
        let epoch = self.state.last_epoch + 1;
        let (lrs, momentums) = self.lrs_at(optimizer, epoch, false)?;
        optimizer.set_scheduled_lrs(&lrs)?;
        if let Some(momentums) = momentums {
            optimizer.set_momentums(&momentums);
        }
        self.state.last_epoch = epoch;
        self.state.step_count += 1;
        self.state.last_lrs = lrs;
        Ok(())
    }

    /// The learning rate of each group set last, PyTorch's `get_last_lr()`.
    pub fn last_lr(&self) -> &[f64] {
        &self.state.last_lrs
    }

    /// The steps taken since the scheduler was made (PyTorch's `last_epoch`).
    pub fn last_step(&self) -> u64 {
        self.state.last_epoch
    }

    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The learning rates (and momentums, for a cycling [`OneCycle`]) at
    /// `epoch`, from the optimizer's current ones, as PyTorch's `get_lr`;
    /// `initial` in the constructor's step.
    fn lrs_at(
        &self,
        optimizer: &super::Optimizer,
        epoch: u64,
        initial: bool,
    ) -> Result<(Vec<f64>, Option<Vec<f64>>)> {
        let current = optimizer.lrs();
        let base = &self.state.base_lrs;
        if current.len() != base.len() {
            return Err(invalid(format!(
                "this {} scheduler was made for an optimizer of {} parameter groups, and this one has {}: step it with the optimizer it was made for",
                self.schedule.name(),
                base.len(),
                current.len()
            )));
        }
        let e = epoch as f64;
        let lrs = match self.state.schedule.clone() {
            Kind::Lambda => {
                let factor = self
                    .schedule
                    .lambda
                    .as_ref()
                    .ok_or_else(|| invalid("a lambda schedule without its function".into()))?;
                let f = factor(epoch);
                base.iter().map(|b| b * f).collect()
            }
            Kind::WarmupCosine {
                warmup_steps,
                total_steps,
                min_lr_ratio,
            } => {
                let f = warmup_cosine(epoch, warmup_steps, total_steps, min_lr_ratio);
                base.iter().map(|b| b * f).collect()
            }
            Kind::Step { step_size, gamma } => {
                if epoch == 0 || !epoch.is_multiple_of(step_size) {
                    current
                } else {
                    current.iter().map(|lr| lr * gamma).collect()
                }
            }
            Kind::Linear {
                start_factor,
                end_factor,
                total_iters,
            } => {
                if epoch == 0 {
                    current.iter().map(|lr| lr * start_factor).collect()
                } else if initial || epoch > total_iters {
                    current
                } else {
                    let diff = end_factor - start_factor;
                    let factor =
                        1.0 + diff / (total_iters as f64 * start_factor + (e - 1.0) * diff);
                    current.iter().map(|lr| lr * factor).collect()
                }
            }
            Kind::CosineAnnealing { t_max, eta_min } => {
                let t = t_max as f64;
                if initial {
                    current
                } else if self.state.step_count + 1 == 1 && epoch > 0 {
                    base.iter()
                        .map(|b| eta_min + (b - eta_min) * (1.0 + (e * PI / t).cos()) / 2.0)
                        .collect()
                } else if (epoch as i128 - 1 - t_max as i128).rem_euclid(2 * t_max as i128) == 0 {
                    current
                        .iter()
                        .zip(base)
                        .map(|(lr, b)| lr + (b - eta_min) * (1.0 - (PI / t).cos()) / 2.0)
                        .collect()
                } else {
                    let ratio = (1.0 + (PI * e / t).cos()) / (1.0 + (PI * (e - 1.0) / t).cos());
                    current
                        .iter()
                        .map(|lr| ratio * (lr - eta_min) + eta_min)
                        .collect()
                }
            }
            Kind::OneCycle(c) => {
                let max_lrs = c.max_lrs(base.len())?;
                if epoch > c.total_steps {
                    return Err(invalid(format!(
                        "the one-cycle schedule has {} steps and was stepped {epoch} times: make total_steps the number of optimizer steps",
                        c.total_steps
                    )));
                }
                let phases = c.phases();
                let mut lrs = Vec::with_capacity(base.len());
                let mut momentums = Vec::with_capacity(base.len());
                for (&initial_lr, &max_lr) in base.iter().zip(&max_lrs) {
                    let lr_at = |p: Point| match p {
                        Point::Initial => initial_lr,
                        Point::Max => max_lr,
                        Point::Min => initial_lr / c.final_div_factor,
                    };
                    // The momentum moves against the learning rate.
                    let momentum_at = |p: Point| match p {
                        Point::Initial | Point::Min => c.max_momentum,
                        Point::Max => c.base_momentum,
                    };
                    let mut start_step = 0.0;
                    for (i, &(end_step, from, to)) in phases.iter().enumerate() {
                        if e <= end_step || i == phases.len() - 1 {
                            let pct = (e - start_step) / (end_step - start_step);
                            lrs.push(c.interpolate(lr_at(from), lr_at(to), pct));
                            momentums.push(c.interpolate(momentum_at(from), momentum_at(to), pct));
                            break;
                        }
                        start_step = end_step;
                    }
                }
                return Ok((lrs, c.cycle_momentum.then_some(momentums)));
            }
        };
        Ok((lrs, None))
    }

    /// What a checkpoint saves.
    pub(crate) fn state(&self) -> &SchedulerState {
        &self.state
    }

    /// Why `saved` cannot be loaded into this scheduler, if it cannot.
    pub(crate) fn check(&self, saved: &SchedulerState) -> Option<String> {
        if saved.schedule.name() != self.schedule.name() {
            return Some(format!(
                "is a {} schedule in the checkpoint and a {} schedule in the state",
                saved.schedule.name(),
                self.schedule.name()
            ));
        }
        if let Err(error) = saved.schedule.validate() {
            return Some(error.to_string());
        }
        let groups = self.state.base_lrs.len();
        if saved.base_lrs.len() != groups || saved.last_lrs.len() != groups {
            return Some(format!(
                "schedules {} parameter groups in the checkpoint and {groups} in the state",
                saved.base_lrs.len()
            ));
        }
        if saved.step_count == 0 {
            return Some("has a step count of 0, which no scheduler has".into());
        }
        None
    }

    /// Takes the saved settings and position (checked by [`check`](Self::check));
    /// a lambda schedule keeps its function.
    pub(crate) fn restore(&mut self, saved: SchedulerState) {
        self.schedule.kind = saved.schedule.clone();
        self.state = saved;
    }
}

/// The factor of Hugging Face's `_get_cosine_schedule_with_warmup_lr_lambda`
/// (`num_cycles = 0.5`) with `min_lr_rate`, operation for operation.
fn warmup_cosine(step: u64, warmup: u64, total: u64, min_lr_ratio: f64) -> f64 {
    if step < warmup {
        return step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / total.saturating_sub(warmup).max(1) as f64;
    let factor = 0.5 * (1.0 + (PI * 0.5 * 2.0 * progress).cos());
    let factor = factor * (1.0 - min_lr_ratio) + min_lr_ratio;
    factor.max(0.0)
}
