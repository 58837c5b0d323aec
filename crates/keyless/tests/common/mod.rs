//! An in-process keyd for the client's tests: it listens on a Unix socket
//! in a temporary directory, speaks the real custody codec, and hands every
//! request to the test, which answers when and how it likes (late, out of
//! order, never) or closes the connection.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::time::Duration;

use sealtls_custody_proto::{decode_frame, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

/// How long a test waits for something that should happen at once.
pub(crate) const PROMPTLY: Duration = Duration::from_secs(5);

/// What the test tells one connection of the fake to do.
enum Command {
    Answer(u64, Response),
    Close,
}

/// One request as the fake received it.
pub(crate) struct Incoming {
    /// The connection it came on, numbered from 0 in accept order.
    pub(crate) conn: usize,
    /// Its request id.
    pub(crate) id: u64,
    /// The decoded request.
    pub(crate) request: Request,
    to_conn: mpsc::UnboundedSender<Command>,
}

impl Incoming {
    /// Answers this request on its connection.
    pub(crate) fn answer(&self, response: Response) {
        let _ = self.to_conn.send(Command::Answer(self.id, response));
    }

    /// Closes this request's connection without answering.
    pub(crate) fn close(&self) {
        let _ = self.to_conn.send(Command::Close);
    }
}

/// A keyd stand-in on a Unix socket.
pub(crate) struct FakeKeyd {
    path: PathBuf,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    accept: JoinHandle<()>,
}

impl FakeKeyd {
    /// Listens at `path` (which must not exist).
    pub(crate) fn start(path: &Path) -> Self {
        let listener = UnixListener::bind(path).unwrap();
        let (tx, incoming) = mpsc::unbounded_channel();
        let accept = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) ends every connection.
            let mut conns = JoinSet::new();
            let mut n = 0;
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                conns.spawn(serve(n, stream, tx.clone()));
                n += 1;
            }
        });
        Self { path: path.to_owned(), incoming, accept }
    }

    /// The next request, from any connection; panics if none comes promptly.
    pub(crate) async fn next(&mut self) -> Incoming {
        tokio::time::timeout(PROMPTLY, self.incoming.recv()).await.expect("no request reached the fake keyd").expect("fake keyd stopped")
    }

    /// The next request, from any connection, however long it takes.
    pub(crate) async fn recv(&mut self) -> Option<Incoming> {
        self.incoming.recv().await
    }

    /// Stops listening and drops every connection, as a keyd that exits.
    pub(crate) async fn stop(self) {
        self.accept.abort();
        let _ = self.accept.await;
        std::fs::remove_file(&self.path).unwrap();
    }
}

async fn serve(conn: usize, stream: UnixStream, requests: mpsc::UnboundedSender<Incoming>) {
    let (mut rd, mut wr) = stream.into_split();
    let (to_conn, mut commands) = mpsc::unbounded_channel();
    let mut buf = Vec::new();
    loop {
        tokio::select! {
            read = rd.read_buf(&mut buf) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return;
                }
                let mut used = 0;
                while let Some((frame, n)) = decode_frame(&buf[used..]).expect("the client sent a bad frame") {
                    used += n;
                    let request = Request::decode(&frame).expect("the client sent a bad request body");
                    let _ = requests.send(Incoming { conn, id: frame.id, request, to_conn: to_conn.clone() });
                }
                buf.drain(..used);
            }
            Some(command) = commands.recv() => match command {
                Command::Answer(id, response) => {
                    let mut out = Vec::new();
                    response.encode(id, &mut out);
                    if wr.write_all(&out).await.is_err() {
                        return;
                    }
                }
                Command::Close => return,
            },
        }
    }
}
