//! Making libtorch's CUDA backend available to a tch program.
//!
//! libtorch keeps CUDA in its own library, `libtorch_cuda.so`, which
//! registers the CUDA backend when it is loaded. A Rust binary links it
//! (torch-sys asks for it), but nothing in the binary calls into it, so the
//! linker's default `--as-needed` drops it, and `tch::Cuda::is_available()`
//! is false on a machine with GPUs (tch-rs issues #329, #907, #980; tch's
//! own examples work around it with `-Wl,--no-as-needed` in a build
//! script, which every user crate would need). fabric loads the library at
//! run time instead, from the directory of the `libtorch_cpu.so` the
//! process runs with, when a `Fabric` that may use CUDA is built (the
//! builder's [`load_cuda_backend`](crate::FabricBuilder::load_cuda_backend),
//! on by default; never for `accelerator = "cpu"`). libtorch decides once
//! per process whether CUDA exists, at the first question
//! (`tch::manual_seed` asks too): a program that asks tch about CUDA before
//! it builds its `Fabric` calls [`load_backend`] first. Where no CUDA
//! driver is installed it loads nothing (CUDA could not work, and loading
//! the CUDA libraries costs start-up time); `FABRIC_LOAD_CUDA=0` turns the
//! loading off.

use std::ffi::{CStr, CString, c_int, c_void};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// What loading libtorch's CUDA backend found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// `libtorch_cuda.so` was loaded already (linked with `--no-as-needed`,
    /// or loaded by an earlier call).
    AlreadyLoaded,
    /// `libtorch_cuda.so` was loaded from this path.
    Loaded(PathBuf),
    /// No CUDA driver (`libcuda.so.1`) is installed: nothing was loaded.
    NoDriver,
    /// The libtorch in use has no CUDA backend (a CPU-only build).
    NotInLibtorch,
    /// `FABRIC_LOAD_CUDA=0` asked fabric not to load it.
    Disabled,
    /// Loading failed, with the loader's message.
    Failed(String),
}

/// The paths of the shared objects loaded in this process.
pub(crate) fn loaded_objects() -> Vec<PathBuf> {
    unsafe extern "C" fn collect(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: the loader passes a valid `info`; `data` is the vector
        // given to `dl_iterate_phdr` below.
        unsafe {
            let paths = &mut *(data as *mut Vec<PathBuf>);
            let name = (*info).dlpi_name;
            if !name.is_null() {
                let name = CStr::from_ptr(name).to_string_lossy();
                if !name.is_empty() {
                    paths.push(PathBuf::from(name.as_ref()));
                }
            }
        }
        0
    }
    let mut paths: Vec<PathBuf> = Vec::new();
    // SAFETY: `collect` only reads `info` and pushes to `paths`.
    unsafe { libc::dl_iterate_phdr(Some(collect), &mut paths as *mut _ as *mut c_void) };
    paths
}

/// The loaded object whose file name is `file_name`.
pub(crate) fn loaded(file_name: &str) -> Option<PathBuf> {
    loaded_objects()
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == file_name))
}

/// `dlopen`, returning the loader's message on failure. The handle is
/// never closed: the library stays loaded for the process's life.
pub(crate) fn open(path: &Path, flags: c_int) -> Result<(), String> {
    let Ok(name) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return Err(format!("{} contains a NUL byte", path.display()));
    };
    // SAFETY: `name` is a valid C string; loading a library runs its
    // initialisers, which is the point.
    let handle = unsafe { libc::dlopen(name.as_ptr(), flags) };
    if handle.is_null() {
        // SAFETY: `dlerror` returns the last error of this thread or null.
        let message = unsafe { libc::dlerror() };
        return Err(if message.is_null() {
            format!("{} could not be loaded", path.display())
        } else {
            // SAFETY: a non-null `dlerror` is a valid C string.
            unsafe { CStr::from_ptr(message) }
                .to_string_lossy()
                .into_owned()
        });
    }
    Ok(())
}

/// Whether a CUDA driver library can be loaded.
fn driver_present() -> bool {
    open(
        Path::new("libcuda.so.1"),
        libc::RTLD_LAZY | libc::RTLD_LOCAL,
    )
    .is_ok()
}

/// Loads libtorch's CUDA backend, once per process, where a CUDA driver is
/// installed (see the module's documentation), and says what it found.
/// Call it before anything asks tch about CUDA when that happens before the
/// first `Fabric` is built.
///
/// ```
/// // On a machine without a CUDA driver nothing is loaded.
/// let backend = fabric::cuda::load_backend();
/// # let _ = backend;
/// ```
pub fn load_backend() -> Backend {
    load_backend_once(false)
}

/// [`load_backend`]; `force` loads it even without a CUDA driver (for
/// tests).
pub(crate) fn load_backend_once(force: bool) -> Backend {
    if force {
        return load(true);
    }
    RESULT.get_or_init(|| load(false)).clone()
}

static RESULT: OnceLock<Backend> = OnceLock::new();

/// Whether [`load_backend`] ran already.
#[cfg(feature = "testing")]
pub(crate) fn checked() -> bool {
    RESULT.get().is_some()
}

fn load(force: bool) -> Backend {
    if loaded("libtorch_cuda.so").is_some() {
        return Backend::AlreadyLoaded;
    }
    if !force && !crate::switches::load_cuda() {
        return Backend::Disabled;
    }
    if !force && !driver_present() {
        return Backend::NoDriver;
    }
    let Some(cpu) = loaded("libtorch_cpu.so") else {
        return Backend::Failed("libtorch_cpu.so is not loaded in this process".into());
    };
    let path = cpu.with_file_name("libtorch_cuda.so");
    if !path.exists() {
        return Backend::NotInLibtorch;
    }
    match open(&path, libc::RTLD_NOW | libc::RTLD_GLOBAL) {
        Ok(()) => Backend::Loaded(path),
        Err(message) => Backend::Failed(message),
    }
}
