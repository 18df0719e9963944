//! The all-reduce through a window of shared memory, where every rank is
//! on one machine: faster than Open MPI's, and without spinning.
//!
//! Every MPI call here is made under `world::lock()`, which
//! [`MpiComm::reduce`] and [`MpiComm`]'s `drop` hold.

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

use mpi::ffi;
use tch::Tensor;

use super::{MpiComm, check};
use crate::collectives::watchdog;
use crate::error::{Error, Result};

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

/// The room in /dev/shm the shared window of `ranks` ranks needs (twice
/// its size, for Open MPI's own segments beside it).
pub(crate) fn window_bytes(ranks: usize) -> u64 {
    2 * (ranks * SLOTS * SLOT_BYTES) as u64
}

/// A window of shared memory in which every rank holds [`SLOTS`] slots of
/// [`SLOT_BYTES`], which every rank can read. Dropping it frees the window
/// (a collective call: every rank drops its slots together), under
/// `world::lock()`.
#[derive(Debug)]
pub(super) struct SharedSlots {
    window: ffi::MPI_Win,
    /// Whether this rank holds the window's passive-target epoch
    /// (`MPI_Win_lock_all`), which must end before the window is freed.
    locked: bool,
    /// Each rank's slots, by rank.
    bases: Vec<*mut u8>,
    /// How many chunks (and final barriers) have gone through the slots.
    chunks: AtomicUsize,
}

impl Drop for SharedSlots {
    fn drop(&mut self) {
        // SAFETY: the window is live, freed once; its epoch, when open, is
        // ended first as MPI requires. Nothing reads `bases` afterwards.
        unsafe {
            if self.locked {
                ffi::MPI_Win_unlock_all(self.window);
            }
            ffi::MPI_Win_free(&mut self.window);
        }
    }
}

impl MpiComm {
    /// The shared window, opened on first use (collectively: every rank
    /// makes its first all-reduce together). `None` where some rank is on
    /// another machine, or `FABRIC_MPI_SHARED_MEMORY=0` is set on some rank.
    pub(super) fn shared_slots(&self) -> Result<Option<&SharedSlots>> {
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
            let sized = check(ffi::MPI_Comm_size(node, &mut node_size), "MPI_Comm_size");
            // Freed whether or not its size could be read.
            check(ffi::MPI_Comm_free(&mut node), "MPI_Comm_free")?;
            sized?;
            let enabled = crate::switches::mpi_shared_memory();
            // Open MPI backs the window with a file in /dev/shm: with too
            // little room there (Docker's default is 64 MiB) touching it
            // would end the process with SIGBUS, so fall back instead (the
            // connector found whether there is room: `window_bytes`).
            let room = self.shared_memory_room;
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
            // Owned from here on: dropping it on the errors below frees
            // the window.
            let mut slots = SharedSlots {
                window,
                locked: false,
                bases: Vec::with_capacity(self.size),
                chunks: AtomicUsize::new(0),
            };
            for rank in 0..self.size {
                let mut size: ffi::MPI_Aint = 0;
                let mut unit: c_int = 0;
                let mut base: *mut u8 = std::ptr::null_mut();
                check(
                    ffi::MPI_Win_shared_query(
                        slots.window,
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
                slots.bases.push(base);
            }
            // One passive-target epoch for the window's lifetime, within
            // which MPI_Win_sync orders the loads and stores.
            check(
                ffi::MPI_Win_lock_all(ffi::MPI_MODE_NOCHECK as c_int, slots.window),
                "MPI_Win_lock_all",
            )?;
            slots.locked = true;
            Ok(Some(slots))
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
    /// barriers wait [politely](crate::collectives::polite::wait_until) and no MPI transfer runs, so
    /// no rank spins.
    pub(super) fn all_reduce_shared(
        &self,
        armed: &watchdog::Armed,
        shared: &SharedSlots,
        input: &Tensor,
        output: &Tensor,
        datatype: ffi::MPI_Datatype,
        op: ffi::MPI_Op,
    ) -> Result<()> {
        let element = input.f_kind()?.elt_size_in_bytes();
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
            self.shared_barrier(armed, shared)?;
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
            self.shared_barrier(armed, shared)?;
            gather(last);
        }
        Ok(())
    }

    /// [`arrive`](Self::arrive), with the shared window's loads and stores
    /// ordered around it.
    fn shared_barrier(&self, armed: &watchdog::Armed, shared: &SharedSlots) -> Result<()> {
        // SAFETY: the window is open and locked by this rank.
        unsafe { check(ffi::MPI_Win_sync(shared.window), "MPI_Win_sync")? };
        self.arrive(armed)?;
        unsafe { check(ffi::MPI_Win_sync(shared.window), "MPI_Win_sync") }
    }
}
