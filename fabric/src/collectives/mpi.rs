//! Collectives over Open MPI, through the `mpi` crate's raw bindings.

mod shared;
pub(crate) use shared::window_bytes as shared_window_bytes;

use std::cell::OnceCell;
use std::ffi::{c_int, c_void};
use std::time::Duration;

use mpi::ffi;
use tch::{Device, Kind, Tensor};

use self::shared::SharedSlots;
use super::world::{self, Member};
use super::{ReduceOp, polite, watchdog};
use crate::error::{Error, Result};

fn check(code: c_int, what: &str) -> Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(Error::Distributed(format!(
            "{what} failed with MPI error code {code}"
        )))
    }
}

/// A communicator over every rank of the run, ordered by the cluster
/// environment's global ranks. Dropping it frees the shared window and the
/// communicator (bounded by the watchdog); MPI itself is finalised when the
/// process exits (`world`).
#[derive(Debug)]
pub(crate) struct MpiComm {
    comm: ffi::MPI_Comm,
    rank: usize,
    size: usize,
    timeout: Duration,
    /// Whether /dev/shm has room for the shared window.
    shared_memory_room: bool,
    /// How long freeing the communicator may wait for the other ranks
    /// (the failure timeout).
    failure_bound: Duration,
    /// The shared-memory window of [`all_reduce_shared`](Self::all_reduce_shared),
    /// opened by the first all-reduce; `None` where the ranks do not all share
    /// one machine's memory.
    shared: OnceCell<Option<SharedSlots>>,
    /// MPI stays initialised while this lives; dropped last.
    _member: Member,
}

// SAFETY: MPI is initialised with MPI_THREAD_SERIALIZED, under which any
// thread may make MPI calls provided that no two threads of the process
// make them at once. Every MPI call fabric makes (here, in `shared` and in
// `world`) is made while holding `world::lock()`, the one process-wide
// lock, so moving an `MpiComm` to another thread cannot make two calls
// overlap, whichever thread the other communicators of the process are on.
// The window's pointers in `shared` point into memory that MPI keeps mapped
// until the window is freed (in `drop`), whichever thread reads them.
// `MpiComm` is deliberately not `Sync`: two threads sharing one
// communicator would issue its collectives in an order the other ranks
// cannot match, and the shared window's slot protocol assumes one caller.
unsafe impl Send for MpiComm {}

impl MpiComm {
    /// Initialises MPI (once per process, see [`world`]) and orders its
    /// world by `global_rank`, checking it against the environment's world
    /// size. `failure_bound` bounds freeing the communicator and
    /// `MPI_Finalize` at exit;
    /// `shared_memory_room` says whether /dev/shm has room for the shared
    /// window (`shared::window_bytes`).
    pub(crate) fn join(
        global_rank: usize,
        world_size: usize,
        timeout: Duration,
        failure_bound: Duration,
        shared_memory_room: bool,
    ) -> Result<Self> {
        let member = Member::join(global_rank, failure_bound)?;
        let key = c_int::try_from(global_rank)
            .map_err(|_| Error::Distributed("global rank too large".into()))?;
        let this = {
            let _mpi = world::lock();
            let mut mpi_size: c_int = 0;
            // SAFETY: MPI is initialised; the out-pointers are valid.
            unsafe {
                check(
                    ffi::MPI_Comm_size(ffi::RSMPI_COMM_WORLD, &mut mpi_size),
                    "MPI_Comm_size",
                )?
            };
            if mpi_size as usize != world_size {
                return Err(Error::Distributed(format!(
                    "the cluster environment reports {world_size} processes, but MPI connects {mpi_size}: start the ranks with Open MPI's `mpirun` (or `srun --mpi=pmix`), which fabric's CPU collectives run on; processes started by another launcher cannot join one MPI world"
                )));
            }
            // SAFETY: reading the predefined null handle.
            let mut comm: ffi::MPI_Comm = unsafe { ffi::RSMPI_COMM_NULL };
            // SAFETY: as above.
            unsafe {
                check(
                    ffi::MPI_Comm_split(ffi::RSMPI_COMM_WORLD, 0, key, &mut comm),
                    "MPI_Comm_split",
                )?
            };
            // Owned from here on: dropped (freed) on the errors below.
            let mut this = MpiComm {
                comm,
                rank: 0,
                size: world_size,
                timeout,
                shared_memory_room,
                failure_bound,
                shared: OnceCell::new(),
                _member: member,
            };
            let mut rank: c_int = 0;
            // SAFETY: `comm` is a live communicator; a valid out-pointer.
            unsafe { check(ffi::MPI_Comm_rank(this.comm, &mut rank), "MPI_Comm_rank")? };
            this.rank = rank as usize;
            this
        };
        // Every rank must hold a distinct global rank.
        let ranks = this.all_gather(&Tensor::f_from_slice(&[global_rank as i64])?)?;
        let mut seen: Vec<i64> = Vec::try_from(ranks.f_view([-1])?)?;
        seen.sort_unstable();
        if seen != (0..world_size as i64).collect::<Vec<_>>() {
            return Err(Error::Distributed(format!(
                "the ranks' global ranks are {seen:?}, not 0 to {}: the cluster environment is inconsistent",
                world_size - 1
            )));
        }
        Ok(this)
    }

