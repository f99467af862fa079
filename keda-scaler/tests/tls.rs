//! TLS and mutual TLS on the gRPC port, with certificates made here.

#![allow(clippy::unwrap_used)] // a broken fixture should fail the test loudly

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rtc_keda_scaler::proto::external_scaler_client::ExternalScalerClient;
use support::*;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca { pem: cert.pem(), issuer: Issuer::new(params, key) }
}

/// A certificate and key (PEM) signed by `ca`.
fn leaf(ca: &Ca, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A directory of PEM files, removed when dropped.
struct Files(PathBuf);

impl Files {
    fn new() -> Files {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rtc-scaler-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Files(dir)
    }

    fn write(&self, name: &str, pem: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Calls GetMetricSpec over TLS trusting `ca_pem`, optionally presenting a
/// client certificate; the error text if the connection or call fails.
async fn call(addr: SocketAddr, ca_pem: &str, identity: Option<&(String, String)>) -> Result<(), String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| format!("tls config: {e:?}"))?;
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let mut client = ExternalScalerClient::new(channel);
    client.get_metric_spec(reference(None)).await.map_err(|e| format!("call: {e:?}"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_right_ca_connects_wrong_ca_and_plaintext_are_refused() {
    let (good, other) = (ca("rtc test CA"), ca("some other CA"));
    let files = Files::new();
    let (cert, key) = leaf(&good, &["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let (cert, key) = (files.write("server.pem", &cert), files.write("server.key", &key));
    let prefix = prefix();
    let scaler = scaler(&prefix, &["--tls-cert", &cert, "--tls-key", &key]).await;

    call(scaler.addr, &good.pem, None).await.expect("the right CA connects");
    let refused = call(scaler.addr, &other.pem, None).await;
    eprintln!("wrong CA: {refused:?}");
    assert!(refused.is_err(), "a client trusting another CA must be refused");
    // A plaintext client gets nowhere either.
    let plaintext = async {
        let mut c =
            ExternalScalerClient::connect(format!("http://{}", scaler.addr)).await.map_err(|e| e.to_string())?;
        c.get_metric_spec(reference(None)).await.map_err(|e| e.to_string())
    };
    assert!(plaintext.await.is_err());
    scaler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_from_the_client_ca() {
    let (server_ca, client_ca, rogue_ca) = (ca("server CA"), ca("client CA"), ca("rogue CA"));
    let files = Files::new();
    let (cert, key) = leaf(&server_ca, &["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    let (cert, key) = (files.write("server.pem", &cert), files.write("server.key", &key));
    let client_ca_path = files.write("client-ca.pem", &client_ca.pem);
    let prefix = prefix();
    let scaler = scaler(&prefix, &["--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &client_ca_path]).await;

    let keda = leaf(&client_ca, &["keda-operator"], ExtendedKeyUsagePurpose::ClientAuth);
    call(scaler.addr, &server_ca.pem, Some(&keda)).await.expect("a client certificate from the client CA connects");
    let none = call(scaler.addr, &server_ca.pem, None).await;
    eprintln!("no client certificate: {none:?}");
    assert!(none.is_err(), "mTLS without a client certificate must be refused");
    let rogue = leaf(&rogue_ca, &["keda-operator"], ExtendedKeyUsagePurpose::ClientAuth);
    let rogue = call(scaler.addr, &server_ca.pem, Some(&rogue)).await;
    eprintln!("client certificate from another CA: {rogue:?}");
    assert!(rogue.is_err(), "a client certificate from another CA must be refused");
    assert!(call(scaler.addr, &client_ca.pem, Some(&keda)).await.is_err(), "and the server is still verified");
    scaler.shutdown().await;
}
