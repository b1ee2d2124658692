//! HTTPS: a self-signed certificate (as KAZOO accepts: it verifies nothing on OTP 19), with
//! KAZOO's requests over TLS 1.2 (KAZOO 4.3 on Erlang/OTP 19) and TLS 1.3.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::AsyncWriteExt;
use vmpipe_tests::*;

/// Accepts any certificate, like KAZOO's httpc without `ssl` options.
#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn exchange(
    port: u16,
    version: &'static rustls::SupportedProtocolVersion,
    request: &[u8],
) -> (rustls::ProtocolVersion, Response) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("vmpipe.example.net").unwrap(), tcp)
        .await
        .expect("handshake");
    let negotiated = tls.get_ref().1.protocol_version().unwrap();
    tls.write_all(request).await.unwrap();
    (negotiated, read_response_from(&mut tls, false).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_self_signed_certificate_at_tls_1_2_and_1_3() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ])
        .args(["-subj", "/CN=vmpipe.example.net", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (Debian's openssl package) makes the test certificate");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let ingest = TestIngest::start(Options {
        tweak: Some(Box::new(move |s| {
            s.tls_cert = Some(cert);
            s.tls_key = Some(key);
        })),
        ..Options::default()
    })
    .await;
    let audio = nasty_audio(100_000);
    for (i, version) in [&rustls::version::TLS12, &rustls::version::TLS13]
        .into_iter()
        .enumerate()
    {
        let path = format!("/4e3005310add6229778caf6babfe7cfb/doc/tls{i}.mp3");
        let head = format!(
            "PUT {path} HTTP/1.1\r\ncontent-type: audio/mpeg\r\ncontent-length: {}\r\nte: \r\nhost: vmpipe.example.net:{}\r\nconnection: keep-alive\r\n\r\n",
            audio.len(),
            ingest.port
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(&audio);
        let (negotiated, stored) = exchange(ingest.port, version, &request).await;
        assert_eq!(negotiated, version.version);
        assert_eq!(stored.status, 201);
        let fetch = format!(
            "GET {path}{path}?folder=new HTTP/1.1\r\ncontent-length: 0\r\nte: \r\nhost: x\r\nconnection: keep-alive\r\n\r\n"
        );
        let (_, fetched) = exchange(ingest.port, version, fetch.as_bytes()).await;
        assert_eq!(fetched.status, 200);
        assert!(
            fetched.body == audio,
            "{:?}: byte-identical over TLS",
            version.version
        );
    }
    // Plain HTTP on the TLS port is refused, not served.
    assert!(
        http_get(ingest.port, "/healthz")
            .await
            .is_none_or(|(status, _)| status != 200)
    );
    ingest.stop().await;
}
