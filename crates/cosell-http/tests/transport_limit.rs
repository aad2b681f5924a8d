//! `send_limited` on the reqwest transport stops reading at the limit: a server streaming an
//! endless body (no `Content-Length`) gets its connection dropped long before it is done.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use cosell_http::{HttpTransport, ReqwestTransport, TransportErrorKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves one connection: a chunked body of `total` bytes, counting what it managed to write.
async fn streaming_server(total: usize) -> (u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let written = Arc::new(AtomicUsize::new(0));
    let count = written.clone();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 4096];
        let _ = s.read(&mut request).await;
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/pkix-cert\r\nTransfer-Encoding: chunked\r\n\r\n";
        if s.write_all(head).await.is_err() {
            return;
        }
        let chunk = vec![b'x'; 16 * 1024];
        let framed = [
            format!("{:x}\r\n", chunk.len()).into_bytes(),
            chunk,
            b"\r\n".to_vec(),
        ]
        .concat();
        while count.load(Ordering::SeqCst) < total {
            if s.write_all(&framed).await.is_err() {
                return;
            }
            count.fetch_add(16 * 1024, Ordering::SeqCst);
        }
        let _ = s.write_all(b"0\r\n\r\n").await;
    });
    (port, written, task)
}

#[tokio::test]
async fn an_endless_body_is_cut_off_at_the_limit() {
    let total = 256 * 1024 * 1024;
    let (port, written, server) = streaming_server(total).await;
    let transport = ReqwestTransport::new().unwrap();
    let request = http::Request::get(format!("http://127.0.0.1:{port}/cert.cer"))
        .body(Bytes::new())
        .unwrap();
    let err = transport
        .send_limited(request, 64 * 1024)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), TransportErrorKind::BodyTooLarge);
    drop(transport);
    server.await.unwrap();
    // The server saw the connection close: socket buffers took some, but nowhere near all.
    let sent = written.load(Ordering::SeqCst);
    assert!(sent < total / 4, "{sent} of {total} bytes were sent");
}

#[tokio::test]
async fn a_body_within_the_limit_arrives_whole() {
    let (port, _, server) = streaming_server(48 * 1024).await;
    let transport = ReqwestTransport::new().unwrap();
    let request = http::Request::get(format!("http://127.0.0.1:{port}/cert.cer"))
        .body(Bytes::new())
        .unwrap();
    let response = transport.send_limited(request, 64 * 1024).await.unwrap();
    assert_eq!(response.body().len(), 48 * 1024);
    server.await.unwrap();
}
