//! Hash and MAC helpers that write their result straight into a buffer the
//! caller owns (and wipes).
//!
//! `finalize()` in the RustCrypto traits returns the digest by value, i.e. a
//! copy nobody zeroizes; these helpers use `finalize_into` instead, so secret
//! material only ever lands in `Zeroizing` storage. They must never return a
//! secret-derived digest by value.
//!
//! What they cannot do: `hmac` 0.12 and `sha2` 0.10 keep their internal state
//! (the keyed inner/outer SHA-512 states, the pending block) in plain fields
//! that are not wiped on drop. Nothing in this crate can reach into those.

use hmac::digest::FixedOutput;
use hmac::digest::generic_array::GenericArray;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};

pub(crate) type HmacSha512 = Hmac<Sha512>;
pub(crate) type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA512 keyed with `key`, ready for `update`.
pub(crate) fn hmac_sha512(key: &[u8]) -> HmacSha512 {
    // HMAC hashes or pads keys of any length, so this cannot fail.
    HmacSha512::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// HMAC-SHA256 keyed with `key`, ready for `update`.
pub(crate) fn hmac_sha256(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// Finishes `mac` into `out`.
pub(crate) fn finish_sha512(mac: HmacSha512, out: &mut [u8; 64]) {
    FixedOutput::finalize_into(mac, GenericArray::from_mut_slice(out));
}

/// SHA-256 of the concatenation of `parts`, into `out`.
pub(crate) fn sha256_into(parts: &[&[u8]], out: &mut [u8; 32]) {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    Digest::finalize_into(hasher, GenericArray::from_mut_slice(out));
}
