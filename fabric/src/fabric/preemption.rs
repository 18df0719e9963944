//! Preemption: agreeing between ranks to stop, and asking to be run again
//! (see [`preemption`](crate::preemption)).

use tch::Tensor;

use super::Fabric;
use crate::collectives::ReduceOp;
use crate::error::{Error, Result};
use crate::preemption::signal_name;

impl Fabric {
    /// Whether the run must stop at this step because a preemption signal
    /// reached a rank, agreed across ranks: true on every rank as soon as
    /// one rank received SIGUSR1 or SIGTERM (the signals of
    /// [`Preemption`](crate::preemption::Preemption)), and from then on.
    /// Save a checkpoint, then return [`requeue`](Self::requeue).
    ///
    /// With several processes this is a collective (one all-reduce of one
    /// number; every [`check_every`](crate::preemption::Preemption::check_every)-th
    /// call only): call it at the same point on every rank, once per step.
    /// Without [`FabricBuilder::preemption`](crate::FabricBuilder::preemption)
    /// it is false and communicates nothing.
    pub fn preempted(&mut self) -> Result<bool> {
        let world_size = self.world_size();
        let Some(state) = self.preemption.as_mut() else {
            return Ok(false);
        };
        if state.agreed().is_some() {
            return Ok(true);
        }
        if !state.due() {
            return Ok(false);
        }
        let local = crate::preemption::received().unwrap_or(0);
        let signal = if world_size == 1 {
            local
        } else {
            let flag = Tensor::from_slice(&[i64::from(local)]);
            self.strategy
                .all_reduce(&flag, ReduceOp::Max)?
                .f_int64_value(&[0])? as i32
        };
        let state = self.preemption.as_mut().expect("checked above");
        state.agree(signal);
        Ok(state.agreed().is_some())
    }

    /// Stops a preempted run once its checkpoint is saved: every rank waits
    /// for the others, then in a SLURM job (`SLURM_JOB_ID` set) rank 0 runs
    /// `scontrol requeue <job id>`, and every rank returns the same error,
    /// which the training function returns:
    /// [`Error::Preempted`] (exit status
    /// [`REQUEUE_EXIT_CODE`](crate::preemption::REQUEUE_EXIT_CODE), see
    /// [`preemption::exit_code`](crate::preemption::exit_code)), or
    /// [`Error::Requeue`] when `scontrol` failed. Nothing ends the process:
    /// the launch functions treat it as a clean stop (loggers finalised, no
    /// rank reported as failed).
    ///
    /// A collective, like [`preempted`](Self::preempted); an error without
    /// [`FabricBuilder::preemption`](crate::FabricBuilder::preemption).
    pub fn requeue<T>(&mut self) -> Result<T> {
        let Some(state) = self.preemption.as_ref() else {
            return Err(Error::InvalidArgument(
                "`requeue` needs the preemption option: `FabricBuilder::preemption(Preemption::new())`".into(),
            ));
        };
        let signal = state
            .agreed()
            .or_else(crate::preemption::received)
            .map_or_else(|| "no signal (requeue called directly)".into(), signal_name);
        let job = state
            .requeues()
            .then(crate::environment::requeue_job_id)
            .flatten();
        // Every rank has saved; then rank 0 asks for the requeue.
        self.strategy.barrier()?;
        let outcome = match (&job, self.is_global_zero()) {
            (Some(job), true) => crate::preemption::scontrol_requeue(job),
            _ => Ok(()),
        };
        let failed = if self.world_size() > 1 {
            let flag = Tensor::from_slice(&[i64::from(outcome.is_err())]);
            self.strategy
                .all_reduce(&flag, ReduceOp::Max)?
                .f_int64_value(&[0])?
                != 0
        } else {
            outcome.is_err()
        };
        if let Some(state) = self.preemption.as_mut() {
            state.requeued = true;
        }
        match outcome {
            Err(error) => Err(error),
            Ok(()) if failed => Err(Error::Requeue(format!(
                "rank 0 could not requeue SLURM job {} (its message says why)",
                job.as_deref().unwrap_or("?")
            ))),
            Ok(()) => Err(Error::Preempted { signal, job }),
        }
    }

    /// Whether [`requeue`](Self::requeue) ran.
    pub(crate) fn requeued(&self) -> bool {
        self.preemption.as_ref().is_some_and(|s| s.requeued)
    }
}
