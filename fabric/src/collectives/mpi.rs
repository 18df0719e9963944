//! Collectives over Open MPI, through the `mpi` crate's raw bindings.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use mpi::ffi;
use tch::{Device, Kind, Tensor};

use super::ReduceOp;
use super::watchdog;
use crate::error::{Error, Result};

/// The MPI universe, initialised once per process and finalised at exit.
static UNIVERSE: OnceLock<Mutex<Option<mpi::environment::Universe>>> = OnceLock::new();

/// How long `MPI_Finalize` may take at exit before the process ends anyway
/// (it waits for every rank).
static FINALIZE_TIMEOUT: Mutex<Duration> = Mutex::new(Duration::from_secs(10));

extern "C" fn finalize_at_exit() {
    let timeout = *FINALIZE_TIMEOUT.lock().unwrap_or_else(|p| p.into_inner());
    let _armed = watchdog::arm("MPI_Finalize", timeout);
    if let Some(universe) = UNIVERSE.get() {
        // Dropping the universe calls MPI_Finalize.
        drop(universe.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}

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
/// environment's global ranks.
#[derive(Debug)]
pub(crate) struct MpiComm {
    comm: ffi::MPI_Comm,
    rank: usize,
    size: usize,
    timeout: Duration,
    /// The shared-memory window of [`all_reduce_shared`](Self::all_reduce_shared),
    /// opened by the first all-reduce; `None` where the ranks do not all share
    /// one machine's memory.
    shared: OnceLock<Option<SharedSlots>>,
}

/// Bytes of each of the [`SLOTS`] slots that each rank holds in the shared
/// window: the largest chunk that an all-reduce goes through it in. Every
/// chunk costs one barrier, and where the ranks share their cores with
/// other work every barrier can cost a scheduler time slice: the 2-rank ddp
/// step with two CPU-bound processes beside it took 80 ms in 512 KiB
/// chunks, 55 ms in 1 MiB chunks and 20-41 ms in 2 MiB chunks (Open MPI's
/// all-reduce: 55-61 ms). On idle cores smaller chunks stay in the cache
/// and would be faster (64 MB over 2 ranks: 10 ms in 512 KiB chunks, 11-16
/// ms in 2 MiB chunks).
const SLOT_BYTES: usize = 2 * 1024 * 1024;
/// Slots per rank: chunk `k` (or the final barrier) of the run uses slot
/// `k % SLOTS`.
const SLOTS: usize = 3;

/// A window of shared memory in which every rank holds [`SLOTS`] slots of
/// [`SLOT_BYTES`], which every rank can read.
#[derive(Debug)]
struct SharedSlots {
    window: ffi::MPI_Win,
    /// Each rank's slots, by rank.
    bases: Vec<*mut u8>,
    /// How many chunks (and final barriers) have gone through the slots.
    chunks: AtomicUsize,
}

// SAFETY: an MPI communicator handle is a plain handle; fabric calls MPI
// from one thread at a time (MPI_THREAD_SERIALIZED is requested).
unsafe impl Send for MpiComm {}
unsafe impl Sync for MpiComm {}

impl MpiComm {
    /// Initialises MPI (once per process) and orders its world by
    /// `global_rank`, checking it against the environment's world size.
    pub(crate) fn join(
        global_rank: usize,
        world_size: usize,
        timeout: Duration,
        failure_bound: Duration,
    ) -> Result<Self> {
        let universe = UNIVERSE.get_or_init(|| {
            let universe =
                mpi::initialize_with_threading(mpi::Threading::Serialized).map(|(u, _)| u);
            if universe.is_some() {
                // SAFETY: registers a plain `extern "C"` function.
                unsafe { libc::atexit(finalize_at_exit) };
            }
            Mutex::new(universe)
        });
        if universe.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
            return Err(Error::Distributed(
                "MPI could not be initialised (or was finalised already)".into(),
            ));
        }
        *FINALIZE_TIMEOUT.lock().unwrap_or_else(|p| p.into_inner()) = failure_bound;
        watchdog::start(global_rank);
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
        let mut comm: ffi::MPI_Comm = unsafe { ffi::RSMPI_COMM_NULL };
        let key = c_int::try_from(global_rank)
            .map_err(|_| Error::Distributed("global rank too large".into()))?;
        // SAFETY: as above.
        unsafe {
            check(
                ffi::MPI_Comm_split(ffi::RSMPI_COMM_WORLD, 0, key, &mut comm),
                "MPI_Comm_split",
            )?
        };
        let mut rank: c_int = 0;
        unsafe { check(ffi::MPI_Comm_rank(comm, &mut rank), "MPI_Comm_rank")? };
        let this = MpiComm {
            comm,
            rank: rank as usize,
            size: world_size,
            timeout,
            shared: OnceLock::new(),
        };
        // Every rank must hold a distinct global rank.
        let ranks = this.all_gather(&Tensor::from_slice(&[global_rank as i64]))?;
        let mut seen: Vec<i64> = Vec::try_from(ranks.view([-1]))?;
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
        let kind = tensor.kind();
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

    /// The element-wise reduction of `tensor` over every rank.
    pub(crate) fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<Tensor> {
        let (input, kind) = self.wire(tensor, "all_reduce")?;
        if input.kind() == Kind::Bool && op == ReduceOp::Mean {
            return Err(Error::Distributed(
                "the mean of a bool tensor is undefined; convert it first".into(),
            ));
        }
        let output = input.f_empty_like()?;
        if input.numel() > 0 {
            // SAFETY: reading the predefined operation handles.
            let mpi_op = unsafe {
                match (op, input.kind()) {
                    (ReduceOp::Sum | ReduceOp::Mean, Kind::Bool) => ffi::RSMPI_LOR,
                    (ReduceOp::Sum | ReduceOp::Mean, _) => ffi::RSMPI_SUM,
                    (ReduceOp::Max, Kind::Bool) => ffi::RSMPI_LOR,
                    (ReduceOp::Min, Kind::Bool) => ffi::RSMPI_LAND,
                    (ReduceOp::Max, _) => ffi::RSMPI_MAX,
                    (ReduceOp::Min, _) => ffi::RSMPI_MIN,
                }
            };
            let datatype = Self::datatype(input.kind())
                .ok_or_else(|| Error::Distributed("unsupported dtype".into()))?;
            advise_huge_pages(&output);
            let _armed = watchdog::arm("all_reduce", self.timeout);
            self.reduce(&input, &output, datatype, mpi_op)?;
        }
        let output = if op == ReduceOp::Mean {
            if input.is_floating_point() {
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
            output.kind()
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
        let direct = input.device() == Device::Cpu
            && input.is_contiguous()
            && output.is_contiguous()
            && input.kind() == output.kind()
            && input.numel() == output.numel()
            && op != ReduceOp::Mean;
        let datatype =
            Self::datatype(input.kind()).filter(|_| direct && input.kind() != Kind::Bool);
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
        let _armed = watchdog::arm("all_reduce", self.timeout);
        self.reduce(input, output, datatype, mpi_op)
    }

    /// Reduces `input` into `output` (contiguous CPU tensors of one kind
    /// and size, `datatype` on the wire) over every rank: through shared
    /// memory where every rank is on this machine, else with Open MPI's
    /// all-reduce. Either way a rank that arrives first waits without
    /// spinning.
    fn reduce(
        &self,
        input: &Tensor,
        output: &Tensor,
        datatype: ffi::MPI_Datatype,
        op: ffi::MPI_Op,
    ) -> Result<()> {
        if let Some(shared) = self.shared_slots()? {
            return self.all_reduce_shared(shared, input, output, datatype, op);
        }
        // Wait for every rank without spinning, then reduce with Open MPI's
        // blocking all-reduce: its tuned algorithms move data faster than
        // the nonblocking ones (a 3.2 MB bucket: 0.63 ms against 0.89 ms
        // with MPI_Iallreduce), and with the ranks lined up its spinning is
        // limited to the transfer itself.
        self.arrive()?;
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

    /// The shared window, opened on first use (collectively: every rank
    /// makes its first all-reduce together). `None` where some rank is on
    /// another machine, or `FABRIC_MPI_SHARED_MEMORY=0` is set on some rank.
    fn shared_slots(&self) -> Result<Option<&SharedSlots>> {
        if let Some(shared) = self.shared.get() {
            return Ok(shared.as_ref());
        }
        let opened = self.open_shared_slots()?;
        Ok(self.shared.get_or_init(|| opened).as_ref())
    }

    fn open_shared_slots(&self) -> Result<Option<SharedSlots>> {
        // SAFETY: MPI is initialised; every out-pointer is valid for the
        // call, and every rank makes the same collective calls in order.
        unsafe {
            let mut node = ffi::RSMPI_COMM_NULL;
            check(
                ffi::MPI_Comm_split_type(
                    self.comm,
                    ffi::RSMPI_COMM_TYPE_SHARED,
                    0,
                    ffi::RSMPI_INFO_NULL,
                    &mut node,
                ),
                "MPI_Comm_split_type",
            )?;
            let mut node_size: c_int = 0;
            check(ffi::MPI_Comm_size(node, &mut node_size), "MPI_Comm_size")?;
            check(ffi::MPI_Comm_free(&mut node), "MPI_Comm_free")?;
            let enabled = crate::switches::mpi_shared_memory();
            // Open MPI backs the window with a file in /dev/shm: with too
            // little room there (Docker's default is 64 MiB) touching it
            // would end the process with SIGBUS, so fall back instead.
            let room = shared_memory_room(2 * self.size * SLOTS * SLOT_BYTES);
            let mine = c_int::from(enabled && room && node_size as usize == self.size);
            // Every rank must decide alike.
            let mut all: c_int = 0;
            check(
                ffi::MPI_Allreduce(
                    &mine as *const c_int as *const c_void,
                    &mut all as *mut c_int as *mut c_void,
                    1,
                    ffi::RSMPI_INT32_T,
                    ffi::RSMPI_MIN,
                    self.comm,
                ),
                "MPI_Allreduce",
            )?;
            if all == 0 {
                return Ok(None);
            }
            let mut info = ffi::RSMPI_INFO_NULL;
            check(ffi::MPI_Info_create(&mut info), "MPI_Info_create")?;
            // Each rank's slots on its own pages.
            check(
                ffi::MPI_Info_set(info, c"alloc_shared_noncontig".as_ptr(), c"true".as_ptr()),
                "MPI_Info_set",
            )?;
            let mut base: *mut u8 = std::ptr::null_mut();
            let mut window: ffi::MPI_Win = std::mem::zeroed();
            let allocated = ffi::MPI_Win_allocate_shared(
                (SLOTS * SLOT_BYTES) as ffi::MPI_Aint,
                1,
                info,
                self.comm,
                &mut base as *mut *mut u8 as *mut c_void,
                &mut window,
            );
            ffi::MPI_Info_free(&mut info);
            check(allocated, "MPI_Win_allocate_shared")?;
            let mut bases = Vec::with_capacity(self.size);
            for rank in 0..self.size {
                let mut size: ffi::MPI_Aint = 0;
                let mut unit: c_int = 0;
                let mut base: *mut u8 = std::ptr::null_mut();
                check(
                    ffi::MPI_Win_shared_query(
                        window,
                        rank as c_int,
                        &mut size,
                        &mut unit,
                        &mut base as *mut *mut u8 as *mut c_void,
                    ),
                    "MPI_Win_shared_query",
                )?;
                if base.is_null() || (size as usize) < SLOTS * SLOT_BYTES {
                    return Err(Error::Distributed(format!(
                        "rank {rank}'s shared memory is missing"
                    )));
                }
                bases.push(base);
            }
            // One passive-target epoch for the window's lifetime, within
            // which MPI_Win_sync orders the loads and stores.
            check(
                ffi::MPI_Win_lock_all(ffi::MPI_MODE_NOCHECK as c_int, window),
                "MPI_Win_lock_all",
            )?;
            Ok(Some(SharedSlots {
                window,
                bases,
                chunks: AtomicUsize::new(0),
            }))
        }
    }

    /// The all-reduce through shared memory, chunk by chunk, pipelined so
    /// that each chunk costs one barrier. For chunk `k`: each rank copies
    /// its input into its slot; barrier; each rank copies the parts of
    /// chunk `k - 1` that the others reduced from their slots, then reduces
    /// its own part of chunk `k` (the `r`-th of `size` parts for rank `r`)
    /// over every rank's slot into its slot and its output. A last barrier
    /// precedes the copy of the last chunk's parts. Each part is reduced
    /// once, in one order, so every rank gets the same bits. Chunks (and
    /// the last barrier) take the three slots in turn: a rank writes a slot
    /// again only after the barrier that follows every read of it. The
    /// barriers wait [politely](Self::wait) and no MPI transfer runs, so
    /// no rank spins.
    fn all_reduce_shared(
        &self,
        shared: &SharedSlots,
        input: &Tensor,
        output: &Tensor,
        datatype: ffi::MPI_Datatype,
        op: ffi::MPI_Op,
    ) -> Result<()> {
        let element = input.kind().elt_size_in_bytes();
        let count = input.numel();
        // As few chunks as the slots allow, of equal size.
        let chunks = (count * element).div_ceil(SLOT_BYTES);
        let per_chunk = count.div_ceil(chunks.max(1));
        let source = input.data_ptr() as *const u8;
        let target = output.data_ptr() as *mut u8;
        // The part of a chunk of `len` elements that `rank` reduces.
        let part = |len: usize, rank: usize| (len * rank / self.size, len * (rank + 1) / self.size);
        let next_slot = || shared.chunks.fetch_add(1, Ordering::Relaxed) % SLOTS * SLOT_BYTES;
        // The previous chunk's slot, offset and length, whose other parts
        // are still to be copied.
        let mut pending: Option<(usize, usize, usize)> = None;
        // SAFETY (for the blocks below): every rank's slots hold SLOT_BYTES
        // >= `per_chunk` elements each; `input` and `output` hold `count`
        // elements; the barriers order every read of a slot after its
        // writes and before it is written again (see above), and each rank
        // writes only its own slots.
        let gather = |(slot, offset, len): (usize, usize, usize)| unsafe {
            for rank in (0..self.size).filter(|&r| r != self.rank) {
                let (lo, hi) = part(len, rank);
                std::ptr::copy_nonoverlapping(
                    shared.bases[rank].add(slot + lo * element),
                    target.add((offset + lo) * element),
                    (hi - lo) * element,
                );
            }
        };
        let mut offset = 0;
        while offset < count {
            let len = per_chunk.min(count - offset);
            let slot = next_slot();
            let mine = unsafe { shared.bases[self.rank].add(slot) };
            unsafe {
                std::ptr::copy_nonoverlapping(source.add(offset * element), mine, len * element);
            }
            self.shared_barrier(shared)?;
            if let Some(previous) = pending.take() {
                gather(previous);
            }
            let (lo, hi) = part(len, self.rank);
            if hi > lo {
                for rank in (0..self.size).filter(|&r| r != self.rank) {
                    // SAFETY: as above.
                    unsafe {
                        check(
                            ffi::MPI_Reduce_local(
                                shared.bases[rank].add(slot + lo * element) as *const c_void,
                                mine.add(lo * element) as *mut c_void,
                                (hi - lo) as c_int,
                                datatype,
                                op,
                            ),
                            "MPI_Reduce_local",
                        )?;
                    }
                }
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        mine.add(lo * element),
                        target.add((offset + lo) * element),
                        (hi - lo) * element,
                    );
                }
            }
            pending = Some((slot, offset, len));
            offset += len;
        }
        if let Some(last) = pending {
            next_slot();
            self.shared_barrier(shared)?;
            gather(last);
        }
        Ok(())
    }

    /// [`arrive`](Self::arrive), with the shared window's loads and stores
    /// ordered around it.
    fn shared_barrier(&self, shared: &SharedSlots) -> Result<()> {
        // SAFETY: the window is open and locked by this rank.
        unsafe { check(ffi::MPI_Win_sync(shared.window), "MPI_Win_sync")? };
        self.arrive()?;
        unsafe { check(ffi::MPI_Win_sync(shared.window), "MPI_Win_sync") }
    }

    /// Returns once every rank has called it, having waited
    /// [politely](Self::wait) at a nonblocking barrier.
    fn arrive(&self) -> Result<()> {
        // SAFETY: reading the predefined null request.
        let mut request = unsafe { ffi::RSMPI_REQUEST_NULL };
        // SAFETY: MPI is initialised; `request` is written by the call.
        unsafe { check(ffi::MPI_Ibarrier(self.comm, &mut request), "MPI_Ibarrier")? };
        Self::wait(&mut request, "MPI_Ibarrier")
    }

    /// Waits for a nonblocking operation, politely: Open MPI's blocking
    /// calls spin on the CPU until the other ranks arrive, which on a busy
    /// machine takes the CPU from the very rank being waited for (a 2-rank
    /// ddp step on 2 cores shared with builds took 29-88 ms spinning, 18-22
    /// ms waiting this way). This polls (each poll also progresses the
    /// transfer), then yields, then sleeps 20 us between polls, so that a
    /// rank that waits long gives its core away; the sleeps add at most one
    /// interval to a wait.
    fn wait(request: &mut ffi::MPI_Request, what: &str) -> Result<()> {
        let mut polls = 0u32;
        loop {
            let mut done: c_int = 0;
            // SAFETY: `request` is an active request of this process.
            unsafe {
                check(
                    ffi::MPI_Test(request, &mut done, ffi::RSMPI_STATUS_IGNORE),
                    what,
                )?;
            }
            if done != 0 {
                break;
            }
            if polls >= 200 {
                std::thread::sleep(Duration::from_micros(20));
            } else if polls >= 50 {
                std::thread::yield_now();
            }
            polls = polls.saturating_add(1);
        }
        Ok(())
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
        let buffer = input.copy();
        if buffer.numel() > 0 {
            let datatype = Self::datatype(buffer.kind())
                .ok_or_else(|| Error::Distributed("unsupported dtype".into()))?;
            let _armed = watchdog::arm("broadcast", self.timeout);
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
        let output = Tensor::f_empty(shape.as_slice(), (input.kind(), Device::Cpu))?;
        let datatype = Self::datatype(input.kind())
            .ok_or_else(|| Error::Distributed("unsupported dtype".into()))?;
        let _armed = watchdog::arm("all_gather", self.timeout);
        // SAFETY: `output` holds `size` times `input`'s elements, both
        // contiguous CPU tensors of `datatype`.
        unsafe {
            let count = Self::count(&input)?;
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
        // SAFETY: MPI is initialised.
        unsafe { check(ffi::MPI_Barrier(self.comm), "MPI_Barrier") }
    }
}

/// Whether /dev/shm has `bytes` free (true where it cannot be asked).
fn shared_memory_room(bytes: usize) -> bool {
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-pointer.
    if unsafe { libc::statvfs(c"/dev/shm".as_ptr(), &mut stats) } != 0 {
        return true;
    }
    (stats.f_bavail as u128) * (stats.f_frsize as u128) >= bytes as u128
}

/// Asks the kernel to back a large, fresh output tensor with huge pages:
/// with fabric's 32 MiB mmap threshold every 64 MB result is a new mapping,
/// and faulting it in 4 KiB pages took longer than the all-reduce itself
/// (16,384 faults: 55 ms against 19 ms with 2 MiB pages, 2 ranks). Only
/// whole 2 MiB pages inside the tensor are advised; where transparent huge
/// pages are off (or always on) this changes nothing.
fn advise_huge_pages(tensor: &Tensor) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 * 1024 * 1024;
        let bytes = tensor.numel() * tensor.kind().elt_size_in_bytes();
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
