//! NCCL for CUDA tensors, through cudarc's `nccl` module, loaded at run time.
//!
//! One communicator per run, made when the `Fabric` of a multi-process CUDA
//! run is built: rank 0 creates NCCL's unique id, MPI broadcasts it, every
//! rank joins with `ncclCommInitRank` on its own device. Collectives run on
//! the device's current stream (the one libtorch queues the tensors' work
//! on), then the rank waits for the stream without spinning hard, under
//! the same watchdog as the MPI collectives, so a failed rank cannot hang
//! the others forever.
//!
//! cudarc finds NCCL by the names `libnccl.so`, `libnccl.so.{13,12,...}`,
//! but NCCL's own soname is `libnccl.so.2`, which is all the `nvidia-nccl`
//! wheel installed with PyTorch ships. [`library_link_dir`] makes a
//! `libnccl.so` link to it for the processes fabric's launcher starts; with
//! another launcher, the error says how to do the same.

mod state;

use std::ffi::{CStr, c_void};
use std::path::PathBuf;
use std::time::Duration;

use cudarc::nccl::result;
use cudarc::nccl::sys::{self, ncclComm_t, ncclDataType_t, ncclRedOp_t};
use tch::{Device, Kind, Tensor};

use self::state::{Endpoint, Lifecycle};
use super::{MpiComm, ReduceOp, watchdog};
use crate::error::{Error, Result};
use crate::shim;

/// NCCL's message for a result code.
fn describe(code: sys::ncclResult_t) -> String {
    // SAFETY: NCCL returns a static string for every code.
    let text = unsafe { sys::ncclGetErrorString(code) };
    if text.is_null() {
        format!("{code:?}")
    } else {
        // SAFETY: a non-null result is a NUL-terminated static string.
        let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
        format!("{text} ({code:?})")
    }
}

fn check(
    what: &str,
    status: std::result::Result<result::NcclStatus, result::NcclError>,
) -> Result<()> {
    status
        .map(|_| ())
        .map_err(|e| Error::Distributed(format!("{what}: {}", describe(e.0))))
}

/// Where NCCL's library is, when it is installed under its soname only:
/// loaded in this process already (libtorch's CUDA backend links it), or
/// beside libtorch in the `nvidia-nccl` wheel.
fn soname_library() -> Option<PathBuf> {
    if let Some(path) = crate::cuda::loaded("libnccl.so.2") {
        return Some(path);
    }
    let torch_lib = crate::cuda::loaded("libtorch_cpu.so")?;
    let wheel = torch_lib
        .parent()?
        .join("../../nvidia/nccl/lib/libnccl.so.2");
    wheel.exists().then_some(wheel)
}

/// Whether cudarc finds NCCL by its names.
fn cudarc_finds_nccl() -> bool {
    // SAFETY: tries to load libraries by name and unloads them.
    unsafe { sys::is_culib_present() }
}

/// A clear error unless cudarc can load NCCL; never a panic (cudarc panics
/// when the library is missing at the first call).
pub(crate) fn ensure_loadable() -> Result<()> {
    if cudarc_finds_nccl() {
        // `ncclAvg`, which ddp's gradient averaging uses, came in 2.10.
        let (major, minor, patch) = loaded_version()?;
        if (major, minor) < (2, 10) {
            return Err(Error::Distributed(format!(
                "NCCL {major}.{minor}.{patch} is too old: fabric needs 2.10 or later"
            )));
        }
        return Ok(());
    }
    Err(Error::Distributed(match soname_library() {
        Some(path) => format!(
            "NCCL is installed as {} but is loaded by the name libnccl.so, which is not on the library path; \
             link it and put the link on LD_LIBRARY_PATH (`mkdir -p ~/.nccl && ln -sf {} ~/.nccl/libnccl.so && export LD_LIBRARY_PATH=~/.nccl:$LD_LIBRARY_PATH`); \
             fabric's own launcher (a plain `cargo run` with `devices = N`) does this itself",
            path.display(),
            path.display()
        ),
        None => "NCCL, which fabric uses for collectives between CUDA devices, is not installed: \
                 install NVIDIA's libnccl2 and libnccl-dev packages or `pip install nvidia-nccl-cu13`, \
                 or train on the CPU (`accelerator = \"cpu\"`)"
            .into(),
    }))
}

