//! TLS termination for HTTPS Gateway servers: certificates chosen by SNI among the
//! servers of a port, loaded as a Kubernetes TLS secret mounts them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use abgate_config::model::Credential;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use abgate_router::Server;

/// Certificates for one HTTPS port, by the hosts of each server.
#[derive(Debug)]
struct SniResolver {
    entries: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        name.as_deref()
            .and_then(|host| {
                self.entries
                    .iter()
                    .find(|(hosts, _)| hosts.iter().any(|p| abgate_config::host_matches(p, host)))
            })
            .or(self.entries.first())
            .map(|(_, key)| Arc::clone(key))
    }
}

/// Where a server's certificate and key are: `<certs>/<credentialName>/tls.crt` and
/// `tls.key`, or the files the Gateway names.
fn credential_files(
    credential: &Credential,
    certs_dir: Option<&Path>,
) -> Result<(PathBuf, PathBuf), String> {
    match credential {
        Credential::Named(name) => {
            let dir = certs_dir.ok_or_else(|| {
                format!("credential {name} needs --certs DIR (looked for DIR/{name}/tls.crt)")
            })?;
            let secret = secret_dir(dir, name)?;
            Ok((secret.join("tls.crt"), secret.join("tls.key")))
        }
        Credential::Files {
            certificate,
            private_key,
        } => Ok((PathBuf::from(certificate), PathBuf::from(private_key))),
    }
}

/// The directory of a named secret: `<certs>/<name>` or `<certs>/<namespace>/<name>`.
/// Only a valid Secret reference is taken, and the path is built from plain components
/// only, so that it cannot leave the certs directory whatever the name holds.
fn secret_dir(certs_dir: &Path, name: &str) -> Result<PathBuf, String> {
    abgate_config::syntax::check_credential_name(name)?;
    let relative = Path::new(name);
    let plain = relative
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain {
        return Err(format!(
            "credential `{name}` would leave the certs directory; refused"
        ));
    }
    Ok(certs_dir.join(relative))
}

fn load_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot parse {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read key {}: {e}", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| format!("unsupported key {}: {e}", key.display()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// A TLS server configuration for the HTTPS servers of one port. Servers whose
/// credential cannot be loaded are skipped with a warning, as Istio skips them; `None`
/// when none is left.
pub fn server_config(
    servers: &[Server],
    certs_dir: Option<&Path>,
) -> Option<Arc<rustls::ServerConfig>> {
    let mut entries = Vec::new();
    for server in servers {
        let Some(credential) = server.tls.as_ref().and_then(|t| t.credential.as_ref()) else {
            tracing::warn!(gateway = %server.gateway, port = server.port, "HTTPS server has no credential; skipped");
            continue;
        };
        match credential_files(credential, certs_dir).and_then(|(c, k)| load_key(&c, &k)) {
            Ok(key) => entries.push((server.hosts.clone(), key)),
            Err(reason) => {
                tracing::warn!(gateway = %server.gateway, port = server.port, %reason, "TLS credential missing; server skipped")
            }
        }
    }
    if entries.is_empty() {
        return None;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { entries }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Some(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_paths_stay_inside_the_certs_directory() {
        let certs = Path::new("/certs");
        assert_eq!(
            secret_dir(certs, "api-tls").unwrap(),
            Path::new("/certs/api-tls")
        );
        assert_eq!(
            secret_dir(certs, "istio-system/api-tls").unwrap(),
            Path::new("/certs/istio-system/api-tls")
        );
        for escape in ["../etc", "a/../../b", "/etc/ssl", "..", "ns/..", "a//b", ""] {
            assert!(secret_dir(certs, escape).is_err(), "{escape}");
        }
    }
}
