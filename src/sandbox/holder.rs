//! The holder's copy channel: trees go into a batch's volumes and out of them as tar over the
//! holder container's own stdin and stdout. The engine's archive API would mount the container
//! and re-execute the engine for every copy (about 70 ms each on the 2-core machine, three to a
//! job); a request here costs about 2 ms.
//!
//! The holder runs [`SCRIPT`] in kiln/busybox as root of its container, with only the
//! capabilities a tar needs to unpack files as the sandbox user's and to read whatever a stage
//! left ([`CAPABILITIES`]); no network, kiln's seccomp profile, no-new-privileges, a read-only
//! root. No stage sees the holder: each mounts only its own volume. Requests go one at a time,
//! each a line of five words:
//!
//! - `put DIR - 0 NONCE`, then the tar in chunks, each a line with its length followed by that
//!   many bytes, ended by a `0` line: unpacked under DIR.
//! - `get PARENT NAME CAP NONCE`: a tar of PARENT/NAME, cut after CAP bytes.
//! - `clear DIR - 0 NONCE`: everything under DIR removed (links are removed, never followed).
//!
//! An answer is what its request wrote on stdout (a `get`'s tar), then `KILN-END-NONCE RC` and
//! a newline, RC the exit status. The nonce is 128 random bits only kiln and the holder see:
//! what a stage left in a volume cannot end an answer early and have the rest of its tar read
//! as the next request's answer (another job's, in a shared holder). A request runs to its end
//! even when its caller stops waiting (the volume's [`super::sweep::Sweeper::finish`]); one
//! that fails midway (the holder gone, a deadline passed) leaves the channel broken and every
//! later request on it refused, never misread.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aho_corasick::AhoCorasick;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::AttachContainerOptions;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{SandboxError, bounded, docker_err};

/// What the holder runs: the request loop above, in busybox's shell.
pub(super) const SCRIPT: &str = r#"set -o pipefail
while read -r op dir name cap nonce; do
  case $op in
    put) while read -r n && [ "$n" -gt 0 ]; do dd bs="$n" count=1 iflag=fullblock 2>/dev/null; done | tar -x -C "$dir" ;;
    get) tar -c -C "$dir" "$name" | head -c "$cap" ;;
    clear) (cd "$dir" && rm -rf -- * .[!.]* ..?*) ;;
    *) false ;;
  esac
  echo "KILN-END-$nonce $?"
done"#;

/// The holder's capabilities, all else dropped: unpack files owned by the sandbox user (CHOWN,
/// FOWNER) into volumes whose root is root's, and read files a stage left unreadable
/// (DAC_OVERRIDE).
pub(super) const CAPABILITIES: [&str; 3] = ["CHOWN", "DAC_OVERRIDE", "FOWNER"];

/// The largest chunk a `put` sends at once: the holder's `dd` holds one in memory.
const CHUNK: usize = 256 << 10;

/// How much of the holder's stderr an error quotes.
const STDERR_KEPT: usize = 2 << 10;

type Output = Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;

/// The holder's stdin and stdout, one request at a time; `None` once a request broke it.
pub(super) struct Channel {
    io: Arc<tokio::sync::Mutex<Option<Io>>>,
}

struct Io {
    input: Pin<Box<dyn AsyncWrite + Send>>,
    output: Output,
}

