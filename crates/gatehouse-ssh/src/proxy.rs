//! PROXY protocol v2 on listeners behind a load balancer: read exactly the header (never a byte
//! of the SSH stream after it), with a deadline and a size cap, and return the client address
//! it carries. Parsing is the `ppp` crate's; this module only frames and bounds the read.

use std::net::SocketAddr;

use ppp::v2::{Addresses, Command, Header};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{timeout_at, Instant};

/// The fixed part of a v2 header: 12-byte signature, version/command, family, length.
const FIXED_LEN: usize = 16;
/// The v2 signature.
const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Largest variable part accepted: IPv6 addresses (36 bytes) and a few hundred bytes of TLVs
/// (cloud load balancers add their endpoint ids there). Anything longer is refused.
pub const MAX_VARIABLE_LEN: usize = 512;

/// Why a PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Nothing (or not all of it) arrived before the deadline.
    #[error("no complete PROXY v2 header before the deadline")]
    Timeout,
    /// The connection failed or closed while reading the header.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// The first bytes are not a v2 signature (a client connected straight to a PROXY port?).
    #[error("not a PROXY protocol v2 header")]
    NotProxy,
    /// The header announces more than we accept.
    #[error("PROXY header too long ({0} bytes)")]
    TooLong(usize),
    /// `ppp` could not parse it.
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    /// A PROXY command with an address family that carries no client address.
    #[error("PROXY header carries no IP address")]
    NoAddress,
}

/// Reads one v2 header. `Ok(None)` is a LOCAL command (the proxy's own health check): the
/// connection's peer address stands.
pub async fn read_header<R: AsyncRead + Unpin>(
    stream: &mut R,
    deadline: Instant,
) -> Result<Option<SocketAddr>, ProxyError> {
    let read = async {
        let mut fixed = [0u8; FIXED_LEN];
        stream.read_exact(&mut fixed).await?;
        if &fixed[..SIGNATURE.len()] != SIGNATURE {
            return Err(ProxyError::NotProxy);
        }
        let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
        if len > MAX_VARIABLE_LEN {
            return Err(ProxyError::TooLong(FIXED_LEN + len));
        }
        let mut whole = Vec::with_capacity(FIXED_LEN + len);
        whole.extend_from_slice(&fixed);
        whole.resize(FIXED_LEN + len, 0);
        stream.read_exact(&mut whole[FIXED_LEN..]).await?;
        Ok(whole)
    };
    let whole = timeout_at(deadline, read)
        .await
        .map_err(|_| ProxyError::Timeout)??;
    client_address(&whole)
}

/// What follows a complete v2 header at the start of `bytes` (peeked, not read), or `None` if
/// the header is not all there (or is no header).
pub(crate) fn after_header(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.len() < FIXED_LEN || &bytes[..SIGNATURE.len()] != SIGNATURE {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    bytes.get(FIXED_LEN + len..)
}

/// Bytes to peek to see a whole header and what follows it.
pub(crate) const PEEK_LEN: usize = FIXED_LEN + MAX_VARIABLE_LEN + 256;

/// The client address of a complete v2 header.
pub fn client_address(bytes: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    let header = Header::try_from(bytes).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    if header.command == Command::Local {
        return Ok(None);
    }
    match header.addresses {
        Addresses::IPv4(a) => Ok(Some(SocketAddr::from((a.source_address, a.source_port)))),
        Addresses::IPv6(a) => Ok(Some(SocketAddr::from((a.source_address, a.source_port)))),
        Addresses::Unspecified | Addresses::Unix(_) => Err(ProxyError::NoAddress),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppp::v2::{Builder, Protocol, Version};
    use std::time::Duration;

    fn header(src: &str, dst: &str) -> Vec<u8> {
        let src: SocketAddr = src.parse().unwrap();
        let dst: SocketAddr = dst.parse().unwrap();
        Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, (src, dst))
            .build()
            .unwrap()
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn reads_exactly_the_header_and_returns_the_client() {
        let mut bytes = header("198.51.100.7:40000", "10.0.0.1:22");
        bytes.extend_from_slice(b"SSH-2.0-OpenSSH_9.2\r\n");
        let mut reader = &bytes[..];
        let addr = read_header(&mut reader, soon()).await.unwrap();
        assert_eq!(addr, Some("198.51.100.7:40000".parse().unwrap()));
        assert_eq!(
            reader, b"SSH-2.0-OpenSSH_9.2\r\n",
            "SSH bytes must be left unread"
        );
    }

    #[tokio::test]
    async fn ipv6_and_local_commands() {
        let bytes = header("[2001:db8::7]:1", "[2001:db8::1]:22");
        let addr = read_header(&mut &bytes[..], soon()).await.unwrap();
        assert_eq!(addr, Some("[2001:db8::7]:1".parse().unwrap()));
        let local = Builder::new(
            Version::Two | Command::Local,
            ppp::v2::AddressFamily::Unspecified | Protocol::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(read_header(&mut &local[..], soon()).await.unwrap(), None);
    }

    #[test]
    fn what_follows_a_whole_header_is_found_and_a_partial_one_is_none() {
        let mut bytes = header("192.0.2.1:1", "192.0.2.2:22");
        let len = bytes.len();
        assert_eq!(after_header(&bytes[..len - 1]), None);
        bytes.extend_from_slice(b"SSH-2.0-x\r\n");
        assert_eq!(after_header(&bytes), Some(&b"SSH-2.0-x\r\n"[..]));
        assert_eq!(after_header(b"SSH-2.0-x\r\n"), None);
    }

    #[tokio::test]
    async fn refuses_ssh_v1_headers_oversized_and_truncated_input() {
        let err = read_header(&mut &b"SSH-2.0-OpenSSH_9.2\r\n"[..], soon()).await;
        assert!(matches!(err, Err(ProxyError::NotProxy)), "{err:?}");
        let err = read_header(&mut &b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"[..], soon()).await;
        assert!(matches!(err, Err(ProxyError::NotProxy)), "{err:?}");
        let mut big = header("198.51.100.7:1", "10.0.0.1:22");
        big[14..16].copy_from_slice(&4000u16.to_be_bytes());
        let err = read_header(&mut &big[..], soon()).await;
        assert!(matches!(err, Err(ProxyError::TooLong(4016))), "{err:?}");
        let whole = header("198.51.100.7:1", "10.0.0.1:22");
        let err = read_header(&mut &whole[..20], soon()).await;
        assert!(matches!(err, Err(ProxyError::Io(_))), "{err:?}");
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let (mut client, _server) = tokio::io::duplex(64);
        let deadline = Instant::now() + Duration::from_millis(50);
        let err = read_header(&mut client, deadline).await;
        assert!(matches!(err, Err(ProxyError::Timeout)), "{err:?}");
    }
}
