//! Bytes between a blocking thread and the async side, a few chunks at a time: a tar packed by
//! git on a blocking thread goes to the engine as a stream, and a tar the engine sends is read
//! by the tar parser on a blocking thread as it arrives. Neither side ever holds the whole.

use std::io::{self, Read, Write};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;

/// Chunks in flight between the two sides: with [`CHUNK`], at most a few MiB.
const DEPTH: usize = 8;
/// How many bytes the writing side gathers before it sends them.
const CHUNK: usize = 256 << 10;

/// The blocking side writes; the async side reads the stream. Dropping the writer ends the
/// stream (a writer's caller that failed says so itself: the stream only ends).
pub fn to_stream() -> (
    PipeWriter,
    impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
) {
    let (tx, rx) = mpsc::channel(DEPTH);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    (
        PipeWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        },
        stream,
    )
}

/// The blocking end of [`to_stream`]. Must not be used on an async thread.
pub struct PipeWriter {
    tx: mpsc::Sender<Result<Bytes, io::Error>>,
    buf: Vec<u8>,
}

impl PipeWriter {
    fn send(&mut self, chunk: Bytes) -> io::Result<()> {
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the reading side is gone"))
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.send(chunk)
    }
}

/// The async side sends; the blocking side reads. Dropping the sender is the end of the input.
pub fn from_async() -> (mpsc::Sender<Bytes>, PipeReader) {
    let (tx, rx) = mpsc::channel(DEPTH);
    (
        tx,
        PipeReader {
            rx,
            chunk: Bytes::new(),
        },
    )
}

/// The blocking end of [`from_async`]. Must not be used on an async thread.
pub struct PipeReader {
    rx: mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    #[tokio::test]
    async fn bytes_cross_in_order_and_the_writer_gone_ends_the_stream() {
        let (mut writer, stream) = to_stream();
        let wrote = tokio::task::spawn_blocking(move || {
            for i in 0..1000u32 {
                writer.write_all(&i.to_le_bytes().repeat(100)).unwrap();
            }
            writer.flush().unwrap();
        });
        let items: Vec<_> = stream.collect().await;
        wrote.await.unwrap();
        let bytes: Vec<u8> = items
            .iter()
            .flat_map(|c| c.as_ref().unwrap().to_vec())
            .collect();
        assert_eq!(bytes.len(), 400_000);
        assert_eq!(&bytes[400 * 999..400 * 999 + 4], &999u32.to_le_bytes());
    }

    #[tokio::test]
    async fn a_reader_sees_what_was_sent_then_the_end() {
        let (tx, mut reader) = from_async();
        let read = tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).unwrap();
            all
        });
        for part in [&b"abc"[..], b"", b"defg"] {
            tx.send(Bytes::copy_from_slice(part)).await.unwrap();
        }
        drop(tx);
        assert_eq!(read.await.unwrap(), b"abcdefg");
    }
}
