//! [`Progress`]: a progress bar on rank 0 showing steps per second and the
//! latest logged metrics.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// The latest value of every metric logged with
/// [`Fabric::log`](crate::Fabric::log) or
/// [`Fabric::log_dict`](crate::Fabric::log_dict), in the order first seen.
#[derive(Debug, Default)]
pub(crate) struct LatestMetrics {
    values: Vec<(String, f64)>,
    /// Bumped on every update, so a bar knows when to redraw its message.
    generation: u64,
}

pub(crate) type SharedMetrics = Arc<Mutex<LatestMetrics>>;

impl LatestMetrics {
    pub(crate) fn update(&mut self, metrics: &[(&str, f64)]) {
        for (name, value) in metrics {
            match self.values.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => *v = *value,
                None => self.values.push(((*name).to_owned(), *value)),
            }
        }
        self.generation += 1;
    }
}

fn format_value(value: f64) -> String {
    let magnitude = value.abs();
    if value == 0.0 || (1e-3..1e5).contains(&magnitude) {
        format!("{value:.4}")
    } else {
        format!("{value:.3e}")
    }
}

const TEMPLATE: &str = "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}, {rate}] {msg}";

/// A progress bar from [`Fabric::progress`](crate::Fabric::progress): the
/// position out of a total, the elapsed and remaining time, steps per second,
/// and the latest value of every metric logged through fabric (`loss=0.1234
/// acc=0.9500`), as Lightning's TQDM bar.
///
/// It draws (to standard error) on the process with global rank 0 only, when
/// both standard output and standard error are terminals, and unless turned
/// off with [`FabricBuilder::progress_bar(false)`](crate::FabricBuilder::progress_bar);
/// otherwise it is hidden and every method is cheap and silent. Redirect the
/// output to a file and the log stays clean.
///
/// ```
/// use fabric::Fabric;
///
/// # fn main() -> fabric::Result<()> {
/// let mut fabric = Fabric::builder().accelerator("cpu").build()?;
/// let progress = fabric.progress(100);
/// for step in 0..100u64 {
///     fabric.log("loss", 1.0 / (step + 1) as f64)?;
///     progress.inc(1);
/// }
/// progress.finish();
/// assert_eq!(progress.message(), "loss=0.0100");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    metrics: SharedMetrics,
    seen: Mutex<u64>,
}

impl Progress {
    pub(crate) fn new(total: u64, visible: bool, metrics: SharedMetrics) -> Self {
        let visible = visible && std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self::with_target(total, target, metrics)
    }

    pub(crate) fn with_target(
        total: u64,
        target: ProgressDrawTarget,
        metrics: SharedMetrics,
    ) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total), target);
        if let Ok(style) = ProgressStyle::with_template(TEMPLATE) {
            let style = style
                .with_key(
                    "rate",
                    |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                        let _ = write!(out, "{:.1} steps/s", state.per_sec());
                    },
                )
                .progress_chars("=> ");
            bar.set_style(style);
        }
        let seen = metrics.lock().map_or(0, |m| m.generation.wrapping_sub(1));
        Progress {
            bar,
            metrics,
            seen: Mutex::new(seen),
        }
    }

    /// Whether the bar is hidden (not rank 0, not a terminal, or turned off).
    pub fn is_hidden(&self) -> bool {
        self.bar.is_hidden()
    }

    /// Advances by `steps`, and shows the latest metrics if they changed.
    pub fn inc(&self, steps: u64) {
        self.refresh_message();
        self.bar.inc(steps);
    }

    /// Moves to `position`.
    pub fn set_position(&self, position: u64) {
        self.refresh_message();
        self.bar.set_position(position);
    }

    /// The position.
    pub fn position(&self) -> u64 {
        self.bar.position()
    }

    /// Changes the total.
    pub fn set_length(&self, total: u64) {
        self.bar.set_length(total);
    }

    /// Prints a line above the bar (or plainly when the bar is hidden on
    /// rank 0; the caller decides whether other ranks print).
    pub fn println(&self, line: impl AsRef<str>) {
        if self.bar.is_hidden() {
            println!("{}", line.as_ref());
        } else {
            self.bar.println(line);
        }
    }

    /// The metrics part of the bar: `name=value` for every metric logged so
    /// far, with its latest value.
    pub fn message(&self) -> String {
        let metrics = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        metrics
            .values
            .iter()
            .map(|(name, value)| format!("{name}={}", format_value(*value)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Draws the final state and leaves the bar on screen.
    pub fn finish(&self) {
        self.refresh_message();
        self.bar.finish();
    }

    fn refresh_message(&self) {
        let generation = self.metrics.lock().map_or(0, |m| m.generation);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen != generation {
            *seen = generation;
            self.bar.set_message(self.message());
        }
    }
}
