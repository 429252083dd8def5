//! Guest stdout and stderr, delivered to the host's `tracing` log one line at a time.
//!
//! A guest has no terminal and no files of the host's; what it prints is an operator's
//! concern, so it becomes log events tagged with the app (and, through the request's span,
//! with the request).
//!
//! Output is bounded per request, across all of its handles: past the bytes or lines allowed
//! (`--guest-log-max-bytes`, `--guest-log-max-lines`) it is dropped and counted, and one
//! event says so. Without a bound, 1 MiB of newlines made a million log events. Control
//! characters are escaped, so a guest cannot forge or hide log lines with `\r` or terminal
//! escapes.

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
    left: Mutex<Allowance>,
}

struct Allowance {
    bytes: usize,
    lines: usize,
    dropped: usize,
}

impl GuestOutput {
    /// The output of one request of `app`: `bytes` and `lines` at most.
    pub fn new(app: &Arc<str>, bytes: usize, lines: usize) -> Arc<GuestOutput> {
        Arc::new(GuestOutput {
            app: app.clone(),
            left: Mutex::new(Allowance {
                bytes,
                lines,
                dropped: 0,
            }),
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

impl Drop for GuestOutput {
    fn drop(&mut self) {
        let left = self.left.get_mut().unwrap_or_else(|e| e.into_inner());
        if left.dropped > 0 {
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
    stream: &'static str,
}

impl GuestLog {
    pub fn stdout(output: &Arc<GuestOutput>) -> GuestLog {
        GuestLog {
            output: output.clone(),
            stream: "stdout",
        }
    }

    pub fn stderr(output: &Arc<GuestOutput>) -> GuestLog {
        GuestLog {
            output: output.clone(),
            stream: "stderr",
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
        Box::new(LineWriter {
            log: self.clone(),
            line: Vec::new(),
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            log: self.clone(),
            line: Vec::new(),
        })
    }
}

impl GuestLog {
    fn emit(&self, line: &[u8]) {
        if !self.output.take_line(line.len()) {
            return;
        }
        let line = String::from_utf8_lossy(line);
        let line = escape(&line);
        tracing::info!(target: "guest", app = &*self.output.app, stream = self.stream, "{line}");
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

/// Splits what the guest writes into lines; a partial last line is emitted when the stream is
/// dropped with the request.
struct LineWriter {
    log: GuestLog,
    line: Vec<u8>,
}

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
        let bytes = &bytes[..self.log.output.admit(bytes.len())];
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            self.line.extend_from_slice(chunk);
            if self.line.ends_with(b"\n") || self.line.len() >= MAX_LINE {
                let line = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
                self.log.emit(line);
                self.line.clear();
            }
        }
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

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.log.emit(&self.line);
        }
    }
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

    #[test]
    fn output_is_bounded_across_handles() {
        let output = GuestOutput::new(&Arc::from("t"), 10, 2);
        assert_eq!(output.admit(6), 6);
        assert_eq!(output.admit(6), 4, "bytes are shared");
        assert!(output.take_line(1) && output.take_line(1));
        assert!(!output.take_line(1), "lines are bounded");
        assert_eq!(output.admit(1), 0, "no bytes once the lines are spent");
    }
}
