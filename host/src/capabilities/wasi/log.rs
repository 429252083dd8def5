//! Guest stdout and stderr, delivered to the host's `tracing` log one line at a time.
//!
//! A guest has no terminal and no files of the host's; what it prints is an operator's
//! concern, so it becomes log events tagged with the app (and, through the request's span,
//! with the request).
//!
//! Lines are put together per request and stream, across all of the stream's handles (a
//! line written through several handles is one event). Output is bounded per request, across
//! all of its handles: past the bytes or lines allowed
//! (`--guest-log-max-bytes`, `--guest-log-max-lines`) it is dropped and counted, and one
//! event says so. Without a bound, 1 MiB of newlines made a million log events. Control
//! characters are escaped, so a guest cannot forge or hide log lines with `\r` or terminal
//! escapes.
//!
//! The app's secrets never reach the log as the guest printed them: every log event shows
//! `[secret]` in place of a secret's value and of each of its lines (split at `\r` and `\n`,
//! see [`Variables::secrets`](crate::capabilities::Variables::secrets)), so a PEM key printed
//! whole, or line by line, or with `\r\n` endings, shows none of its lines. A line too long
//! for one event is never cut inside a secret (see [`GuestOutput::push`]). This keeps a
//! secret out of the log when a guest prints it by accident; it is no wall against a guest
//! that means to leak it, which holds the value and can reshape it (or answer with it).

use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line kept in one log event; the rest of a longer line starts a new event, so a
/// guest cannot make the host buffer without bound.
const MAX_LINE: usize = 16 * 1024;

/// What one request may still log, shared by its stdout and stderr and all their handles.
pub struct GuestOutput {
    app: Arc<str>,
    /// The app's secrets' values and their lines, longest first, which a line shows as
    /// `[secret]`: a guest that prints its configuration must not put a secret into the
    /// host's log.
    secrets: Arc<[String]>,
    left: Mutex<Allowance>,
    /// The line each stream (stdout, stderr) has begun and not ended: shared by all of the
    /// stream's handles, so a line written through several of them is one event, as it is
    /// one line on a terminal.
    partial: Mutex<[Vec<u8>; 2]>,
}

/// The streams, by their index in [`GuestOutput::partial`].
const STREAMS: [&str; 2] = ["stdout", "stderr"];

struct Allowance {
    bytes: usize,
    lines: usize,
    dropped: usize,
}

impl GuestOutput {
    /// The output of one request of `app`: `bytes` and `lines` at most, with `secrets`
    /// hidden.
    pub fn new(
        app: &Arc<str>,
        secrets: &Arc<[String]>,
        bytes: usize,
        lines: usize,
    ) -> Arc<GuestOutput> {
        Arc::new(GuestOutput {
            app: app.clone(),
            secrets: secrets.clone(),
            left: Mutex::new(Allowance {
                bytes,
                lines,
                dropped: 0,
            }),
            partial: Mutex::default(),
        })
    }

    /// How many of `len` bytes written may still be kept; the rest is counted as dropped,
    /// and the first drop is announced.
    fn admit(&self, len: usize) -> usize {
        let mut left = self.left.lock().unwrap_or_else(|e| e.into_inner());
        let kept = len.min(left.bytes);
        left.bytes -= kept;
        if kept < len {
            if left.dropped == 0 {
                let _request = crate::request::log::enter();
                tracing::warn!(
                    target: "guest",
                    app = &*self.app,
                    "guest output over this request's limit: the rest is dropped \
                     (--guest-log-max-bytes, --guest-log-max-lines)"
                );
            }
            left.dropped += len - kept;
        }
        kept
    }

    /// Whether one more line may be logged; a line refused is counted as dropped.
    fn take_line(&self, len: usize) -> bool {
        let mut left = self.left.lock().unwrap_or_else(|e| e.into_inner());
        if left.lines == 0 {
            left.dropped += len.max(1);
            return false;
        }
        left.lines -= 1;
        if left.lines == 0 {
            left.bytes = 0;
        }
        true
    }
}

impl GuestOutput {
    /// Takes what the guest wrote to `stream`, and logs each line it completes.
    fn push(&self, stream: usize, bytes: &[u8]) {
        let bytes = &bytes[..self.admit(bytes.len())];
        let mut partial = self.partial.lock().unwrap_or_else(|e| e.into_inner());
        self.split(&mut partial[stream], bytes, |line| self.emit(stream, line));
    }

