//! The log's lines, written to stderr a batch at a time by the threads that serve requests.
//!
//! At `info` every request logs a line. Written one `write` each, from every worker thread
//! through the one stderr lock, they cost a fifth of hello's throughput. A worker thread
//! instead keeps its lines and writes them together: when its batch is full, when it is about
//! to go idle (tokio's park hook calls [`flush`]), and when it ends. A batch never passes
//! 4 KiB unless one line does, so that a write to a pipe stays atomic (`PIPE_BUF`) and lines
//! from several threads or processes never interleave. Lines at `warn` and above go out at
//! once, after what the thread kept, so nothing urgent waits and the order holds. Other
//! threads write each line at once, as before. The price: a process killed outright (SIGKILL)
//! loses the `info` lines its threads kept, at most 4 KiB each.

use std::cell::RefCell;
use std::io::Write;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Largest batch: `PIPE_BUF` on Linux, the most one `write` to a pipe keeps together.
const BATCH: usize = 4096;

thread_local! {
    static KEPT: RefCell<Option<Kept>> = const { RefCell::new(None) };
}

/// A thread's kept lines; written out when the thread ends, too.
struct Kept(Vec<u8>);

impl Kept {
    fn write_out(&mut self) {
        if !self.0.is_empty() {
            let _ = std::io::stderr().write_all(&self.0);
            self.0.clear();
        }
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.write_out();
    }
}

/// Makes the calling thread keep its log lines in batches (see the module's doc). The thread
/// must call [`flush`] whenever it is about to wait.
pub(crate) fn batch_this_thread() {
    KEPT.with(|kept| *kept.borrow_mut() = Some(Kept(Vec::with_capacity(BATCH))));
}

/// Writes the lines the calling thread kept.
pub(crate) fn flush() {
    KEPT.with(|kept| {
        if let Some(kept) = kept.borrow_mut().as_mut() {
            kept.write_out();
        }
    });
}

/// The log's writer: stderr, in batches on threads that asked for them.
pub struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { urgent: true }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line {
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

/// Where one event's formatted line goes.
pub struct Line {
    urgent: bool,
}

impl Write for Line {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        KEPT.with(|kept| match kept.borrow_mut().as_mut() {
            None => std::io::stderr().write_all(line),
            Some(kept) => {
                if kept.0.len() + line.len() > BATCH {
                    kept.write_out();
                }
                kept.0.extend_from_slice(line);
                if self.urgent || kept.0.len() >= BATCH {
                    kept.write_out();
                }
                Ok(())
            }
        })?;
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