impl Channel {
    /// Attaches to the holder `id`, created with its stdin open and not started yet.
    pub(super) async fn attach(docker: &Docker, id: &str) -> Result<Self, SandboxError> {
        let options = AttachContainerOptions {
            stream: true,
            stdin: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let attached = bounded("attach holder", docker.attach_container(id, Some(options)))
            .await?
            .map_err(docker_err("attach to the workspace holder"))?;
        Ok(Channel {
            io: Arc::new(tokio::sync::Mutex::new(Some(Io {
                input: attached.input,
                output: attached.output,
            }))),
        })
    }

    /// Unpacks `tar` under `dir` in the holder, within `limit`. An error in the stream fails
    /// the copy (after the holder has what came before it).
    pub(super) async fn put(
        &self,
        dir: &str,
        tar: impl Stream<Item = Result<Bytes, std::io::Error>> + Send,
        limit: Duration,
    ) -> Result<(), SandboxError> {
        let (mut slot, mut io, nonce) = self.open().await?;
        let put = async {
            let line = format!("put {dir} - 0 {nonce}\n");
            let sent = send_tar(&mut io.input, line, tar).await;
            // `tar -x` writes nothing on stdout: the answer is its end line.
            let (status, stderr, _) = io.answer(&nonce, None).await?;
            let failed = |why: String| SandboxError::Docker {
                op: "copy the workspace into its volume",
                message: why,
            };
            match sent {
                Err(Sent::Source(e)) => Err(failed(format!("the tar kiln sent failed: {e}"))),
                Err(Sent::Holder(e)) => Err(failed(format!("the holder stopped reading: {e}"))),
                Ok(()) if status != 0 => Err(failed(format!(
                    "the holder's tar exited with {status}: {stderr}"
                ))),
                Ok(()) => Ok(()),
            }
        };
        let answered = within(limit, put).await;
        keep(&mut slot, io, &answered);
        answered
    }

    /// Removes everything under `dir` in the holder, within `limit`.
    pub(super) async fn clear(&self, dir: &str, limit: Duration) -> Result<(), SandboxError> {
        let (mut slot, mut io, nonce) = self.open().await?;
        let clear = async {
            let line = format!("clear {dir} - 0 {nonce}\n");
            io.input
                .write_all(line.as_bytes())
                .await
                .map_err(|e| holder_gone(&e))?;
            io.input.flush().await.map_err(|e| holder_gone(&e))?;
            match io.answer(&nonce, None).await? {
                (0, _, _) => Ok(()),
                (status, stderr, _) => Err(SandboxError::Docker {
                    op: "empty a volume",
                    message: format!("the holder's rm exited with {status}: {stderr}"),
                }),
            }
        };
        let answered = within(limit, clear).await;
        keep(&mut slot, io, &answered);
        answered
    }

    /// Sends a tar of `parent/name` in the holder to `tx` chunk by chunk, within `limit`;
    /// `Ok(Err(cap))` once it passes `cap` bytes. A receiver that stops early ends what it is
    /// sent, not the copy: the answer is read to its end.
    pub(super) async fn get(
        &self,
        (parent, name): (&str, &str),
        cap: u64,
        tx: tokio::sync::mpsc::Sender<Bytes>,
        limit: Duration,
    ) -> Result<Result<(), u64>, SandboxError> {
        let (mut slot, mut io, nonce) = self.open().await?;
        let get = async {
            // One byte past the cap tells a tar that fits from one cut at it.
            let line = format!("get {parent} {name} {} {nonce}\n", cap.saturating_add(1));
            io.input
                .write_all(line.as_bytes())
                .await
                .map_err(|e| holder_gone(&e))?;
            io.input.flush().await.map_err(|e| holder_gone(&e))?;
            let (status, stderr, total) = io.answer(&nonce, Some((&tx, cap))).await?;
            if total > cap {
                return Ok(Err(cap));
            }
            if status != 0 {
                return Err(SandboxError::Docker {
                    op: "copy files out of a volume",
                    message: format!("the holder's tar exited with {status}: {stderr}"),
                });
            }
            Ok(Ok(()))
        };
        let answered = within(limit, get).await;
        keep(&mut slot, io, &answered);
        answered
    }

    /// The channel to one request, under a fresh nonce: refused once an earlier request broke it.
    async fn open(
        &self,
    ) -> Result<(tokio::sync::MutexGuard<'_, Option<Io>>, Io, String), SandboxError> {
        let mut slot = self.io.lock().await;
        let io = slot.take().ok_or_else(|| SandboxError::Docker {
            op: "copy through the workspace holder",
            message: "an earlier copy broke its channel".into(),
        })?;
        Ok((slot, io, nonce()?))
    }
}

/// `request`, cut short at `limit`.
async fn within<T>(
    limit: Duration,
    request: impl Future<Output = Result<T, SandboxError>>,
) -> Result<T, SandboxError> {
    tokio::time::timeout(limit, request)
        .await
        .map_err(|_| SandboxError::Stuck("copy through the workspace holder"))?
}

/// Puts `io` back for the next request unless `answered` left it mid-answer: the holder gone, or
/// a request cut short by its deadline. A copy refused in full (a non-zero status, a tar past
/// its cap) was read to its end.
fn keep<T>(slot: &mut Option<Io>, io: Io, answered: &Result<T, SandboxError>) {
    if !matches!(
        answered,
        Err(SandboxError::Unreachable(_) | SandboxError::Stuck(_))
    ) {
        *slot = Some(io);
    }
}

/// Why a `put` did not send its whole tar.
enum Sent {
    /// The tar's own stream failed: the holder was told the tar ended.
    Source(std::io::Error),
    /// Writing to the holder failed.
    Holder(std::io::Error),
}

/// Writes `line` and `tar` as `put` chunks, ended by the `0` line even when `tar` fails.
async fn send_tar(
    input: &mut Pin<Box<dyn AsyncWrite + Send>>,
    line: String,
    tar: impl Stream<Item = Result<Bytes, std::io::Error>> + Send,
) -> Result<(), Sent> {
    input
        .write_all(line.as_bytes())
        .await
        .map_err(Sent::Holder)?;
    let mut tar = std::pin::pin!(tar);
    let mut failed = None;
    while let Some(item) = tar.next().await {
        let bytes = match item {
            Ok(bytes) => bytes,
            Err(e) => {
                failed = Some(e);
                break;
            }
        };
        for chunk in bytes.chunks(CHUNK) {
            input
                .write_all(format!("{}\n", chunk.len()).as_bytes())
                .await
                .map_err(Sent::Holder)?;
            input.write_all(chunk).await.map_err(Sent::Holder)?;
        }
    }
    input.write_all(b"0\n").await.map_err(Sent::Holder)?;
    input.flush().await.map_err(Sent::Holder)?;
    failed.map_or(Ok(()), |e| Err(Sent::Source(e)))
}

impl Io {
    /// Reads the answer to the request under `nonce`: its body goes to `forward`'s sender
    /// while it takes it and the body is within its cap. Returns the status, the stderr that
    /// came with it and the body's length. The holder gone before the end is
    /// [`SandboxError::Unreachable`], which breaks the channel.
    async fn answer(
        &mut self,
        nonce: &str,
        forward: Option<(&tokio::sync::mpsc::Sender<Bytes>, u64)>,
    ) -> Result<(i32, String, u64), SandboxError> {
        let mut frame = Frame::new(nonce);
        let mut stderr = String::new();
        let (mut total, mut forward) = (0u64, forward);
        loop {
            let chunk = match self.output.next().await {
                Some(Ok(LogOutput::StdOut { message })) => message,
                Some(Ok(LogOutput::StdErr { message })) => {
                    let room = STDERR_KEPT.saturating_sub(stderr.len());
                    let text = String::from_utf8_lossy(&message[..message.len().min(room)]);
                    stderr.push_str(&text);
                    continue;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(holder_gone(&e)),
                None => return Err(holder_gone(&"its output ended")),
            };
            let body = frame.push(&chunk);
            total += body.len() as u64;
            if let Some((tx, cap)) = forward
                && !body.is_empty()
                && (total > cap || tx.send(body).await.is_err())
            {
                forward = None;
            }
            if let Some(status) = frame.status() {
                return Ok((status, stderr.trim().to_string(), total));
            }
        }
    }
}

fn holder_gone(e: &dyn std::fmt::Display) -> SandboxError {
    SandboxError::Unreachable(format!("the workspace holder's channel broke: {e}"))
}

/// 128 random bits as hex, from the system's generator.
fn nonce() -> Result<String, SandboxError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| SandboxError::Docker {
            op: "copy through the workspace holder",
            message: "the system's random generator failed".into(),
        })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// One answer's bytes split into its body and its end line, however the stream cuts them.
struct Frame {
    marker: Vec<u8>,
    finder: AhoCorasick,
    /// Bytes that may be the start of the marker, not passed on yet.
    held: Vec<u8>,
    /// What came after the marker, once it has: the status and its newline.
    trailer: Option<Vec<u8>>,
}

impl Frame {
    fn new(nonce: &str) -> Self {
        let marker = format!("KILN-END-{nonce} ").into_bytes();
        let finder = AhoCorasick::new([&marker]).expect("one literal pattern always builds");
        Frame {
            marker,
            finder,
            held: Vec::new(),
            trailer: None,
        }
    }

