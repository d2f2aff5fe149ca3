//! Reading whole messages off a connection.

use tokio::io::{AsyncRead, AsyncReadExt, BufReader};

/// How much a TLS server reads from the socket at a time.
const SOCKET_READ: usize = 64 * 1024;

/// The socket under a TLS server connection, read through a buffer: rustls asks for a few
/// KiB per read, so a loaded connection would otherwise take a system call for each. The
/// buffer is allocated per connection, before the handshake: 64 KiB keeps idle connections
/// cheap.
pub fn buffered_socket<S: AsyncRead>(socket: S) -> BufReader<S> {
    BufReader::with_capacity(SOCKET_READ, socket)
}

/// Reads exactly `len` bytes into a new buffer that is not zeroed first. A frame payload is
/// up to megabytes: a zeroed buffer of that size makes the allocator hand back purged pages
/// (it cannot reuse dirty ones), so every frame would fault in and clear each page before
/// the read overwrites it.
pub async fn read_exact_vec<R: AsyncRead + Unpin>(
    reader: &mut R,
    len: usize,
) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let want = (len - out.len()) as u64;
        if (&mut *reader).take(want).read_buf(&mut out).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_exactly_the_length_across_short_reads_and_leaves_the_rest() {
        let (mut client, mut server) = tokio::io::duplex(7);
        let sent: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        let writer = tokio::spawn({
            let sent = sent.clone();
            async move {
                use tokio::io::AsyncWriteExt;
                client.write_all(&sent).await.expect("write");
            }
        });
        let first = read_exact_vec(&mut server, 60_000).await.expect("first");
        assert_eq!(first, sent[..60_000]);
        let rest = read_exact_vec(&mut server, 40_000).await.expect("rest");
        assert_eq!(rest, sent[60_000..]);
        writer.await.expect("writer");
        let error = read_exact_vec(&mut server, 1)
            .await
            .expect_err("at the end");
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(
            read_exact_vec(&mut server, 0)
                .await
                .expect("empty")
                .is_empty()
        );
    }
}
