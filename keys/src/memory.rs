//! Where long-lived secret keys live: locked pages that are kept out of swap and
//! core dumps, when the process asks for it.
//!
//! A daemon calls [`protect_secrets`] once at start; from then on every new
//! [`crate::NodeKey`] is placed in its own page-aligned anonymous mapping that is
//! `mlock`ed and marked `MADV_DONTDUMP`. Where a limit forbids locking
//! (RLIMIT_MEMLOCK), the key still lives in its own mapping and the failure is
//! counted for the daemon to report: a warning, not a failure. Tests, tools and the
//! simulator, which create thousands of keys, keep them on the ordinary heap. This
//! module must never copy a secret out of its cell, and must wipe a cell before
//! unmapping it.
#![allow(unsafe_code)] // mmap/mlock/madvise/munmap and placing a value in the mapping.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static PROTECT: AtomicBool = AtomicBool::new(false);
static LOCKED_BYTES: AtomicUsize = AtomicUsize::new(0);
static LOCK_FAILURES: AtomicUsize = AtomicUsize::new(0);
static DONTDUMP_FAILURES: AtomicUsize = AtomicUsize::new(0);

/// From now on, place new secret keys in locked, non-dumpable pages.
pub fn protect_secrets() {
    PROTECT.store(true, Ordering::SeqCst);
}

/// What protecting secrets achieved so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtectionReport {
    pub enabled: bool,
    /// Bytes of secret pages currently locked in memory.
    pub locked_bytes: usize,
    /// Cells that could not be locked (RLIMIT_MEMLOCK too low).
    pub lock_failures: usize,
    /// Cells that could not be excluded from core dumps.
    pub dontdump_failures: usize,
}

pub fn report() -> ProtectionReport {
    ProtectionReport {
        enabled: PROTECT.load(Ordering::SeqCst),
        locked_bytes: LOCKED_BYTES.load(Ordering::SeqCst),
        lock_failures: LOCK_FAILURES.load(Ordering::SeqCst),
        dontdump_failures: DONTDUMP_FAILURES.load(Ordering::SeqCst),
    }
}

/// A value owned through a pointer, either into its own locked mapping or the heap.
pub(crate) struct SecretCell<T> {
    ptr: NonNull<T>,
    /// Length of the mapping; 0 when the value is on the heap.
    mapped: usize,
    locked: bool,
}

// SAFETY: a SecretCell owns its T exclusively, like a Box.
unsafe impl<T: Send> Send for SecretCell<T> {}
// SAFETY: shared access only hands out &T, like a Box.
unsafe impl<T: Sync> Sync for SecretCell<T> {}

fn page_size() -> usize {
    // SAFETY: sysconf takes no pointers.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|s| *s > 0)
        .unwrap_or(4096)
}

impl<T> SecretCell<T> {
    pub(crate) fn new(value: T) -> Self {
        if !PROTECT.load(Ordering::SeqCst) {
            let ptr = NonNull::from(Box::leak(Box::new(value)));
            return SecretCell {
                ptr,
                mapped: 0,
                locked: false,
            };
        }
        let page = page_size();
        let len = std::mem::size_of::<T>().max(1).div_ceil(page) * page;
        assert!(
            std::mem::align_of::<T>() <= page,
            "page alignment suffices for any key type"
        );
        // SAFETY: an anonymous private mapping with no address hint; checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            LOCK_FAILURES.fetch_add(1, Ordering::SeqCst);
            let ptr = NonNull::from(Box::leak(Box::new(value)));
            return SecretCell {
                ptr,
                mapped: 0,
                locked: false,
            };
        }
        // SAFETY: [addr, addr+len) is our fresh mapping.
        if unsafe { libc::madvise(addr, len, libc::MADV_DONTDUMP) } != 0 {
            DONTDUMP_FAILURES.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: as above.
        let locked = unsafe { libc::mlock(addr, len) } == 0;
        if locked {
            LOCKED_BYTES.fetch_add(len, Ordering::SeqCst);
        } else {
            LOCK_FAILURES.fetch_add(1, Ordering::SeqCst);
        }
        let ptr = addr.cast::<T>();
        let mut value = std::mem::ManuallyDrop::new(value);
        // SAFETY: `ptr` is page-aligned (enough for T) and valid for one T; `value` is
        // moved bitwise into the mapping, then its old bytes on our stack are wiped
        // and never dropped, so the secret has exactly one owner.
        unsafe {
            std::ptr::copy_nonoverlapping(&*value as *const T, ptr, 1);
            zeroize::Zeroize::zeroize(std::slice::from_raw_parts_mut(
                (&mut *value as *mut T).cast::<u8>(),
                std::mem::size_of::<T>(),
            ));
        }
        SecretCell {
            ptr: NonNull::new(ptr).expect("mmap never returns null on success"),
            mapped: len,
            locked,
        }
    }

    pub(crate) fn get(&self) -> &T {
        // SAFETY: ptr points to a live T we own until drop.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> Drop for SecretCell<T> {
    fn drop(&mut self) {
        if self.mapped == 0 {
            // SAFETY: created by Box::leak in `new`.
            drop(unsafe { Box::from_raw(self.ptr.as_ptr()) });
            return;
        }
        let addr = self.ptr.as_ptr().cast::<libc::c_void>();
        // SAFETY: we own the T in the mapping; after dropping it (the key type wipes
        // itself) the whole mapping is wiped, unlocked and unmapped.
        unsafe {
            std::ptr::drop_in_place(self.ptr.as_ptr());
            zeroize::Zeroize::zeroize(std::slice::from_raw_parts_mut(
                addr.cast::<u8>(),
                self.mapped,
            ));
            if self.locked {
                libc::munlock(addr, self.mapped);
                LOCKED_BYTES.fetch_sub(self.mapped, Ordering::SeqCst);
            }
            libc::munmap(addr, self.mapped);
        }
    }
}
