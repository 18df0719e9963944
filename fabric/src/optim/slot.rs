//! [`OptimizerSlot`]: the optimizers whose state a checkpoint holds and
//! whose learning rates a scheduler sets.

use super::Optimizer;
use crate::error::Result;

/// An optimizer whose state a [`State`](crate::checkpoint::State) can hold
/// and whose learning rates an [`LrScheduler`](super::LrScheduler) sets:
/// fabric's [`Optimizer`], or a
/// [`FabricOptimizer`](crate::FabricOptimizer) wrapping one.
pub trait OptimizerSlot {
    /// The optimizer, or why it cannot be checkpointed.
    fn stateful(&self) -> Result<&Optimizer>;
    /// The optimizer, mutably.
    fn stateful_mut(&mut self) -> Result<&mut Optimizer>;
}

impl OptimizerSlot for Optimizer {
    fn stateful(&self) -> Result<&Optimizer> {
        Ok(self)
    }
    fn stateful_mut(&mut self) -> Result<&mut Optimizer> {
        Ok(self)
    }
}
