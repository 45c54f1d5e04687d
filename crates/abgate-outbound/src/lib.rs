//! abgate's one outbound HTTP client, for the calls that are not proxied requests:
//! experiment gates and event webhooks, the Prometheus metric source, the endpoints' load
//! pages. Plain HTTP or HTTPS over rustls, one total deadline over resolving, connecting,
//! the answer's head and its body, a cap on the body, and an optional allow-list of
//! networks checked on the very address connected to (resolve, check, connect to that
//! address), so a name that resolves differently the second time cannot get around it.
//!
//! Each call is one HTTP/1.1 exchange on a connection of its own, closed with it: the
//! callers call every few seconds at most, and nothing lingers past a deadline.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Largest answer body read from a webhook: a verdict fits in far less.
pub const MAX_WEBHOOK_BODY: usize = 64 << 10;

/// Why a call did not bring an answer.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The URL is not an `http://` or `https://` URL with a host.
    #[error("`{0}` is not an http(s) URL with a host")]
    BadUrl(String),
    /// Every address the host resolves to is outside `--gate-allow`.
    #[error("{host} resolves to {addresses}, outside --gate-allow; not called")]
    NotAllowed {
        /// The URL's host.
        host: String,
        /// What it resolved to.
        addresses: String,
    },
    /// The whole exchange took longer than the deadline.
    #[error("no complete answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The answer's body is larger than the call allows (bytes).
    #[error("the answer's body is larger than {} KiB; not read further", .0 >> 10)]
    TooLarge(usize),
    /// Resolving, connecting, TLS or HTTP failed.
    #[error("{0}")]
    Failed(String),
}

/// Where calls may be sent: anywhere, or only to addresses in these networks.
#[derive(Debug, Clone, Default)]
pub struct AllowList(Option<Arc<[IpNet]>>);

impl AllowList {
    /// Only addresses inside `networks` (none given: every address).
    pub fn only(networks: Vec<IpNet>) -> Self {
        if networks.is_empty() {
            Self(None)
        } else {
            Self(Some(networks.into()))
        }
    }

    /// Whether `ip` may be connected to. An IPv4 address written as IPv6
    /// (`::ffff:10.0.0.1`) is judged as the IPv4 address it is.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0
            .as_ref()
            .is_none_or(|networks| networks.iter().any(|n| n.contains(&ip)))
    }
}

