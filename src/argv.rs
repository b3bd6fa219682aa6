//! The process's command line, as C's `main` received it.
//!
//! strata's entry is C's `main` (`#![no_main]`, see src/main.rs). With glibc,
//! `std::env::args` works anyway: glibc hands the arguments to Rust's
//! start-up hook too. musl hands them to `main` only, so there
//! `std::env::args` is empty, and strata reads its command line from here.

use std::ffi::{CStr, OsString, c_char, c_int};
use std::os::unix::ffi::OsStringExt;
use std::sync::OnceLock;

static ARGS: OnceLock<Vec<OsString>> = OnceLock::new();

/// Keeps `main`'s arguments for [`args_os`].
///
/// # Safety
/// `argv` must hold `argc` valid C strings, as C's `main` receives them.
pub unsafe fn record(argc: c_int, argv: *const *const c_char) {
    let args = (0..usize::try_from(argc).unwrap_or(0))
        // SAFETY: the caller's promise.
        .map(|i| unsafe { CStr::from_ptr(*argv.add(i)) })
        .map(|arg| OsString::from_vec(arg.to_bytes().to_vec()))
        .collect();
    let _ = ARGS.set(args);
}

/// The command line, program name first: what `main` received, else (no
/// `main` of strata's ran: unit tests) `std::env::args_os`.
pub fn args_os() -> Vec<OsString> {
    match ARGS.get() {
        Some(args) => args.clone(),
        None => std::env::args_os().collect(),
    }
}
