//! Protected key memory, in its own test process because the switch is process-wide.

use kith_keys::NodeKey;
use kith_keys::memory::{protect_secrets, report};

fn vm_lck_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmLck:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn lock_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))
        .and_then(|l| l.split_whitespace().nth(3))
        .map(|v| {
            if v == "unlimited" {
                u64::MAX
            } else {
                v.parse().unwrap_or(0)
            }
        })
        .unwrap_or(0)
}

#[test]
fn protected_keys_are_locked_and_wiped_and_still_sign() {
    let heap_key = NodeKey::generate();
    assert_eq!(
        report().locked_bytes,
        0,
        "nothing is locked before protection is asked for"
    );

    protect_secrets();
    let key = NodeKey::generate();
    let shared = key.clone();
    let after = report();
    assert!(after.enabled);
    if lock_limit() >= 4096 {
        assert!(after.locked_bytes >= 4096, "{after:?}");
        assert_eq!(after.lock_failures, 0, "{after:?}");
        assert!(
            vm_lck_kib().unwrap_or(0) >= 4,
            "VmLck shows the locked page"
        );
    } else {
        assert!(
            after.lock_failures >= 1,
            "a refused lock is reported: {after:?}"
        );
    }

    // The locked key works like any other, and clones share it.
    let sig = shared.sign(b"locked");
    key.node_id().verify(b"locked", &sig).unwrap();
    assert_eq!(key.node_id(), shared.node_id());
    assert_ne!(key.node_id(), heap_key.node_id());

    // The page is unlocked when the last clone goes, not before.
    let locked = report().locked_bytes;
    drop(key);
    assert_eq!(report().locked_bytes, locked);
    drop(shared);
    assert_eq!(
        report().locked_bytes,
        locked.saturating_sub(if lock_limit() >= 4096 { 4096 } else { 0 })
    );
}