    /// Adds `bytes` to the unfinished `line` and hands `event` each log event they complete:
    /// a line, or a part of [`MAX_LINE`] bytes at most of a longer one, cut where no secret
    /// is split (see [`GuestOutput::cut`]).
    fn split(&self, line: &mut Vec<u8>, mut bytes: &[u8], mut event: impl FnMut(&[u8])) {
        while !bytes.is_empty() {
            let room = bytes.len().min(MAX_LINE - line.len());
            if let Some(newline) = bytes[..room].iter().position(|b| *b == b'\n') {
                line.extend_from_slice(&bytes[..newline]);
                event(line);
                line.clear();
                bytes = &bytes[newline + 1..];
                continue;
            }
            line.extend_from_slice(&bytes[..room]);
            bytes = &bytes[room..];
            if line.len() == MAX_LINE {
                let cut = self.cut(line);
                event(&line[..cut]);
                line.drain(..cut);
            }
        }
    }

    /// Where a line of [`MAX_LINE`] bytes may be cut: before its last bytes, as many as the
    /// longest secret has but one (a secret may have begun there, its rest still to come),
    /// and then before any secret the cut would split. So each secret is whole in one event,
    /// where [`GuestOutput::hide`] finds it. (Only a secret longer than half of
    /// [`MAX_LINE`], or one that overlaps itself printed over and over, may still be split.)
    fn cut(&self, line: &[u8]) -> usize {
        let longest = self.secrets.first().map_or(0, String::len);
        let hold = longest.saturating_sub(1).min(MAX_LINE / 2);
        let mut cut = line.len() - hold;
        while let Some(start) = self
            .secrets
            .iter()
            .filter_map(|secret| {
                let secret = secret.as_bytes();
                let from = cut.saturating_sub(secret.len().saturating_sub(1));
                (from..cut).find(|&at| line[at..].starts_with(secret))
            })
            .min()
        {
            cut = start;
        }
        if cut == 0 { line.len() - hold } else { cut }
    }

    /// `line` as text, with `[secret]` in place of every secret and every line of one.
    fn hide<'a>(&self, line: &'a [u8]) -> std::borrow::Cow<'a, str> {
        let mut line = String::from_utf8_lossy(line);
        for secret in self.secrets.iter() {
            if line.contains(secret.as_str()) {
                line = line.replace(secret.as_str(), "[secret]").into();
            }
        }
        line
    }

    fn emit(&self, stream: usize, line: &[u8]) {
        if !self.take_line(line.len()) {
            return;
        }
        let line = self.hide(line);
        let line = escape(&line);
        let _request = crate::request::log::enter();
        tracing::info!(target: "guest", app = &*self.app, stream = STREAMS[stream], "{line}");
    }
}

impl Drop for GuestOutput {
    /// At the end of the request: the lines left unfinished, then what was cut.
    fn drop(&mut self) {
        let partial = std::mem::take(self.partial.get_mut().unwrap_or_else(|e| e.into_inner()));
        for (stream, line) in partial.iter().enumerate() {
            if !line.is_empty() {
                self.emit(stream, line);
            }
        }
        let left = self.left.get_mut().unwrap_or_else(|e| e.into_inner());
        if left.dropped > 0 {
            let _request = crate::request::log::enter();
            tracing::warn!(
                target: "guest",
                app = &*self.app,
                dropped_bytes = left.dropped,
                "guest output was cut: bytes over this request's limit were dropped"
            );
        }
    }
}

/// A guest's stdout or stderr.
#[derive(Clone)]
pub struct GuestLog {
    output: Arc<GuestOutput>,
    /// Index into [`STREAMS`].
    stream: usize,
}

impl GuestLog {
    /// The guest's stdout.
    pub fn stdout(output: &Arc<GuestOutput>) -> GuestLog {
        GuestLog {
            output: output.clone(),
            stream: 0,
        }
    }

    /// The guest's stderr.
    pub fn stderr(output: &Arc<GuestOutput>) -> GuestLog {
        GuestLog {
            output: output.clone(),
            stream: 1,
        }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter(self.clone()))
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineWriter(self.clone()))
    }
}

