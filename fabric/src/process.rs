//! The process-wide settings a `Fabric` applies when it is built, each a
//! builder option with its default documented there: libtorch's thread
//! count ([`Threads`]) and `malloc`'s trimming (`keep_freed_memory`).

use tch::Device;

use crate::switches;

/// How many threads libtorch's CPU operations use in each process, the
/// builder's [`intra_op_threads`](crate::FabricBuilder::intra_op_threads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Threads {
    /// The cores of a node shared between its CPU ranks (each of `n`
    /// ranks takes `cores / n`), so that ranks do not fight over cores; a
    /// process alone, a CUDA run, or `OMP_NUM_THREADS` set: libtorch's own
    /// choice, left alone. The default.
    #[default]
    Auto,
    /// libtorch's own choice (its default is one thread per core).
    Unchanged,
    /// This many threads.
    Count(usize),
}

/// The settings as the builder resolved them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcessSettings {
    pub(crate) threads: Threads,
    pub(crate) keep_freed_memory: bool,
}

impl ProcessSettings {
    /// Applies the settings for a process on `device` that is one of
    /// `ranks_per_node` ranks of its node.
    pub(crate) fn apply(&self, device: Device, ranks_per_node: usize) {
        let threads = match self.threads {
            Threads::Count(n) => Some(n.max(1)),
            Threads::Auto
                if device == Device::Cpu
                    && ranks_per_node > 1
                    && !switches::omp_num_threads_set() =>
            {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                Some((cores / ranks_per_node).max(1))
            }
            Threads::Auto | Threads::Unchanged => None,
        };
        if let Some(threads) = threads {
            tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
        }
        if self.keep_freed_memory && device == Device::Cpu {
            keep_freed_host_memory();
        }
    }
}

/// Stops glibc's `malloc` from handing freed heap memory back to the system
/// after every step, once per process, unless the environment configures
/// `malloc` itself (`GLIBC_TUNABLES`, `MALLOC_*_`) or
/// `FABRIC_KEEP_FREED_MEMORY=0` opts out.
///
/// libtorch allocates CPU tensors with plain `malloc`. By default glibc
/// trims the top of the heap whenever more than a (dynamically raised)
/// threshold is free there, and a training step frees and reallocates
/// megabytes of activations, gradients and autocast copies: the pages are
/// returned at the end of one step and faulted in, zeroed, in the next.
/// With a fixed mmap threshold of 32 MiB and a trim threshold of 1 GiB, the
/// heap keeps its pages between steps (tensors above 32 MiB are still
/// mapped and unmapped individually). What a step costs then no longer
/// depends on the heap's history: with the default policy it varied from 10
/// to 350 page faults per step depending on a few bytes allocated before
/// training, and `bf16-mixed` steps ran 2.5 times slower.
fn keep_freed_host_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if switches::tune_malloc() {
                // SAFETY: mallopt only changes malloc's tuning parameters.
                unsafe {
                    libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024 * 1024);
                    libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024 * 1024);
                }
            }
        });
    }
}