/// For fabric's launcher: a directory holding a `libnccl.so` link to the
/// NCCL library, to put on the ranks' `LD_LIBRARY_PATH`, when cudarc would
/// not find NCCL by itself but it is installed under its soname. `None`
/// when nothing is needed or NCCL is not installed.
pub(crate) fn library_link_dir() -> Option<PathBuf> {
    if cudarc_finds_nccl() {
        return None;
    }
    let target = soname_library()?.canonicalize().ok()?;
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    // A directory of this user's alone (another user could otherwise put
    // a library of theirs in the ranks' path), and in it one directory per
    // NCCL library, so that runs from different environments do not swap
    // each other's link.
    let private = std::env::temp_dir().join(format!("fabric-nccl-{uid}"));
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        match std::fs::DirBuilder::new().mode(0o700).create(&private) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(_) => return None,
        }
        let meta = std::fs::symlink_metadata(&private).ok()?;
        if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
            return None;
        }
    }
    let key = {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        target.hash(&mut hasher);
        hasher.finish()
    };
    let dir = private.join(format!("{key:016x}"));
    std::fs::create_dir_all(&dir).ok()?;
    let link = dir.join("libnccl.so");
    if std::fs::read_link(&link).ok().as_ref() != Some(&target) {
        // Made beside and renamed over, so that concurrent launches never
        // see a missing or half-made link.
        let temporary = dir.join(format!("libnccl.so.{}", std::process::id()));
        let _ = std::fs::remove_file(&temporary);
        std::os::unix::fs::symlink(&target, &temporary).ok()?;
        std::fs::rename(&temporary, &link).ok()?;
    }
    Some(dir)
}

/// The version of the NCCL cudarc loads, as `(major, minor, patch)`; call
/// only once cudarc finds the library.
fn loaded_version() -> Result<(i32, i32, i32)> {
    let code = result::get_nccl_version()
        .map_err(|e| Error::Distributed(format!("ncclGetVersion: {}", describe(e.0))))?;
    Ok((code / 10000, (code % 10000) / 100, code % 100))
}

/// NCCL's version, or why it cannot be loaded or used.
pub(crate) fn version() -> Result<(i32, i32, i32)> {
    ensure_loadable()?;
    loaded_version()
}

/// A live NCCL communicator handle.
struct Handle(ncclComm_t);

// SAFETY: NCCL lets a communicator be used from any thread, provided that
// no two threads use it at once. A `Handle` is owned by one `Lifecycle`,
// which is not `Sync` (a `RefCell`), so the calls on it are made by one
// thread at a time, and `abort`/`destroy` consume it.
unsafe impl Send for Handle {}

impl Endpoint for Handle {
    fn async_error(&self) -> Option<String> {
        let mut state = sys::ncclResult_t::ncclSuccess;
        // SAFETY: `self.0` is a live communicator (a `Handle` is consumed
        // when it is aborted or destroyed); `state` is a valid out-pointer.
        let asked = unsafe { sys::ncclCommGetAsyncError(self.0, &mut state) };
        if asked != sys::ncclResult_t::ncclSuccess {
            return Some(format!("ncclCommGetAsyncError failed: {}", describe(asked)));
        }
        match state {
            sys::ncclResult_t::ncclSuccess | sys::ncclResult_t::ncclInProgress => None,
            failed => Some(describe(failed)),
        }
    }

    fn abort(self) {
        // SAFETY: a live communicator, ended here and never used again;
        // NCCL stops its queued work rather than waiting for it.
        let _ = unsafe { result::comm_abort(self.0) };
    }

    fn destroy(self) {
        // SAFETY: a live communicator whose work is done (every collective
        // waited for its stream), ended here and never used again.
        let _ = unsafe { result::comm_destroy(self.0) };
    }
}

/// An NCCL communicator over every rank of the run, on this rank's device.
pub(crate) struct NcclComm {
    /// The communicator: aborted at once when a collective fails (every
    /// later call is then refused), destroyed when dropped.
    state: Lifecycle<Handle>,
    device: usize,
    rank: usize,
    size: usize,
    timeout: Duration,
}

impl std::fmt::Debug for NcclComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclComm")
            .field("device", &self.device)
            .field("rank", &self.rank)
            .field("size", &self.size)
            .finish()
    }
}