/// `line` with control characters (but tab) written as escapes, `\r`, `\u{1b}`, and
/// backslashes doubled, so an escape in the log is never the guest's own text.
fn escape(line: &str) -> std::borrow::Cow<'_, str> {
    if !line
        .chars()
        .any(|c| c == '\\' || (c.is_control() && c != '\t'))
    {
        return line.into();
    }
    let mut out = String::with_capacity(line.len() + 8);
    for c in line.chars() {
        match c {
            '\t' => out.push(c),
            c if c == '\\' || c.is_control() => {
                let _ = write!(out, "{}", c.escape_default());
            }
            c => out.push(c),
        }
    }
    out.into()
}

/// One handle on a guest's stream. Lines are put together by [`GuestOutput`], across
/// handles; a partial last line is logged when the request ends.
struct LineWriter(GuestLog);

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_LINE)
    }
}

impl LineWriter {
    fn push(&mut self, bytes: &[u8]) {
        self.0.output.push(self.0.stream, bytes);
    }
}

/// The WASIp3 face of the same writer: writes complete at once, as they do for WASIp2.
impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[async_trait::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("plain\ttext"), "plain\ttext");
        assert_eq!(escape("a\rb\u{1b}[31m"), "a\\rb\\u{1b}[31m");
        assert_eq!(
            escape("a\\rb"),
            "a\\\\rb",
            "a guest's own backslash is doubled"
        );
    }

    /// The events an output with `secrets` makes of `writes` to one stream, as logged.
    fn events(secrets: &[&str], writes: &[&[u8]]) -> Vec<String> {
        let secrets: Arc<[String]> = secrets.iter().map(|s| s.to_string()).collect();
        let output = GuestOutput::new(&Arc::from("t"), &secrets, usize::MAX, usize::MAX);
        let (mut line, mut events) = (Vec::new(), Vec::new());
        for bytes in writes {
            output.split(&mut line, bytes, |event| {
                events.push(output.hide(event).into_owned());
            });
        }
        events
    }

    #[test]
    fn secrets_are_hidden_whole_and_line_by_line() {
        let lines = ["-----BEGIN KEY-----", "MIIEvQIBADANBg", "-----END KEY-----"];
        let pem = format!("{}\r\n", lines.join("\r\n"));
        let secrets = [pem.as_str(), lines[0], lines[2], lines[1]];
        let printed = format!("key={pem}then\r{}\rdone\n", lines[1]);
        let logged = events(&secrets, &[printed.as_bytes()]).join("\n");
        for line in lines {
            assert!(!logged.contains(line), "{line} is in the log: {logged}");
        }
        assert!(
            logged.contains("key=[secret]") && logged.contains("then"),
            "{logged}"
        );
    }

    #[test]
    fn a_long_line_is_never_cut_inside_a_secret() {
        let secret = "s3cr3t-value-0123456789";
        for offset in 0..secret.len() + 2 {
            let filler = "x".repeat(MAX_LINE - offset);
            let printed = format!("{filler}{secret}{filler}{secret}\n");
            // Written in small pieces, as a guest might.
            let writes: Vec<&[u8]> = printed.as_bytes().chunks(7).collect();
            let logged = events(&[secret], &writes);
            assert!(logged.len() > 1, "the line is cut");
            for event in &logged {
                assert!(event.len() <= MAX_LINE, "an event of {} bytes", event.len());
                for part in [&secret[..6], &secret[secret.len() - 6..]] {
                    assert!(
                        !event.contains(part),
                        "offset {offset}: `{part}` is in an event"
                    );
                }
            }
            assert_eq!(
                logged.concat().matches("[secret]").count(),
                2,
                "offset {offset}"
            );
        }
    }

    #[test]
    fn output_is_bounded_across_handles() {
        let output = GuestOutput::new(&Arc::from("t"), &Arc::from([]), 10, 2);
        assert_eq!(output.admit(6), 6);
        assert_eq!(output.admit(6), 4, "bytes are shared");
        assert!(output.take_line(1) && output.take_line(1));
        assert!(!output.take_line(1), "lines are bounded");
        assert_eq!(output.admit(1), 0, "no bytes once the lines are spent");
    }
}
