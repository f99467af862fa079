//! Optional TLS for the gRPC port, matching KEDA's trigger settings:
//! `enableTLS` + `caCert` need a server certificate; `tlsClientCert` /
//! `tlsClientKey` are checked when a client CA is configured (then every
//! client must present a certificate it signed: mutual TLS).

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path} holds no PEM block")]
    NotPem { what: &'static str, path: PathBuf },
    #[error("--tls-cert and --tls-key go together; --tls-client-ca needs both")]
    Incomplete,
}

/// The server's TLS settings, or `None` for plaintext gRPC.
pub fn server_config(config: &Config) -> Result<Option<ServerTlsConfig>, TlsError> {
    let (cert, key) = match (&config.tls_cert, &config.tls_key, &config.tls_client_ca) {
        (None, None, None) => return Ok(None),
        (Some(cert), Some(key), _) => (cert, key),
        _ => return Err(TlsError::Incomplete),
    };
    let identity = Identity::from_pem(read_pem("certificate", cert)?, read_pem("private key", key)?);
    let mut tls = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &config.tls_client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read_pem("client CA", ca)?)).client_auth_optional(false);
    }
    Ok(Some(tls))
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_owned(), source })?;
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(TlsError::NotPem { what, path: path.to_owned() });
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn plaintext_unless_configured_and_files_are_checked() {
        let c = Config::try_parse_from(["s"]).unwrap();
        assert!(server_config(&c).unwrap().is_none());
        let c = Config::try_parse_from(["s", "--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem"])
            .unwrap();
        let err = server_config(&c).unwrap_err();
        assert!(matches!(err, TlsError::Read { what: "certificate", .. }), "{err}");
        let not_pem = std::env::temp_dir().join(format!("rtc-scaler-not-pem-{}", std::process::id()));
        std::fs::write(&not_pem, "hello").unwrap();
        let p = not_pem.to_str().unwrap();
        let c = Config::try_parse_from(["s", "--tls-cert", p, "--tls-key", p]).unwrap();
        assert!(matches!(server_config(&c).unwrap_err(), TlsError::NotPem { .. }));
        std::fs::remove_file(not_pem).unwrap();
    }
}
