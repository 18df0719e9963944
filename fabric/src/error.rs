//! [`Error`]: everything that can go wrong in fabric, with what to do about it.

use fabric_options::OptionError;

/// fabric's error type. Every message says what was wrong and what is
/// accepted or available instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option value that fabric does not accept, or a combination of
    /// options that cannot work (the same messages as `#[fabric(...)]`).
    #[error(transparent)]
    Option(#[from] OptionError),

    /// Several option errors, reported together.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Options(Vec<OptionError>),

    /// An option whose behaviour belongs to a part of fabric that does not
    /// exist yet.
    #[error("`{option} = {value}` is not available yet: {reason}")]
    NotAvailableYet {
        /// The option, such as `strategy`.
        option: &'static str,
        /// The value asked for, such as `"ddp"`.
        value: String,
        /// What works today instead.
        reason: String,
    },

    /// The accelerator asked for does not exist on this machine.
    #[error(
        "accelerator \"{requested}\" is not available on this machine: {reason}; available: {available}"
    )]
    AcceleratorUnavailable {
        /// The accelerator asked for.
        requested: String,
        /// Why it is not available.
        reason: String,
        /// The accelerators this machine has, such as `"cpu"`.
        available: String,
    },

    /// `devices` selects devices that this machine does not have.
    #[error(
        "`devices = {requested}` asks for {accelerator} device(s) this machine does not have; present: {present}"
    )]
    DevicesUnavailable {
        /// The selection, as written.
        requested: String,
        /// The accelerator.
        accelerator: String,
        /// What is present, such as `"2 CUDA devices (0, 1)"`.
        present: String,
    },

    /// A value from a cluster environment that cannot be used.
    #[error("cluster environment {environment}: {message}")]
    ClusterEnvironment {
        /// The environment's name.
        environment: String,
        /// What is wrong.
        message: String,
    },

    /// A collective or the set-up of the processes of a run failed.
    #[error("distributed: {0}")]
    Distributed(String),

    /// Something this build of fabric leaves out: a cargo feature turned off.
    #[error(
        "{needed_by} needs fabric's `{feature}` cargo feature, which this build leaves out: enable it (it is on by default; with `default-features = false`, add `features = [\"{feature}\"]` to the `tch-fabric` dependency)"
    )]
    FeatureDisabled {
        /// The cargo feature, such as `"mpi"`.
        feature: &'static str,
        /// What needs it, such as `a run of 2 processes`.
        needed_by: String,
    },

    /// The processes of a run could not be started.
    #[error("launch: {0}")]
    Launch(String),

    /// More processes than fabric's launcher starts on this machine.
    #[error(
        "launch: {requested} processes were asked for, but fabric's launcher starts at most {limit} on this machine ({cores} core(s)); ask for fewer devices, or start the ranks with a cluster launcher"
    )]
    TooManyProcesses {
        /// The processes asked for.
        requested: usize,
        /// The most fabric's launcher starts here.
        limit: usize,
        /// The cores of this machine.
        cores: usize,
    },

    /// The ranks fabric's launcher started ended, at least one of them
    /// failing.
    #[error("launch: the run's {processes} ranks failed ({status}); their messages are above")]
    RanksFailed {
        /// How many ranks the run had.
        processes: usize,
        /// How they ended, such as `exit status 1`.
        status: String,
    },

    /// A data set or data loader that cannot produce a batch.
    #[error("data: {0}")]
    Data(String),

    /// Gradients holding infinities or NaNs where a finite norm is required.
    #[error(
        "the total norm of the gradients is {norm}; clipping it would spread non-finite values into every parameter (pass `error_if_nonfinite = false` to clip anyway)"
    )]
    NonFiniteNorm {
        /// The norm found.
        norm: f64,
    },

    /// A user-supplied argument outside what a method accepts.
    #[error("{0}")]
    InvalidArgument(String),

    /// A logger or callback failed.
    #[error("{what} failed: {source}")]
    Plugin {
        /// The logger or callback and the call, such as `logger "csv": log_metrics`.
        what: String,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A checkpoint that cannot be read or written: missing, foreign,
    /// truncated or damaged files, or a path that is not a checkpoint.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint {
        /// The checkpoint's path.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A checkpoint whose content does not fit the state it is loaded into;
    /// nothing was loaded.
    #[error(
        "checkpoint {} does not fit the state, nothing was loaded (pass `strict = false` to load what fits):\n  {}",
        path.display(),
        problems.join("\n  ")
    )]
    CheckpointMismatch {
        /// The checkpoint's path.
        path: std::path::PathBuf,
        /// Every key missing, unexpected or mismatched, one per line.
        problems: Vec<String>,
    },

    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),

    /// An input/output error.
    #[error("{context}: {source}")]
    Io {
        /// What fabric was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The run stopped at a preemption signal to be run again
    /// ([`Fabric::requeue`](crate::Fabric::requeue)), its checkpoint saved;
    /// exit status [`REQUEUE_EXIT_CODE`](crate::preemption::REQUEUE_EXIT_CODE).
    #[error(
        "preempted: {signal} received; the checkpoint is saved and {}",
        match job { Some(job) => format!("SLURM job {job} is requeued"), None => "the run stops to be run again".into() }
    )]
    Preempted {
        /// The signal, such as `SIGUSR1`.
        signal: String,
        /// The SLURM job requeued, if any.
        job: Option<String>,
    },

    /// The run stopped at a preemption signal, but the scheduler could not
    /// be asked to run it again (`scontrol requeue` failed).
    #[error("preempted, but not requeued: {0}")]
    Requeue(String),
}

impl Error {
    /// The exit status a program ends with for this error:
    /// [`REQUEUE_EXIT_CODE`](crate::preemption::REQUEUE_EXIT_CODE) (75)
    /// for [`Error::Preempted`], 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Preempted { .. } => REQUEUE_EXIT_CODE,
            _ => 1,
        }
    }
}

/// `Result` with fabric's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Vec<OptionError>> for Error {
    fn from(mut errors: Vec<OptionError>) -> Self {
        if errors.len() == 1 {
            Error::Option(errors.remove(0))
        } else {
            Error::Options(errors)
        }
    }
}

/// The exit status of a run stopped to be run again: 75, `EX_TEMPFAIL` of
/// `sysexits.h` ("a temporary failure; the user is invited to retry").
pub const REQUEUE_EXIT_CODE: u8 = 75;
