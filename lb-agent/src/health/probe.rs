//! One check of one real server, each type as keepalived's checker of the same kind
//! does it, from the director's own addresses (the kernel picks the source). A check
//! ends within its timeout, healthy or with why not.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::Stdio,
    sync::{Arc, OnceLock},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    process::Command,
    time::timeout,
};
use tokio_rustls::TlsConnector;

use crate::config::{Check, CheckType, DEFAULT_QUERY, DEFAULT_STATUS};

/// What an HTTP check reads of an answer at most: enough for any health page.
const MAX_ANSWER: u64 = 64 * 1024;
/// A DNS reply, or a UDP check's, is read into this.
const MAX_DATAGRAM: usize = 4096;
const DNS_TYPE_SOA: u16 = 6;
const DNS_CLASS_IN: u16 = 1;
const DNS_RECURSION_DESIRED: u16 = 0x0100;
const DNS_REPLY: u16 = 0x8000;

/// Checks the real server at `at` once.
pub async fn probe(check: &Check, at: SocketAddr) -> Result<()> {
    match check.kind {
        CheckType::Tcp => within(check, async { connect(at).await.map(drop) }).await,
        CheckType::Http => within(check, async { http(connect(at).await?, check, at).await }).await,
        CheckType::Https => {
            within(check, async { http(tls(connect(at).await?, at.ip()).await?, check, at).await }).await
        }
        CheckType::Dns => within(check, dns(check, at)).await,
        // Silence until the timeout is a UDP check's success, and a command that
        // outlives it must be killed: each keeps its own time.
        CheckType::Udp => udp(check, at).await,
        CheckType::Exec => exec(check, at).await,
    }
}

async fn within(check: &Check, work: impl Future<Output = Result<()>>) -> Result<()> {
    timeout(check.timeout.0, work).await.unwrap_or_else(|_| Err(anyhow!("no answer within {}", check.timeout)))
}

async fn connect(at: SocketAddr) -> Result<TcpStream> {
    TcpStream::connect(at).await.context("connecting")
}

/// An HTTP/1.0 GET of the check's path (1.0, so the answer is never chunked): the
/// status must be the check's, and the body hold `expect`.
async fn http<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, check: &Check, at: SocketAddr) -> Result<()> {
    let path = check.path.as_deref().unwrap_or("/");
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {at}\r\nUser-Agent: lb-agent health check\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.context("sending the request")?;
    let mut answer = Vec::new();
    let read = (&mut stream).take(MAX_ANSWER).read_to_end(&mut answer).await;
    // A TLS server may close without saying so; what arrived is the answer.
    if let Err(err) = read
        && (answer.is_empty() || err.kind() != std::io::ErrorKind::UnexpectedEof)
    {
        return Err(err).context("reading the answer");
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let body_at = match response.parse(&answer).context("reading the answer's head")? {
        httparse::Status::Complete(at) => at,
        httparse::Status::Partial => bail!("the answer ended in its head"),
    };
    let code = response.code.context("an answer without a status")?;
    let status = check.status.unwrap_or(DEFAULT_STATUS);
    ensure!(status.accepts(code), "status {code}, not {status}");
    expect_in(check, &answer[body_at..])
}

/// Whether `received` holds the check's `expect`, if it has one.
fn expect_in(check: &Check, received: &[u8]) -> Result<()> {
    let Some(expect) = &check.expect else { return Ok(()) };
    let found = received.windows(expect.len().max(1)).any(|window| window == expect.as_bytes());
    ensure!(found || expect.is_empty(), "the answer does not contain {expect:?}");
    Ok(())
}

/// A TLS session over `stream`, whatever the certificate: a health check asks whether
/// the server answers, not who it is (keepalived's SSL_GET does not verify either).
async fn tls(stream: TcpStream, address: IpAddr) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring's provider supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        Arc::new(config)
    });
    TlsConnector::from(config.clone())
        .connect(ServerName::IpAddress(address.into()), stream)
        .await
        .context("the TLS handshake")
}

/// Accepts any certificate, but checks the handshake's signatures with it, so the
/// session is a real TLS session.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A socket of `at`'s IP version, connected to it, so ICMP errors come back to it.
async fn udp_socket(at: SocketAddr) -> Result<UdpSocket> {
    let any: IpAddr = if at.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    let socket = UdpSocket::bind((any, 0)).await.context("opening a UDP socket")?;
    socket.connect(at).await.context("connecting the UDP socket")?;
    Ok(socket)
}

