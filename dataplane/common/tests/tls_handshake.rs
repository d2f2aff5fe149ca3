//! The generated development PKI works for a real TLS handshake over a loopback socket, and
//! mutual TLS refuses a client without a certificate.

use logcluster_common::{certs, tls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[tokio::test]
async fn generated_pki_completes_a_real_handshake_and_mutual_tls_requires_a_client_cert() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = certs::generate_dev_pki(dir.path(), &["node-1.local"]).expect("pki");
    let server =
        tls::load_server_config(&pki.node_cert, &pki.node_key, None).expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let acceptor = TlsAcceptor::from(server);
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut tls = acceptor.accept(tcp).await.expect("server handshake");
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await.expect("read");
        tls.write_all(&buf).await.expect("echo");
        tls.flush().await.expect("flush");
    });
    let client = tls::load_client_config(&pki.ca_cert, None).expect("client config");
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("node-1.local")
        .expect("name")
        .to_owned();
    let mut stream = TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .expect("client handshake");
    stream.write_all(b"hello").await.expect("write");
    let mut echo = [0u8; 5];
    stream.read_exact(&mut echo).await.expect("read echo");
    assert_eq!(&echo, b"hello");
    server_task.await.expect("server task");

    // Mutual TLS: a client without a certificate is refused.
    let mtls = tls::load_server_config(&pki.node_cert, &pki.node_key, Some(&pki.ca_cert))
        .expect("mtls config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let acceptor = TlsAcceptor::from(mtls);
    let server_task = tokio::spawn(async move {
        let mut results = Vec::new();
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.expect("accept");
            results.push(match acceptor.accept(tcp).await {
                Ok(mut tls) => {
                    let mut byte = [0u8; 1];
                    tls.read_exact(&mut byte).await.is_ok()
                }
                Err(_) => false,
            });
        }
        results
    });
    for with_cert in [false, true] {
        let config = if with_cert {
            tls::load_client_config(&pki.ca_cert, Some((&pki.node_cert, &pki.node_key)))
                .expect("client with cert")
        } else {
            tls::load_client_config(&pki.ca_cert, None).expect("client without cert")
        };
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost")
            .expect("name")
            .to_owned();
        if let Ok(mut stream) = TlsConnector::from(config).connect(name, tcp).await {
            let _ = stream.write_all(b"x").await;
            let _ = stream.flush().await;
            let mut buf = [0u8; 1];
            let _ = stream.read(&mut buf).await;
        }
    }
    assert_eq!(server_task.await.expect("server task"), vec![false, true]);
}

#[test]
fn pki_is_reused_across_calls_so_clients_keep_trusting_the_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = certs::generate_dev_pki(dir.path(), &[]).expect("first");
    let ca = std::fs::read(&first.ca_cert).expect("ca");
    let node = std::fs::read(&first.node_cert).expect("node");
    let second = certs::generate_dev_pki(dir.path(), &[]).expect("second");
    assert_eq!(std::fs::read(&second.ca_cert).expect("ca"), ca);
    assert_eq!(std::fs::read(&second.node_cert).expect("node"), node);
    // New names re-issue the node certificate with the same CA.
    let third = certs::generate_dev_pki(dir.path(), &["other.host"]).expect("third");
    assert_eq!(std::fs::read(&third.ca_cert).expect("ca"), ca);
    assert_ne!(std::fs::read(&third.node_cert).expect("node"), node);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&third.node_key)
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "private key must not be readable by others"
    );
}