/// Parses one `--gate-allow` entry: a CIDR (`10.0.0.0/8`, `fd00::/8`) or a single
/// address.
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{text}` is not a CIDR (e.g. 10.0.0.0/8) or an IP address"))
}

/// An answer: its status and its whole body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The body, read whole (within the call's cap).
    pub body: Bytes,
}

/// The client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    tls: TlsConnector,
    allow: AllowList,
}

impl Client {
    /// A client trusting the Mozilla roots (webpki-roots) and, when given, the
    /// certificates of the PEM file `extra_ca`; sending only where `allow` lets it.
    pub fn new(extra_ca: Option<&Path>, allow: AllowList) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = extra_ca {
            let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("cannot parse {}: {e}", path.display()))?;
            if certificates.is_empty() {
                anyhow::bail!("{} holds no PEM certificate", path.display());
            }
            for certificate in certificates {
                roots.add(certificate).map_err(|e| {
                    anyhow::anyhow!("{}: not a usable CA certificate: {e}", path.display())
                })?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            tls: TlsConnector::from(Arc::new(config)),
            allow,
        })
    }

    /// A client trusting the Mozilla roots, calling anywhere.
    pub fn unrestricted() -> Self {
        Self::new(None, AllowList::default())
            .expect("without a CA file, only the TLS defaults could fail, and ring has them")
    }

    /// POSTs `body` as JSON to `url` (a webhook) and returns the answer's status once its
    /// whole body (at most [`MAX_WEBHOOK_BODY`]) has arrived, all within `deadline`.
    pub async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
        deadline: Duration,
    ) -> Result<StatusCode, OutboundError> {
        let call = Call {
            method: http::Method::POST,
            body: Bytes::from(body.to_string()),
            content_type: Some("application/json"),
            accept: None,
            max_body: MAX_WEBHOOK_BODY,
        };
        self.call(url, call, deadline).await.map(|a| a.status)
    }

    /// GETs `url`, accepting `accept`, and returns the answer once its whole body (at
    /// most `max_body` bytes) has arrived, all within `deadline`.
    pub async fn get(
        &self,
        url: &str,
        accept: &'static str,
        max_body: usize,
        deadline: Duration,
    ) -> Result<Answer, OutboundError> {
        let call = Call {
            method: http::Method::GET,
            body: Bytes::new(),
            content_type: None,
            accept: Some(accept),
            max_body,
        };
        self.call(url, call, deadline).await
    }

    async fn call(
        &self,
        url: &str,
        call: Call,
        deadline: Duration,
    ) -> Result<Answer, OutboundError> {
        // Dropping the exchange at the deadline closes its connection: nothing lingers.
        tokio::time::timeout(deadline, self.exchange(url, call))
            .await
            .unwrap_or(Err(OutboundError::Timeout(deadline)))
    }

    async fn exchange(&self, url: &str, call: Call) -> Result<Answer, OutboundError> {
        let uri: Uri = url
            .parse()
            .map_err(|_| OutboundError::BadUrl(url.to_owned()))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(OutboundError::BadUrl(url.to_owned())),
        };
        let (Some(authority), Some(host)) = (uri.authority().cloned(), uri.host()) else {
            return Err(OutboundError::BadUrl(url.to_owned()));
        };
        // `[::1]` in a URL is `::1` to the resolver and to TLS.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let stream = self.connect(&host, port).await?;
        let mut request = http::Request::builder()
            .method(call.method)
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
            // `user:password@` is no part of the Host header.
            .header(http::header::HOST, host_header(authority.as_str()))
            .header(
                http::header::USER_AGENT,
                concat!("abgate/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(content_type) = call.content_type {
            request = request.header(http::header::CONTENT_TYPE, content_type);
        }
        if let Some(accept) = call.accept {
            request = request.header(http::header::ACCEPT, accept);
        }
        let request = request
            .body(Full::new(call.body))
            .map_err(|e| OutboundError::Failed(e.to_string()))?;
        if tls {
            let name = ServerName::try_from(host.clone())
                .map_err(|_| OutboundError::BadUrl(url.to_owned()))?;
            let stream = self
                .tls
                .connect(name, stream)
                .await
                .map_err(|e| OutboundError::Failed(format!("TLS with {host}: {e}")))?;
            send(stream, request, call.max_body).await
        } else {
            send(stream, request, call.max_body).await
        }
    }

    /// Resolves `host`, keeps the addresses the allow-list lets through, and connects to
    /// the first that accepts.
    async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, OutboundError> {
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| OutboundError::Failed(format!("cannot resolve {host}: {e}")))?
            .collect();
        let allowed: Vec<SocketAddr> = resolved
            .iter()
            .copied()
            .filter(|a| self.allow.allows(a.ip()))
            .collect();
        if allowed.is_empty() {
            let addresses = resolved
                .iter()
                .map(|a| a.ip().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(OutboundError::NotAllowed {
                host: host.to_owned(),
                addresses,
            });
        }
        let mut last = None;
        for address in allowed {
            match TcpStream::connect(address).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last = Some(format!("cannot connect to {address}: {e}")),
            }
        }
        Err(OutboundError::Failed(last.unwrap_or_default()))
    }
}

/// The Host header of a URL's authority: without any `user:password@`.
fn host_header(authority: &str) -> &str {
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

/// What one call sends, and how much of the answer it reads.
struct Call {
    method: http::Method,
    body: Bytes,
    content_type: Option<&'static str>,
    accept: Option<&'static str>,
    max_body: usize,
}

/// One HTTP/1.1 exchange on `stream`: the answer, once its body (at most `max_body`
/// bytes) has been read. The connection is driven here, not in a task of its own, so
/// that it ends with the exchange.
async fn send<S>(
    stream: S,
    request: http::Request<Full<Bytes>>,
    max_body: usize,
) -> Result<Answer, OutboundError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let failed = |e: hyper::Error| OutboundError::Failed(e.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(failed)?;
    let exchange = async move {
        let response = sender.send_request(request).await.map_err(failed)?;
        let status = response.status();
        let declared = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body as u64) {
            return Err(OutboundError::TooLarge(max_body));
        }
        let body = Limited::new(response.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| match e.downcast::<http_body_util::LengthLimitError>() {
                Ok(_) => OutboundError::TooLarge(max_body),
                Err(e) => OutboundError::Failed(e.to_string()),
            })?
            .to_bytes();
        Ok(Answer { status, body })
    };
    tokio::pin!(exchange, connection);
    tokio::select! {
        biased;
        answer = &mut exchange => answer,
        // The connection may end once the answer is in: the exchange then finishes.
        ended = &mut connection => match ended {
            Ok(()) => exchange.await,
            Err(e) => Err(failed(e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    /// A server on 127.0.0.1 that reads one request and writes `answer` raw, then keeps
    /// the connection open; the URL to call it.
    async fn raw_server(answer: Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer).await;
            let _ = stream.write_all(&answer).await;
            // Held open: a client waiting for the rest of the body would wait forever.
            std::future::pending::<()>().await;
        });
        url
    }

    #[tokio::test]
    async fn a_declared_body_over_the_limit_fails_without_being_read() {
        let url = raw_server(b"HTTP/1.1 200 OK\r\ncontent-length: 65537\r\n\r\n".to_vec()).await;
        let client = Client::new(None, AllowList::default()).unwrap();
        let answer = client
            .post_json(&url, &serde_json::json!({}), Duration::from_secs(60))
            .await;
        assert!(
            matches!(answer, Err(OutboundError::TooLarge(_))),
            "{answer:?}"
        );
    }

    /// An answer with a chunked body of `size` bytes.
    fn chunked(size: usize) -> Vec<u8> {
        let mut answer = b"HTTP/1.1 202 Accepted\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for piece in vec![b'x'; size].chunks(10_000) {
            answer.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            answer.extend_from_slice(piece);
            answer.extend_from_slice(b"\r\n");
        }
        answer.extend_from_slice(b"0\r\n\r\n");
        answer
    }

    #[tokio::test]
    async fn a_streamed_body_may_reach_the_limit_but_not_pass_it() {
        let client = Client::new(None, AllowList::default()).unwrap();
        let body = serde_json::json!({});
        let deadline = Duration::from_secs(60);
        let at_limit = raw_server(chunked(MAX_WEBHOOK_BODY)).await;
        let answer = client.post_json(&at_limit, &body, deadline).await;
        assert_eq!(answer.unwrap(), StatusCode::ACCEPTED);
        let past_limit = raw_server(chunked(MAX_WEBHOOK_BODY + 1)).await;
        let answer = client.post_json(&past_limit, &body, deadline).await;
        assert!(
            matches!(answer, Err(OutboundError::TooLarge(_))),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn https_needs_a_certificate_from_a_trusted_ca() {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let key =
            rustls::pki_types::PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key.into())
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    continue;
                };
                let mut buffer = [0u8; 4096];
                let _ = tls.read(&mut buffer).await;
                let _ = tls
                    .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = tls.shutdown().await;
            }
        });
        let body = serde_json::json!({});
        let deadline = Duration::from_secs(60);

        let untrusting = Client::new(None, AllowList::default()).unwrap();
        let refused = untrusting.post_json(&url, &body, deadline).await;
        assert!(
            matches!(&refused, Err(OutboundError::Failed(why)) if why.starts_with("TLS with 127.0.0.1")),
            "{refused:?}"
        );

        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, certified.cert.pem()).unwrap();
        let trusting = Client::new(Some(&ca), AllowList::default()).unwrap();
        let answer = trusting.post_json(&url, &body, deadline).await;
        assert_eq!(answer.unwrap(), StatusCode::NO_CONTENT);
    }

    #[tokio::test]
    async fn a_get_returns_the_whole_body_within_its_own_cap() {
        let page = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nqueue 3\nok\n".to_vec();
        let client = Client::unrestricted();
        let deadline = Duration::from_secs(60);
        let url = raw_server(page.clone()).await;
        let answer = client.get(&url, "text/plain", 11, deadline).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(&answer.body[..], b"queue 3\nok\n");
        let url = raw_server(page).await;
        let answer = client.get(&url, "text/plain", 10, deadline).await;
        assert!(
            matches!(answer, Err(OutboundError::TooLarge(10))),
            "{answer:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_server_is_a_timeout_at_the_deadline() {
        let url = raw_server(Vec::new()).await;
        let client = Client::unrestricted();
        let answer = client
            .get(&url, "text/plain", 10, Duration::from_secs(3))
            .await;
        assert!(
            matches!(answer, Err(OutboundError::Timeout(d)) if d == Duration::from_secs(3)),
            "{answer:?}"
        );
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = Client::new(Some(&empty), AllowList::default())
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("holds no PEM certificate"), "{error}");
    }

    #[test]
    fn the_host_header_carries_no_credentials() {
        assert_eq!(host_header("gate.example:8443"), "gate.example:8443");
        assert_eq!(host_header("user:secret@gate.example"), "gate.example");
        assert_eq!(host_header("[::1]:80"), "[::1]:80");
    }

    #[test]
    fn networks_parse_as_cidrs_or_single_addresses() {
        assert_eq!(
            parse_network("10.0.0.0/8"),
            Ok("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            parse_network(" 192.168.1.7 "),
            Ok("192.168.1.7/32".parse().unwrap())
        );
        assert_eq!(parse_network("fd00::/8"), Ok("fd00::/8".parse().unwrap()));
        let error = parse_network("10.0.0.0/33").unwrap_err();
        assert!(error.contains("10.0.0.0/33"), "{error}");
        assert!(parse_network("internal").is_err());
    }

    #[test]
    fn the_allow_list_judges_addresses_as_they_are_connected_to() {
        let everything = AllowList::default();
        assert!(everything.allows("127.0.0.1".parse().unwrap()));
        let ten = AllowList::only(vec![parse_network("10.0.0.0/8").unwrap()]);
        assert!(ten.allows("10.1.2.3".parse().unwrap()));
        assert!(!ten.allows("127.0.0.1".parse().unwrap()));
        assert!(!ten.allows("::1".parse().unwrap()));
        // An IPv4-mapped IPv6 address is the IPv4 address it carries.
        assert!(ten.allows("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!ten.allows("::ffff:127.0.0.1".parse().unwrap()));
    }
}