/// keepalived's UDP_CHECK: the payload is sent; with `expect`, a reply holding it must
/// come; without, any reply or silence until the timeout is healthy, and only an ICMP
/// error (port unreachable) fails it.
async fn udp(check: &Check, at: SocketAddr) -> Result<()> {
    let socket = udp_socket(at).await?;
    socket.send(check.payload.as_deref().unwrap_or("").as_bytes()).await.context("sending")?;
    let mut reply = vec![0; MAX_DATAGRAM];
    match timeout(check.timeout.0, socket.recv(&mut reply)).await {
        Ok(Ok(len)) => expect_in(check, &reply[..len]),
        Ok(Err(err)) => Err(err).context("no reply"),
        Err(_) if check.expect.is_none() => Ok(()),
        Err(_) => bail!("no reply within {}", check.timeout),
    }
}

/// keepalived's DNS_CHECK: a query for the SOA of the check's `query` name must be
/// answered, with the query's id and no error.
async fn dns(check: &Check, at: SocketAddr) -> Result<()> {
    let socket = udp_socket(at).await?;
    let id = query_id();
    let query = dns_query(id, check.query.as_deref().unwrap_or(DEFAULT_QUERY))?;
    socket.send(&query).await.context("sending the query")?;
    let mut reply = vec![0; MAX_DATAGRAM];
    loop {
        let len = socket.recv(&mut reply).await.context("no reply")?;
        let word = |at: usize| u16::from_be_bytes([reply[at], reply[at + 1]]);
        // Anything else on the socket (a late reply to an earlier query) is not ours.
        if len < 12 || word(0) != id || word(2) & DNS_REPLY == 0 {
            continue;
        }
        let rcode = word(2) & 0x000f;
        ensure!(rcode == 0, "the server answered with error code {rcode}");
        return Ok(());
    }
}

/// A query's id that an earlier query's late reply is unlikely to carry.
fn query_id() -> u16 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.subsec_nanos());
    (nanos ^ (nanos >> 16)) as u16
}

/// A recursive query for `name`'s SOA record.
pub fn dns_query(id: u16, name: &str) -> Result<Vec<u8>> {
    let mut query = Vec::with_capacity(32 + name.len());
    for word in [id, DNS_RECURSION_DESIRED, 1, 0, 0, 0] {
        query.extend(word.to_be_bytes());
    }
    for label in name.trim_end_matches('.').split('.').filter(|label| !label.is_empty()) {
        ensure!(label.len() < 64, "the label {label:?} of {name:?} is longer than 63 bytes");
        query.push(label.len() as u8);
        query.extend(label.as_bytes());
    }
    ensure!(query.len() - 12 < 256, "{name:?} is longer than a DNS name can be (255 bytes)");
    query.push(0);
    query.extend(DNS_TYPE_SOA.to_be_bytes());
    query.extend(DNS_CLASS_IN.to_be_bytes());
    Ok(query)
}

/// keepalived's MISC_CHECK: the command, run by the shell with `%a` and `%p` replaced,
/// must exit 0 within the timeout. It runs in a process group of its own, so a command
/// that outlives its time is killed with everything it started.
async fn exec(check: &Check, at: SocketAddr) -> Result<()> {
    let command = check.command.as_deref().context("an exec check without a command")?;
    let command = command.replace("%a", &at.ip().to_string()).replace("%p", &at.port().to_string());
    let child = Command::new("/bin/sh")
        .args(["-c", &command])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("starting /bin/sh")?;
    let mut group = Group(child);
    let status = timeout(check.timeout.0, group.0.wait())
        .await
        .map_err(|_| anyhow!("the command did not finish within {}", check.timeout))?
        .context("waiting for the command")?;
    ensure!(status.success(), "the command {status}");
    Ok(())
}

/// A command's process group, killed whole when dropped: at its timeout, or when its
/// check's task ends (a reload changed the check) while it runs.
struct Group(tokio::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id() {
            // SAFETY: kill(2) on the process group the child leads (its pid is not
            // reused before the child is reaped, which tokio does after this).
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dns_query_asks_for_the_names_soa() {
        let query = dns_query(0x1234, "example.org.").unwrap();
        let question = b"\x07example\x03org\x00\x00\x06\x00\x01";
        assert_eq!(&query[..12], &[0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&query[12..], question);
        assert_eq!(&dns_query(1, ".").unwrap()[12..], b"\x00\x00\x06\x00\x01");
        assert!(dns_query(1, &"a".repeat(64)).is_err());
    }
}
