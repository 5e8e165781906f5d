//! Bridges between gRPC streams and sequoia's blocking `Read`/`Write`: a
//! message flows through in chunks, so a 25 MB mail is never held whole
//! more than once (sequoia's own authentication buffer on decryption).

use std::io::{Read, Write};

use tokio::sync::mpsc;
use tonic::Status;

/// Chunks handed between the async and blocking sides.
pub const CHUNK: usize = 256 * 1024;
/// Chunks in flight each way: the memory a transfer holds beyond sequoia's.
const DEPTH: usize = 4;

/// The blocking side's view of the request's data chunks.
pub struct ChunkReader {
    receiver: mpsc::Receiver<Result<Vec<u8>, Status>>,
    current: Vec<u8>,
    position: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        while self.position == self.current.len() {
            match self.receiver.blocking_recv() {
                None => return Ok(0),
                Some(Ok(chunk)) => {
                    self.current = chunk;
                    self.position = 0;
                }
                Some(Err(status)) => return Err(std::io::Error::other(status.message().to_owned())),
            }
        }
        let n = buffer.len().min(self.current.len() - self.position);
        buffer[..n].copy_from_slice(&self.current[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

/// Feeds `data` chunks of a request stream to a [`ChunkReader`], refusing
/// more than `limit` bytes in all.
pub fn reader<M: Send + 'static>(
    mut stream: tonic::Streaming<M>,
    data: impl Fn(M) -> Option<Vec<u8>> + Send + 'static,
    limit: usize,
) -> ChunkReader {
    let (sender, receiver) = mpsc::channel(DEPTH);
    tokio::spawn(async move {
        let mut total = 0usize;
        loop {
            let item = match stream.message().await {
                Ok(Some(message)) => match data(message) {
                    Some(chunk) if chunk.is_empty() => continue,
                    Some(chunk) => {
                        total += chunk.len();
                        if total > limit {
                            Err(Status::invalid_argument(format!("a message has at most {limit} bytes")))
                        } else {
                            Ok(chunk)
                        }
                    }
                    None => Err(Status::invalid_argument("the options come first, and only once")),
                },
                Ok(None) => return,
                Err(status) => Err(status),
            };
            let stop = item.is_err();
            if sender.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    ChunkReader { receiver, current: Vec::new(), position: 0 }
}

/// The blocking side's output: whole chunks go to the response stream.
pub struct ChunkWriter<T> {
    sender: mpsc::Sender<Result<T, Status>>,
    wrap: fn(Vec<u8>) -> T,
    buffer: Vec<u8>,
}

impl<T> ChunkWriter<T> {
    fn send_buffer(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
        self.sender
            .blocking_send(Ok((self.wrap)(chunk)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the caller went away"))
    }

    /// Sends what is left, then the last message (or the error).
    pub fn finish(mut self, last: Result<T, Status>) {
        if last.is_ok()
            && let Err(error) = self.send_buffer()
        {
            tracing::debug!(%error, "streaming reply");
            return;
        }
        let _ = self.sender.blocking_send(last);
    }
}

impl<T> Write for ChunkWriter<T> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK {
            self.send_buffer()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `work` on a blocking thread between `input` and a reply stream of
/// chunks wrapped by `wrap`; its result is the reply's last message.
pub fn pipe<T: Send + 'static>(
    input: ChunkReader,
    wrap: fn(Vec<u8>) -> T,
    work: impl FnOnce(ChunkReader, &mut ChunkWriter<T>) -> Result<T, Status> + Send + 'static,
) -> tonic::codegen::BoxStream<T> {
    let (sender, receiver) = mpsc::channel(DEPTH);
    tokio::task::spawn_blocking(move || {
        let mut writer = ChunkWriter { sender, wrap, buffer: Vec::with_capacity(CHUNK) };
        let last = work(input, &mut writer);
        writer.finish(last);
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}
