//! Reading and printing a recovery phrase without leaving copies behind.
//!
//! Everything that holds a phrase here is a fixed-size buffer that is wiped on drop and
//! never grows (a growing `String` or `Vec` leaves its old, unwiped allocation behind).
//! Output is written to stdout in one call that ends with a newline, which std's
//! line-buffered stdout passes straight to the file descriptor instead of copying it
//! into its own (never wiped) buffer. This module must never format a secret through
//! `format!`/`println!`, and never read one into a buffer that can reallocate.

use std::io::{self, Read, Write};

use serde::Serialize;
use zeroize::Zeroizing;

use super::output::JSON_VERSION;

/// Room for any phrase-bearing output or input (a 24-word phrase is at most 215 bytes;
/// the numbered backup layout under 1 KiB).
const CAPACITY: usize = 4096;

/// A fixed-capacity, zeroizing byte buffer: writing past its capacity is an error,
/// never a reallocation.
pub struct SecretBuf(Zeroizing<Vec<u8>>);

impl SecretBuf {
    pub fn new() -> SecretBuf {
        SecretBuf(Zeroizing::new(Vec::with_capacity(CAPACITY)))
    }

    #[cfg(test)]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Writes the buffer to stdout in a single call (see the module doc).
    pub fn print(&self) -> io::Result<()> {
        let mut out = io::stdout().lock();
        // An empty line buffer means the bytes go straight through, uncopied.
        out.flush()?;
        out.write_all(&self.0)?;
        out.flush()
    }
}

impl Write for SecretBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.0.len() + buf.len() > self.0.capacity() {
            return Err(io::Error::other("secret output longer than its buffer"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The phrase alone on one line.
pub fn phrase_line(phrase: &str) -> io::Result<SecretBuf> {
    let mut buf = SecretBuf::new();
    buf.write_all(phrase.as_bytes())?;
    buf.write_all(b"\n")?;
    Ok(buf)
}

/// The phrase as numbered words, four to a row, with a warning to write it down.
pub fn phrase_for_backup(phrase: &str) -> io::Result<SecretBuf> {
    let mut buf = SecretBuf::new();
    let count = phrase.split_whitespace().count();
    writeln!(
        buf,
        "Your recovery phrase ({count} words). It is shown only this once.\n\
         Write it down and keep it offline: anyone with it can become this node,\n\
         and without it a lost keystore or passphrase cannot be recovered.\n"
    )?;
    for (n, word) in phrase.split_whitespace().enumerate() {
        let lead = if n % 4 == 0 { "  " } else { " " };
        // `write!` into the buffer itself: no intermediate String.
        write!(buf, "{lead}{:>2}. {word:<10}", n + 1)?;
        if n % 4 == 3 || n + 1 == count {
            buf.write_all(b"\n")?;
        }
    }
    buf.write_all(b"\n")?;
    Ok(buf)
}

/// `data` in the versioned JSON envelope, on one line.
pub fn json<T: Serialize>(data: &T) -> io::Result<SecretBuf> {
    #[derive(Serialize)]
    struct Envelope<'a, T: Serialize> {
        version: u32,
        data: &'a T,
    }
    let mut buf = SecretBuf::new();
    serde_json::to_writer(
        &mut buf,
        &Envelope {
            version: JSON_VERSION,
            data,
        },
    )?;
    buf.write_all(b"\n")?;
    Ok(buf)
}

/// Longest recovery phrase accepted on stdin.
const INPUT_LIMIT: usize = 8192;

/// Reads all of stdin (a recovery phrase) into a fixed, zeroizing buffer.
///
/// Std's stdin keeps an 8 KiB buffer of its own that is never wiped, but passes a read
/// of at least that size straight to the descriptor when it holds nothing: the buffer
/// here is twice the limit, so every read until the limit is passed is such a read.
pub fn read_stdin() -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(vec![0u8; 2 * INPUT_LIMIT]);
    let mut filled = 0;
    let mut stdin = io::stdin().lock();
    loop {
        if filled > INPUT_LIMIT {
            anyhow::bail!("the recovery phrase on stdin is longer than {INPUT_LIMIT} bytes");
        }
        match stdin.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context("cannot read the recovery phrase from stdin")
                );
            }
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_refuses_to_grow() {
        let mut buf = SecretBuf::new();
        buf.write_all(&[1; CAPACITY]).unwrap();
        let before = buf.as_bytes().as_ptr();
        assert!(buf.write_all(&[1]).is_err());
        assert_eq!(buf.as_bytes().as_ptr(), before, "never reallocated");
    }

    #[test]
    fn backup_layout_numbers_every_word() {
        let phrase = ["abandon"; 23].join(" ") + " art";
        let text =
            String::from_utf8(phrase_for_backup(&phrase).unwrap().as_bytes().to_vec()).unwrap();
        assert!(text.contains("(24 words)"), "{text}");
        assert!(text.contains(" 1. abandon"), "{text}");
        assert!(text.contains("24. art"), "{text}");
        assert_eq!(text.lines().filter(|l| l.contains("abandon")).count(), 6);
    }
}
