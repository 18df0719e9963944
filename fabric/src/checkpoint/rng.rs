//! The states of libtorch's default random generators (`csrc/rng.cpp`), the
//! `rng` entry of a [`State`](super::State): what dropout, `randn` and
//! every other random operation of this process draws next.

use std::ffi::{CStr, c_char, c_int};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

unsafe extern "C" {
    fn fabric_rng_get_state(
        device_type: c_int,
        index: c_int,
        out: *mut u8,
        out_len: usize,
        len: *mut usize,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn fabric_rng_set_state(
        device_type: c_int,
        index: c_int,
        data: *const u8,
        len: usize,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
}

const CPU: c_int = 0;
const CUDA: c_int = 1;

fn shim_error(what: &str, error: &[c_char]) -> Error {
    // SAFETY: the shim NUL-terminates what it writes into `error`, which was
    // zeroed, so it holds a NUL within its length in every case.
    let message = unsafe { CStr::from_ptr(error.as_ptr()) }.to_string_lossy();
    Error::Torch(tch::TchError::Torch(format!("{what}: {message}")))
}

/// The state of one default generator.
fn get_state(device_type: c_int, index: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; 8192];
    loop {
        let mut len = 0usize;
        let mut error = [0 as c_char; 512];
        // SAFETY: `out` and `error` are valid for writes of the lengths
        // passed, and `len` for one `usize`; the shim writes no further.
        let rc = unsafe {
            fabric_rng_get_state(
                device_type,
                index as c_int,
                out.as_mut_ptr(),
                out.len(),
                &mut len,
                error.as_mut_ptr(),
                error.len(),
            )
        };
        match rc {
            0 => {
                out.truncate(len);
                return Ok(out);
            }
            2 => out.resize(len, 0),
            _ => return Err(shim_error("reading a random generator's state", &error)),
        }
    }
}

fn set_state(device_type: c_int, index: usize, state: &[u8]) -> Result<()> {
    let mut error = [0 as c_char; 512];
    // SAFETY: `state` is valid for reads of its length and `error` for
    // writes of its own; the shim copies `state` before returning.
    let rc = unsafe {
        fabric_rng_set_state(
            device_type,
            index as c_int,
            state.as_ptr(),
            state.len(),
            error.as_mut_ptr(),
            error.len(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(shim_error("setting a random generator's state", &error))
    }
}

/// The number of CUDA devices whose generators are saved: 0 where CUDA is
/// not available (a machine without a GPU, a CPU build of libtorch).
fn cuda_devices() -> usize {
    if tch::Cuda::is_available() {
        usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
    } else {
        0
    }
}

/// One process's generator states, as PyTorch's `torch.get_rng_state()` and
/// `torch.cuda.get_rng_state_all()`; hexadecimal in `meta.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RngState {
    #[serde(with = "hex")]
    cpu: Vec<u8>,
    #[serde(default, with = "hex_list")]
    cuda: Vec<Vec<u8>>,
}

impl RngState {
    /// The generators' states now.
    pub(crate) fn capture() -> Result<Self> {
        let cpu = get_state(CPU, 0)?;
        let cuda = (0..cuda_devices())
            .map(|i| get_state(CUDA, i))
            .collect::<Result<_>>()?;
        Ok(RngState { cpu, cuda })
    }

    /// Why this state cannot be restored in this process, if it cannot: a
    /// CPU state of another size, or more CUDA generators than devices.
    pub(crate) fn check(&self) -> Option<String> {
        let cpu = match get_state(CPU, 0) {
            Ok(cpu) => cpu,
            Err(e) => return Some(e.to_string()),
        };
        if cpu.len() != self.cpu.len() {
            return Some(format!(
                "the CPU generator's state has {} bytes in the checkpoint and {} in this libtorch",
                self.cpu.len(),
                cpu.len()
            ));
        }
        let devices = cuda_devices();
        if self.cuda.len() > devices {
            return Some(format!(
                "the checkpoint holds the generators of {} CUDA devices, this process sees {devices}",
                self.cuda.len()
            ));
        }
        None
    }

    /// Sets the generators to this state: the CPU one, and those of the
    /// CUDA devices it holds (others keep theirs).
    pub(crate) fn restore(&self) -> Result<()> {
        set_state(CPU, 0, &self.cpu)?;
        for (index, state) in self.cuda.iter().enumerate() {
            set_state(CUDA, index, state)?;
        }
        Ok(())
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> std::result::Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return Err("not a hexadecimal string of whole bytes".into());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

mod hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::to_hex(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        super::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

mod hex_list {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(list: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(|b| super::to_hex(b)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|t| super::from_hex(t).map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Restoring and drawing again is tested in tests/resume.rs, in a process
    // of its own: the other tests of this binary draw from the same
    // generator on other threads.

    #[test]
    fn the_state_survives_json() {
        let state = RngState::capture().unwrap();
        let json = serde_json::to_value(&state).unwrap();
        assert!(json["cpu"].as_str().unwrap().len() >= 2 * 5000, "{json}");
        let back: RngState = serde_json::from_value(json).unwrap();
        assert_eq!(back, state);
        assert_eq!(state.check(), None);
        let bad = serde_json::json!({"cpu": "0g"});
        assert!(serde_json::from_value::<RngState>(bad).is_err());
    }

    #[test]
    fn a_state_of_the_wrong_size_is_an_error() {
        let mut state = RngState::capture().unwrap();
        state.cpu.truncate(10);
        assert!(state.check().unwrap().contains("10 bytes"));
        let err = state.restore().unwrap_err().to_string();
        assert!(err.contains("random generator"), "{err}");
    }
}
