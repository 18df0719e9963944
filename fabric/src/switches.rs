//! Every environment variable that changes what fabric does, read here and
//! nowhere else (the cluster environments read their launchers' variables
//! in `environment/`). The README lists them.
//!
//! | variable | effect |
//! |---|---|
//! | `LT_ACCELERATOR`, `LT_STRATEGY`, `LT_DEVICES`, `LT_NUM_NODES`, `LT_PRECISION` | override the options, as Lightning's CLI |
//! | `LT_CLI_USED=1` | an option given in code that differs from its `LT_*` variable is an error |
//! | `FABRIC_MPI_SHARED_MEMORY=0` | all-reduces use `MPI_Allreduce`, not the shared-memory window |
//! | `FABRIC_LOAD_CUDA=0` | libtorch's CUDA backend is not loaded (as `load_cuda_backend(false)`) |
//! | `FABRIC_KEEP_FREED_MEMORY=0` | glibc's `malloc` keeps its default trimming (as `keep_freed_memory(false)`) |
//! | `FABRIC_LAUNCHED`, `FABRIC_SPAWN_RESULT` | set by fabric's launcher in the ranks it starts (not for users) |
//!
//! Read too, as their owners define them: `OMP_NUM_THREADS` (set: fabric
//! leaves libtorch's thread count alone), `GLIBC_TUNABLES` and `MALLOC_*_`
//! (set: fabric leaves `malloc` alone).

use std::ffi::OsString;

/// Set by fabric's launcher in the ranks it starts.
pub(crate) const LAUNCHED: &str = "FABRIC_LAUNCHED";
/// Where a `ddp_spawn` worker of rank 0 writes the function's result.
pub(crate) const SPAWN_RESULT: &str = "FABRIC_SPAWN_RESULT";

/// A variable's value, `None` when unset.
pub(crate) fn var(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

/// Whether a variable is set to `0` (a switch turned off).
fn off(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim() == "0")
}

/// Whether fabric's launcher started this process (as a rank).
pub(crate) fn launched() -> bool {
    var(LAUNCHED).is_some()
}

/// Where this `ddp_spawn` worker hands rank 0's result back, if it is one.
pub(crate) fn spawn_result_path() -> Option<OsString> {
    var(SPAWN_RESULT)
}

/// Whether all-reduces may use the shared-memory window.
#[cfg(feature = "mpi")]
pub(crate) fn mpi_shared_memory() -> bool {
    !off("FABRIC_MPI_SHARED_MEMORY")
}

/// Whether libtorch's CUDA backend may be loaded.
pub(crate) fn load_cuda() -> bool {
    !off("FABRIC_LOAD_CUDA")
}

/// Whether fabric may tune `malloc`: not opted out, and `malloc` not
/// configured through the environment already.
pub(crate) fn tune_malloc() -> bool {
    let configured = std::env::vars_os().any(|(name, _)| {
        let name = name.to_string_lossy();
        name == "GLIBC_TUNABLES" || (name.starts_with("MALLOC_") && name.ends_with('_'))
    });
    !configured && !off("FABRIC_KEEP_FREED_MEMORY")
}

/// Whether the thread count is configured through `OMP_NUM_THREADS`.
pub(crate) fn omp_num_threads_set() -> bool {
    var("OMP_NUM_THREADS").is_some()
}
