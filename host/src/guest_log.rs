//! Guest stdout and stderr, delivered to the host's `tracing` log one line at a time.
//!
//! A guest has no terminal and no files of the host's; what it prints is an operator's
//! concern, so it becomes log events tagged with the app (and, through the request's span,
//! with the request).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Longest line kept in one log event; the rest of a longer line starts a new event, so a
/// guest cannot make the host buffer without bound.
const MAX_LINE: usize = 16 * 1024;

/// A guest's stdout or stderr.
#[derive(Clone)]
pub struct GuestLog {
    app: Arc<str>,
    stream: &'static str,
}

impl GuestLog {
    pub fn stdout(app: &Arc<str>) -> GuestLog {
        GuestLog {
            app: app.clone(),
            stream: "stdout",
        }
    }

    pub fn stderr(app: &Arc<str>) -> GuestLog {
        GuestLog {
            app: app.clone(),
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
        let line = String::from_utf8_lossy(line);
        tracing::info!(target: "guest", app = &*self.app, stream = self.stream, "{line}");
    }
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
