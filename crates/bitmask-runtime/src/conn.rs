//! A gateway's client connection: plain TCP, or TLS after STARTTLS.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

#[derive(Debug)]
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    pub async fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let read = match self {
            Self::Plain(stream) => stream.read(buffer).await,
            Self::Tls(stream) => stream.read(buffer).await,
        };
        // Acknowledge at once: a client that sends a literal (or a command)
        // and then its CRLF in two writes would otherwise wait for our
        // delayed ACK (40 ms on Linux) before Nagle lets the CRLF go. Linux
        // clears the flag as it sees fit, so it is set again after every read.
        let tcp = match self {
            Self::Plain(stream) => &*stream,
            Self::Tls(stream) => stream.get_ref().0,
        };
        let _ = socket2::SockRef::from(tcp).set_tcp_quickack(true);
        read
    }

    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Plain(stream) => stream.write_all(bytes).await,
            Self::Tls(stream) => {
                stream.write_all(bytes).await?;
                stream.flush().await
            }
        }
    }
}