impl NcclComm {
    /// Joins every rank of `mpi` in one NCCL communicator, this rank on
    /// CUDA device `device`. A collective call: every rank must make it.
    pub(crate) fn join(mpi: &MpiComm, device: usize, timeout: Duration) -> Result<Self> {
        // Every rank learns whether NCCL works everywhere before any of
        // them waits in `ncclCommInitRank` for the others.
        let usable = ensure_loadable().and_then(|()| {
            shim::cuda_set_device(device).map_err(|e| {
                Error::Distributed(format!(
                    "NCCL needs CUDA device {device}, which this process cannot use: {e}"
                ))
            })
        });
        let flag = Tensor::f_from_slice(&[i64::from(usable.is_err())])?;
        let failures = mpi.all_reduce(&flag, ReduceOp::Sum)?.f_int64_value(&[0])?;
        usable?;
        if failures > 0 {
            return Err(Error::Distributed(format!(
                "NCCL cannot start on {failures} other rank(s); see their messages"
            )));
        }
        let id = if mpi.rank() == 0 {
            result::get_uniqueid()
                .map_err(|e| Error::Distributed(format!("ncclGetUniqueId: {}", describe(e.0))))?
        } else {
            sys::ncclUniqueId { internal: [0; 128] }
        };
        let bytes: Vec<u8> = id.internal.iter().map(|&c| c as u8).collect();
        let bytes = mpi.broadcast(&Tensor::f_from_slice(&bytes)?, 0)?;
        let bytes = Vec::<u8>::try_from(&bytes)?;
        let mut id = id;
        for (slot, byte) in id.internal.iter_mut().zip(bytes) {
            *slot = byte as std::ffi::c_char;
        }
        let mut comm: ncclComm_t = std::ptr::null_mut();
        {
            let _armed = watchdog::arm("ncclCommInitRank", timeout);
            // SAFETY: `comm` is a valid out-pointer; every rank passes the
            // same id, the world size and its own rank.
            check("ncclCommInitRank", unsafe {
                result::comm_init_rank(&mut comm, mpi.size() as i32, id, mpi.rank() as i32)
            })?;
        }
        Ok(NcclComm {
            state: Lifecycle::new(Handle(comm)),
            device,
            rank: mpi.rank(),
            size: mpi.size(),
            timeout,
        })
    }

    fn datatype(kind: Kind) -> Option<ncclDataType_t> {
        Some(match kind {
            Kind::Float => ncclDataType_t::ncclFloat32,
            Kind::Double => ncclDataType_t::ncclFloat64,
            Kind::Half => ncclDataType_t::ncclFloat16,
            Kind::BFloat16 => ncclDataType_t::ncclBfloat16,
            Kind::Int64 => ncclDataType_t::ncclInt64,
            Kind::Int => ncclDataType_t::ncclInt32,
            Kind::Int8 => ncclDataType_t::ncclInt8,
            Kind::Uint8 | Kind::Bool => ncclDataType_t::ncclUint8,
            _ => return None,
        })
    }

    /// Whether NCCL reduces tensors of `kind` as they are (bools travel as
    /// bytes).
    pub(crate) fn carries(kind: Kind) -> bool {
        kind != Kind::Bool && Self::datatype(kind).is_some()
    }

    /// `tensor` contiguous on this rank's device, with its NCCL type.
    fn wire(&self, tensor: &Tensor, what: &str) -> Result<(Tensor, ncclDataType_t)> {
        if tensor.device() != Device::Cuda(self.device) {
            return Err(Error::Distributed(format!(
                "{what} of a tensor on {:?}: this rank's collectives run on Cuda({}); move it there first",
                tensor.device(),
                self.device
            )));
        }
        let kind = tensor.f_kind()?;
        let datatype = Self::datatype(kind).ok_or_else(|| {
            Error::Distributed(format!(
                "{what} of {kind:?} tensors is not supported by NCCL"
            ))
        })?;
        Ok((tensor.f_contiguous()?, datatype))
    }

    fn stream(&self) -> Result<sys::cudaStream_t> {
        Ok(shim::cuda_current_stream(self.device)? as sys::cudaStream_t)
    }

    /// Runs `enqueue` (which queues one NCCL collective on the current
    /// stream of the live communicator) and waits
    /// [politely](super::polite) until the stream is done; both are
    /// bounded by the watchdog (NCCL may block on the host while it
    /// connects to the other ranks). Any failure, an asynchronous one
    /// included, is an error, and aborts the communicator before this
    /// returns: the caller's tensors are then released only once NCCL no
    /// longer touches them, and every later call is refused.
    fn run(
        &self,
        what: &'static str,
        enqueue: impl FnOnce(ncclComm_t, sys::cudaStream_t) -> Result<()>,
    ) -> Result<()> {
        let armed = watchdog::arm(what, self.timeout);
        self.state.run(what, |handle| {
            enqueue(handle.0, self.stream()?)?;
            state::wait(handle, &armed, what, || shim::cuda_stream_done(self.device))
        })
    }