    pub(crate) fn rank(&self) -> usize {
        self.rank
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    fn datatype(kind: Kind) -> Option<ffi::MPI_Datatype> {
        // SAFETY: reading the MPI library's predefined handles.
        unsafe {
            Some(match kind {
                Kind::Float => ffi::RSMPI_FLOAT,
                Kind::Double => ffi::RSMPI_DOUBLE,
                Kind::Int64 => ffi::RSMPI_INT64_T,
                Kind::Int => ffi::RSMPI_INT32_T,
                Kind::Int16 => ffi::RSMPI_INT16_T,
                Kind::Int8 => ffi::RSMPI_INT8_T,
                Kind::Uint8 => ffi::RSMPI_UINT8_T,
                Kind::Bool => ffi::RSMPI_C_BOOL,
                _ => return None,
            })
        }
    }

    /// The tensor as a contiguous CPU tensor of a kind MPI transports:
    /// 16-bit floats travel as f32 (MPI has no bfloat16 or half type).
    fn wire(&self, tensor: &Tensor, what: &str) -> Result<(Tensor, Kind)> {
        if tensor.device() != Device::Cpu {
            return Err(Error::Distributed(format!(
                "{what} of a {:?} tensor: CUDA collectives need NCCL, which is not available in fabric yet; move the tensor to the CPU",
                tensor.device()
            )));
        }
        let kind = tensor.f_kind()?;
        let wire_kind = match kind {
            Kind::BFloat16 | Kind::Half => Kind::Float,
            other if Self::datatype(other).is_some() => other,
            other => {
                return Err(Error::Distributed(format!(
                    "{what} of {other:?} tensors is not supported"
                )));
            }
        };
        Ok((tensor.f_to_kind(wire_kind)?.f_contiguous()?, kind))
    }

    fn count(tensor: &Tensor) -> Result<c_int> {
        c_int::try_from(tensor.numel())
            .map_err(|_| Error::Distributed("tensor too large for one MPI message".into()))
    }

    /// The MPI datatype of a tensor [`wire`](Self::wire) made.
    fn wire_datatype(tensor: &Tensor) -> Result<ffi::MPI_Datatype> {
        Self::datatype(tensor.f_kind()?)
            .ok_or_else(|| Error::Distributed("unsupported dtype".into()))
    }

    /// The element-wise reduction of `tensor` over every rank.
    pub(crate) fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<Tensor> {
        let (input, kind) = self.wire(tensor, "all_reduce")?;
        let wire_kind = input.f_kind()?;
        if wire_kind == Kind::Bool && op == ReduceOp::Mean {
            return Err(Error::Distributed(
                "the mean of a bool tensor is undefined; convert it first".into(),
            ));
        }
        let output = input.f_empty_like()?;
        if input.numel() > 0 {
            // SAFETY: reading the predefined operation handles.
            let mpi_op = unsafe {
                match (op, wire_kind) {
                    (ReduceOp::Sum | ReduceOp::Mean, Kind::Bool) => ffi::RSMPI_LOR,
                    (ReduceOp::Sum | ReduceOp::Mean, _) => ffi::RSMPI_SUM,
                    (ReduceOp::Max, Kind::Bool) => ffi::RSMPI_LOR,
                    (ReduceOp::Min, Kind::Bool) => ffi::RSMPI_LAND,
                    (ReduceOp::Max, _) => ffi::RSMPI_MAX,
                    (ReduceOp::Min, _) => ffi::RSMPI_MIN,
                }
            };
            let datatype = Self::wire_datatype(&input)?;
            advise_huge_pages(&output, wire_kind);
            let armed = watchdog::arm("all_reduce", self.timeout);
            self.reduce(&armed, &input, &output, datatype, mpi_op)?;
        }
        let output = if op == ReduceOp::Mean {
            if input.f_is_floating_point()? {
                output.f_div_scalar(self.size as f64)?
            } else {
                output
                    .f_to_kind(Kind::Float)?
                    .f_div_scalar(self.size as f64)?
            }
        } else {
            output
        };
        let restore = if matches!(kind, Kind::BFloat16 | Kind::Half) {
            kind
        } else {
            output.f_kind()?
        };
        Ok(output
            .f_to_kind(restore)?
            .f_view(tensor.size().as_slice())?)
    }

    /// Whether MPI carries tensors of this kind as they are, so that
    /// [`all_reduce_into`](Self::all_reduce_into) takes them.
    pub(crate) fn carries(kind: Kind) -> bool {
        kind != Kind::Bool && Self::datatype(kind).is_some()
    }

    /// The element-wise reduction of `input` over every rank, written into
    /// `output`: both contiguous CPU tensors of the same kind and size that
    /// MPI transports directly. Allocates nothing.
    pub(crate) fn all_reduce_into(
        &self,
        input: &Tensor,
        output: &Tensor,
        op: ReduceOp,
    ) -> Result<()> {
        let kind = input.f_kind()?;
        let direct = input.device() == Device::Cpu
            && input.is_contiguous()
            && output.is_contiguous()
            && kind == output.f_kind()?
            && input.numel() == output.numel()
            && op != ReduceOp::Mean;
        let datatype = Self::datatype(kind).filter(|_| direct && kind != Kind::Bool);
        let Some(datatype) = datatype else {
            return Err(Error::Distributed(
                "all_reduce_into needs two contiguous CPU tensors of one plain kind and size"
                    .into(),
            ));
        };
        if input.numel() == 0 {
            return Ok(());
        }
        // SAFETY: reading the predefined operation handles.
        let mpi_op = unsafe {
            match op {
                ReduceOp::Sum | ReduceOp::Mean => ffi::RSMPI_SUM,
                ReduceOp::Max => ffi::RSMPI_MAX,
                ReduceOp::Min => ffi::RSMPI_MIN,
            }
        };
        let armed = watchdog::arm("all_reduce", self.timeout);
        self.reduce(&armed, input, output, datatype, mpi_op)
    }

    /// Reduces `input` into `output` (contiguous CPU tensors of one kind
    /// and size, `datatype` on the wire) over every rank: through shared
    /// memory where every rank is on this machine, else with Open MPI's
    /// all-reduce. Either way a rank that arrives first waits without
    /// spinning, under the watchdog `armed`.
    fn reduce(
        &self,
        armed: &watchdog::Armed,
        input: &Tensor,
        output: &Tensor,
        datatype: ffi::MPI_Datatype,
        op: ffi::MPI_Op,
    ) -> Result<()> {
        let _mpi = world::lock();
        if let Some(shared) = self.shared_slots()? {
            return self.all_reduce_shared(armed, shared, input, output, datatype, op);
        }
        // Wait for every rank without spinning, then reduce with Open MPI's
        // blocking all-reduce: its tuned algorithms move data faster than
        // the nonblocking ones (a 3.2 MB bucket: 0.63 ms against 0.89 ms
        // with MPI_Iallreduce), and with the ranks lined up its spinning is
        // limited to the transfer itself.
        self.arrive(armed)?;
        // SAFETY: both tensors are contiguous CPU tensors of `count`
        // elements of `datatype`, alive for the call.
        unsafe {
            check(
                ffi::MPI_Allreduce(
                    input.data_ptr() as *const c_void,
                    output.data_ptr(),
                    Self::count(input)?,
                    datatype,
                    op,
                    self.comm,
                ),
                "MPI_Allreduce",
            )
        }
    }

    /// Returns once every rank has called it, having waited
    /// [politely](polite::wait_until) at a nonblocking barrier (each poll
    /// also progresses MPI). Called under [`world::lock`].
    fn arrive(&self, armed: &watchdog::Armed) -> Result<()> {
        // SAFETY: reading the predefined null request.
        let mut request = unsafe { ffi::RSMPI_REQUEST_NULL };
        // SAFETY: MPI is initialised; `request` is written by the call.
        unsafe { check(ffi::MPI_Ibarrier(self.comm, &mut request), "MPI_Ibarrier")? };
        polite::wait_until(armed, || {
            let mut done: c_int = 0;
            // SAFETY: `request` is the active request of the barrier.
            unsafe {
                check(
                    ffi::MPI_Test(&mut request, &mut done, ffi::RSMPI_STATUS_IGNORE),
                    "MPI_Ibarrier",
                )?;
            }
            Ok(done != 0)
        })
    }

    /// `tensor` as held by rank `src`, on every rank.
    pub(crate) fn broadcast(&self, tensor: &Tensor, src: usize) -> Result<Tensor> {
        if src >= self.size {
            return Err(Error::InvalidArgument(format!(
                "broadcast from rank {src}, but the world has {} ranks",
                self.size
            )));
        }
        let (input, kind) = self.wire(tensor, "broadcast")?;
        // A copy, so that the caller's tensor is left as it was.
        let mut buffer = input.f_empty_like()?;
        buffer.f_copy_(&input)?;
        if buffer.numel() > 0 {
            let datatype = Self::wire_datatype(&buffer)?;
            let _armed = watchdog::arm("broadcast", self.timeout);
            let _mpi = world::lock();
            // SAFETY: `buffer` is a contiguous CPU tensor of `count` elements.
            unsafe {
                check(
                    ffi::MPI_Bcast(
                        buffer.data_ptr(),
                        Self::count(&buffer)?,
                        datatype,
                        src as c_int,
                        self.comm,
                    ),
                    "MPI_Bcast",
                )?;
            }
        }
        Ok(buffer.f_to_kind(kind)?.f_view(tensor.size().as_slice())?)
    }

    /// Every rank's `tensor`, stacked along a new first dimension in rank
    /// order. Every rank must pass the same shape.
    pub(crate) fn all_gather(&self, tensor: &Tensor) -> Result<Tensor> {
        let (input, kind) = self.wire(tensor, "all_gather")?;
        let mut shape = vec![self.size as i64];
        shape.extend(tensor.size());
        let output = Tensor::f_empty(shape.as_slice(), (input.f_kind()?, Device::Cpu))?;
        let datatype = Self::wire_datatype(&input)?;
        let count = Self::count(&input)?;
        let _armed = watchdog::arm("all_gather", self.timeout);
        let _mpi = world::lock();
        // SAFETY: `output` holds `size` times `input`'s elements, both
        // contiguous CPU tensors of `datatype`.
        unsafe {
            check(
                ffi::MPI_Allgather(
                    input.data_ptr() as *const c_void,
                    count,
                    datatype,
                    output.data_ptr(),
                    count,
                    datatype,
                    self.comm,
                ),
                "MPI_Allgather",
            )?;
        }
        Ok(output.f_to_kind(kind)?)
    }

    /// Waits until every rank arrives.
    pub(crate) fn barrier(&self) -> Result<()> {
        let _armed = watchdog::arm("barrier", self.timeout);
        let _mpi = world::lock();
        // SAFETY: MPI is initialised.
        unsafe { check(ffi::MPI_Barrier(self.comm), "MPI_Barrier") }
    }
}

impl Drop for MpiComm {
    /// Frees the shared window, then the communicator. Both are collective:
    /// every rank frees them, so this waits for the others, bounded by the
    /// watchdog at the failure timeout, as `MPI_Finalize` at exit is: a rank
    /// that returns an error from `main` while the others are in a
    /// collective ends within that bound, and the launcher ends the run.
    /// Ranks end their runs within the failure timeout of each other. MPI
    /// stays initialised until the process exits (`world`).
    fn drop(&mut self) {
        let _armed = watchdog::arm("freeing the MPI communicator", self.failure_bound);
        let _mpi = world::lock();
        // Dropping the slots frees the window (see `SharedSlots`).
        drop(self.shared.take());
        // SAFETY: a live communicator of this process, freed once; its
        // window is freed above.
        unsafe { ffi::MPI_Comm_free(&mut self.comm) };
    }
}

/// Asks the kernel to back a large, fresh output tensor with huge pages:
/// with fabric's 32 MiB mmap threshold every 64 MB result is a new mapping,
/// and faulting it in 4 KiB pages took longer than the all-reduce itself
/// (16,384 faults: 55 ms against 19 ms with 2 MiB pages, 2 ranks). Only
/// whole 2 MiB pages inside the tensor are advised; where transparent huge
/// pages are off (or always on) this changes nothing.
fn advise_huge_pages(tensor: &Tensor, kind: Kind) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 * 1024 * 1024;
        let bytes = tensor.numel() * kind.elt_size_in_bytes();
        if bytes < 2 * HUGE {
            return;
        }
        let start = (tensor.data_ptr() as usize).next_multiple_of(HUGE);
        let end = (tensor.data_ptr() as usize + bytes) / HUGE * HUGE;
        if end > start {
            // SAFETY: advice on whole pages of memory that the tensor owns;
            // it changes how they are backed, not their contents.
            unsafe {
                libc::madvise(start as *mut c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
}
