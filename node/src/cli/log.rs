//! Where the daemon's log lines go: standard error, one line per event.
//!
//! Log fields carry text from the network (a relay's close reason, a peer's
//! error). tracing-subscriber already escapes ANSI escape sequences in fields,
//! but not line breaks, so a reason containing `\n2026-... INFO registered` would
//! print a forged log line. This writer escapes every carriage return and every
//! line feed but the one that ends the event, so each event stays one line.
//!
//! It must never drop or reorder log text, and never buffer across events: the
//! formatter hands it each event whole, in one write.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// A [`MakeWriter`] over `make` whose writers keep each event on one line.
pub struct OneLinePerEvent<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for OneLinePerEvent<M> {
    type Writer = OneLine<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        OneLine(self.0.make_writer())
    }
}

/// See [`OneLinePerEvent`].
pub struct OneLine<W>(W);

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(&one_line(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// `event` with `\r` and every `\n` but a final one written as two-character escapes.
fn one_line(event: &[u8]) -> Vec<u8> {
    let (body, end) = match event.strip_suffix(b"\n") {
        Some(body) => (body, &b"\n"[..]),
        None => (event, &b""[..]),
    };
    let mut out = Vec::with_capacity(event.len() + 8);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b => out.push(b),
        }
    }
    out.extend_from_slice(end);
    out
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_reason_from_the_network_cannot_forge_a_log_line() {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(OneLinePerEvent(move || sink.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let reason = "bye\r\n2026-12-04T00:00:00Z  INFO registered at the home relay";
            tracing::warn!(%reason, "home relay connection closed");
            tracing::info!("next");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text:?}");
        assert!(lines[0].contains(r"bye\r\n2026-12-04"), "{text:?}");
        assert!(lines[1].ends_with("next"), "{text:?}");
    }

    #[test]
    fn only_the_final_line_feed_survives() {
        assert_eq!(one_line(b"a\nb\rc\n"), b"a\\nb\\rc\n");
        assert_eq!(one_line(b"no end"), b"no end");
        assert_eq!(one_line(b"\n"), b"\n");
    }
}
