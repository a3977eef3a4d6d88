//! The client socket as russh sees it: a duplicate kept to shut it down from outside the
//! session (see `server::close`), and quick ACKs until authentication ends.
//!
//! OpenSSH clients keep Nagle's algorithm on until authentication is done, so each small
//! handshake packet they send waits for our ACK, which Linux delays by up to 40 ms. Re-arming
//! `TCP_QUICKACK` after every read (the kernel clears it by itself) until the connection has
//! authenticated removes that wait: FIELD-NOTES measured the median login going from 55 ms to
//! 16 ms. After authentication the socket is left alone (bulk data does not need it).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::conn::Conn;

/// Registers an accepted socket with the current runtime and splits off a duplicate that can
/// shut it down from outside the session.
pub(crate) fn with_cutter(
    stream: std::net::TcpStream,
) -> io::Result<(TcpStream, std::net::TcpStream)> {
    let cutter = stream.try_clone()?;
    Ok((TcpStream::from_std(stream)?, cutter))
}

/// The client socket, with quick ACKs re-armed after each read until `conn` authenticates.
pub(crate) struct ClientSocket {
    inner: TcpStream,
    conn: Arc<Conn>,
    quickack: bool,
}

impl ClientSocket {
    pub fn new(inner: TcpStream, conn: Arc<Conn>) -> Self {
        ClientSocket {
            inner,
            conn,
            quickack: true,
        }
    }
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.quickack && buf.filled().len() > before {
            if self.conn.login.get().is_some() {
                self.quickack = false;
            } else {
                // Best effort: a failure only costs the delayed-ACK wait.
                let _ = SockRef::from(&self.inner).set_tcp_quickack(true);
            }
        }
        poll
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
