//! Process hardening at daemon start: no core dumps, no ptrace by other users; and
//! the process's effective uid, which decides whose files and control clients it accepts.
//!
//! A node's private key lives in this process's memory; a core file or a debugger
//! attached by another local user would expose it. This module must never fail the
//! start of a node silently: every step that could not be taken is reported.
#![allow(unsafe_code)] // thin, audited calls into libc: prctl and setrlimit.

use std::io;

/// What hardening achieved; each `Err` says which step failed and why.
#[derive(Debug)]
pub struct HardenReport {
    pub no_dumpable: Result<(), io::Error>,
    pub no_core: Result<(), io::Error>,
}

impl HardenReport {
    /// Messages for each step that failed, for the daemon to log as warnings.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = &self.no_dumpable {
            out.push(format!(
                "could not mark the process non-dumpable (PR_SET_DUMPABLE): {e}"
            ));
        }
        if let Err(e) = &self.no_core {
            out.push(format!("could not disable core dumps (RLIMIT_CORE): {e}"));
        }
        out
    }
}

/// Marks the process non-dumpable and sets the core-file size limit to zero.
pub fn harden_process() -> HardenReport {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes integer arguments only and touches no memory of ours.
    let no_dumpable = if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    };
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `zero` is a valid rlimit that outlives the call.
    let no_core = if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    };
    HardenReport {
        no_dumpable,
        no_core,
    }
}

/// Whether the process is currently dumpable (for tests and `kith status`).
pub fn is_dumpable() -> bool {
    // SAFETY: PR_GET_DUMPABLE takes no pointers.
    unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) == 1 }
}

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no pointers and always succeeds.
    unsafe { libc::geteuid() }
}