    /// Takes the next bytes of stdout; returns those known to be the body.
    fn push(&mut self, chunk: &[u8]) -> Bytes {
        if let Some(trailer) = self.trailer.as_mut() {
            trailer.extend_from_slice(chunk);
            return Bytes::new();
        }
        self.held.extend_from_slice(chunk);
        if let Some(found) = self.finder.find(&self.held) {
            self.trailer = Some(self.held[found.end()..].to_vec());
            let body = Bytes::copy_from_slice(&self.held[..found.start()]);
            self.held.clear();
            return body;
        }
        let keep = self.marker.len() - 1;
        let passed = self.held.len().saturating_sub(keep);
        let body = Bytes::copy_from_slice(&self.held[..passed]);
        self.held.drain(..passed);
        body
    }

    /// The answer's status, once its end line is whole (an unreadable one is -1: a failure).
    fn status(&self) -> Option<i32> {
        let trailer = self.trailer.as_ref()?;
        let end = trailer.iter().position(|&b| b == b'\n')?;
        Some(
            std::str::from_utf8(&trailer[..end])
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(-1),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(nonce: &str, chunks: &[&[u8]]) -> (Vec<u8>, Option<i32>) {
        let mut frame = Frame::new(nonce);
        let mut body = Vec::new();
        for chunk in chunks {
            body.extend_from_slice(&frame.push(chunk));
        }
        (body, frame.status())
    }

    #[test]
    fn an_answer_ends_at_its_own_marker_however_the_stream_is_cut() {
        let answer = b"tar bytes KILN-END-beef 1\nKILN-END-abcd 0\n";
        // Every split point, and a byte at a time: the body is everything before the marker.
        for cut in 0..answer.len() {
            let (body, status) = framed("abcd", &[&answer[..cut], &answer[cut..]]);
            assert_eq!(body, b"tar bytes KILN-END-beef 1\n", "cut at {cut}");
            assert_eq!(status, Some(0), "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = answer.chunks(1).collect();
        assert_eq!(framed("abcd", &bytes).1, Some(0));
    }

    #[test]
    fn an_answer_without_its_whole_end_line_has_no_status() {
        assert_eq!(framed("abcd", &[b"body KILN-END-abcd 0"]).1, None);
        assert_eq!(framed("abcd", &[b"body KILN-END-abcd"]).1, None);
        assert_eq!(framed("abcd", &[b"KILN-END-abcd x\n"]).1, Some(-1));
        assert_eq!(framed("abcd", &[b"KILN-END-abcd 2\n"]).1, Some(2));
    }

    #[test]
    fn nonces_are_fresh_and_128_bits() {
        let (a, b) = (nonce().unwrap(), nonce().unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
