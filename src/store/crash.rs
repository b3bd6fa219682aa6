//! Fault injection for the crash-safety tests: named crash points between
//! the steps of every operation. Compiled in only for debug builds (what
//! `cargo test` runs) or with the `fault-injection` feature; a release build
//! has none.
//!
//! `STRATA_CRASH_AT=NAME` kills the process with SIGKILL when it reaches the
//! point NAME: no destructors, no cleanup, as a power cut or `kill -9`
//! would. `STRATA_CRASH_TRACE=FILE` appends the name of every point reached
//! to FILE, so a test can discover the points of an operation and then
//! crash at each in turn. `STRATA_PAUSE_AT=NAME` with `STRATA_PAUSE_FILE=F`
//! creates F at the point NAME and waits (at most a minute) until F is
//! removed, so a test can run another command exactly there (the first
//! time the process reaches it).

#[cfg(any(debug_assertions, feature = "fault-injection"))]
pub fn point(name: &str) {
    use std::io::Write;
    if let Some(file) = std::env::var_os("STRATA_CRASH_TRACE")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
    {
        let _ = writeln!(f, "{name}");
    }
    // Once per process: an operation that starts over (`rm -r`) passes the
    // point again, where the test has nothing more to do.
    static PAUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if std::env::var_os("STRATA_PAUSE_AT").is_some_and(|at| at == name)
        && let Some(file) = std::env::var_os("STRATA_PAUSE_FILE")
        && !PAUSED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        let file = std::path::Path::new(&file);
        let _ = std::fs::write(file, name);
        for _ in 0..6000 {
            if !file.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    if std::env::var_os("STRATA_CRASH_AT").is_some_and(|at| at == name) {
        // SAFETY: kill(2) on our own pid; nothing after it runs.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

#[cfg(not(any(debug_assertions, feature = "fault-injection")))]
#[inline(always)]
pub fn point(_name: &str) {}