    /// The element-wise reduction of `input` over every rank, into `output`
    /// (same kind and size, contiguous, on this rank's device).
    pub(crate) fn all_reduce_into(
        &self,
        input: &Tensor,
        output: &Tensor,
        op: ReduceOp,
    ) -> Result<()> {
        self.state.ensure_live("all_reduce")?;
        let (input, datatype) = self.wire(input, "all_reduce")?;
        let kind = input.f_kind()?;
        if !output.is_contiguous() || output.numel() != input.numel() || output.f_kind()? != kind {
            return Err(Error::Distributed(
                "all_reduce_into needs an output of the input's kind and size, contiguous".into(),
            ));
        }
        if input.numel() == 0 {
            return Ok(());
        }
        let nccl_op = match (op, kind) {
            (ReduceOp::Mean, Kind::Bool) => {
                return Err(Error::Distributed(
                    "the mean of a bool tensor is undefined; convert it first".into(),
                ));
            }
            (ReduceOp::Sum, Kind::Bool) | (ReduceOp::Max, Kind::Bool) => ncclRedOp_t::ncclMax,
            (ReduceOp::Min, _) => ncclRedOp_t::ncclMin,
            (ReduceOp::Max, _) => ncclRedOp_t::ncclMax,
            (ReduceOp::Sum, _) => ncclRedOp_t::ncclSum,
            (ReduceOp::Mean, _) => ncclRedOp_t::ncclAvg,
        };
        self.run("ncclAllReduce", |comm, stream| {
            // SAFETY: both tensors are contiguous on this rank's device,
            // with `count` elements of `datatype`, alive until `run` has
            // waited for the stream.
            check("ncclAllReduce", unsafe {
                result::all_reduce(
                    input.data_ptr() as *const c_void,
                    output.data_ptr(),
                    input.numel(),
                    datatype,
                    nccl_op,
                    comm,
                    stream,
                )
            })
        })
    }

    /// The element-wise reduction of `tensor` over every rank, as
    /// [`MpiComm::all_reduce`]: the mean of an integer tensor is f32.
    pub(crate) fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<Tensor> {
        self.state.ensure_live("all_reduce")?;
        if tensor.f_kind()? == Kind::Bool && op == ReduceOp::Mean {
            return Err(Error::Distributed(
                "the mean of a bool tensor is undefined; convert it first".into(),
            ));
        }
        let input = if op == ReduceOp::Mean && !tensor.f_is_floating_point()? {
            tensor.f_to_kind(Kind::Float)?
        } else {
            tensor.shallow_clone()
        };
        let (input, _) = self.wire(&input, "all_reduce")?;
        let output = input.f_empty_like()?;
        self.all_reduce_into(&input, &output, op)?;
        Ok(output)
    }

    /// `tensor` as held by rank `src` (checked by the caller to be a rank),
    /// on every rank.
    pub(crate) fn broadcast(&self, tensor: &Tensor, src: usize) -> Result<Tensor> {
        self.state.ensure_live("broadcast")?;
        let (input, datatype) = self.wire(tensor, "broadcast")?;
        let output = input.f_empty_like()?;
        if input.numel() == 0 {
            return Ok(output);
        }
        self.run("ncclBroadcast", |comm, stream| {
            // SAFETY: contiguous tensors of `count` elements on this
            // device, alive until `run` has waited for the stream.
            check("ncclBroadcast", unsafe {
                result::broadcast(
                    input.data_ptr() as *const c_void,
                    output.data_ptr(),
                    input.numel(),
                    datatype,
                    src as i32,
                    comm,
                    stream,
                )
            })
        })?;
        Ok(output)
    }

    /// Every rank's `tensor`, stacked along a new first dimension.
    pub(crate) fn all_gather(&self, tensor: &Tensor) -> Result<Tensor> {
        self.state.ensure_live("all_gather")?;
        let (input, datatype) = self.wire(tensor, "all_gather")?;
        let mut shape = vec![self.size as i64];
        shape.extend(tensor.size());
        let output = Tensor::f_empty(shape.as_slice(), (input.f_kind()?, input.device()))?;
        if input.numel() == 0 {
            return Ok(output);
        }
        self.run("ncclAllGather", |comm, stream| {
            // SAFETY: `output` holds `size` times `input`'s elements, both
            // contiguous on this device, alive until `run` has waited.
            check("ncclAllGather", unsafe {
                result::all_gather(
                    input.data_ptr() as *const c_void,
                    output.data_ptr(),
                    input.numel(),
                    datatype,
                    comm,
                    stream,
                )
            })
        })?;
        Ok(output)
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        let _armed = watchdog::arm("ncclCommDestroy", self.timeout);
        // Destroys a live communicator (an aborted one is ended already).
        self.state.close();
    }
}
