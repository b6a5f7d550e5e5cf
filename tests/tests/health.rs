//! Each type of health check against real servers (openssl's TLS server, a UDP
//! service, a DNS responder, commands) in a namespace of their own, as the agent runs
//! them: healthy, and failing with why.

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Child,
    time::Duration,
};

use anyhow::{Context, Result};
use lb_agent::{config::Check, health::probe::probe};
use lb_tests::{
    lab::{self, binary},
    netns::{self, Netns},
};
use tokio::net::UdpSocket;

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 40, 1);
const HTTPS_PORT: u16 = 8443;
const UDP_PORT: u16 = 5353;
const DNS_PORT: u16 = 5300;
const CLOSED_PORT: u16 = 9;
/// The name the DNS responder serves; it refuses every other.
const SERVED_NAME: &[u8] = b"\x02ok\x03lab\x00";

/// A server in the namespace, stopped when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn check(yaml: &str) -> Check {
    serde_yaml::from_str(yaml).unwrap_or_else(|err| panic!("{yaml}: {err}"))
}

/// Runs every check in `checks` on `port` from inside `netns`, with a DNS responder
/// beside them; each outcome is `Ok` or why it failed.
fn probe_all(netns: &Netns, checks: &[(Check, u16)]) -> Result<Vec<Result<(), String>>> {
    netns.within(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            let dns = UdpSocket::bind((SERVER, DNS_PORT)).await?;
            tokio::spawn(answer_dns(dns));
            let mut outcomes = Vec::new();
            for (check, port) in checks {
                let outcome = probe(check, SocketAddr::new(SERVER.into(), *port)).await;
                outcomes.push(outcome.map_err(|why| format!("{why:#}")));
            }
            Ok(outcomes)
        })
    })
}

/// Answers each query with its own header turned into a reply: no error for
/// [`SERVED_NAME`], REFUSED (5) for any other.
async fn answer_dns(socket: UdpSocket) -> Result<()> {
    let mut query = [0; 512];
    loop {
        let (len, peer) = socket.recv_from(&mut query).await?;
        let mut reply = query[..len].to_vec();
        let served = reply.windows(SERVED_NAME.len()).any(|window| window == SERVED_NAME);
        reply[2] |= 0x80;
        reply[3] = (reply[3] & 0xf0) | if served { 0 } else { 5 };
        socket.send_to(&reply, peer).await?;
    }
}

#[test]
fn every_type_of_check_finds_a_healthy_server_healthy_and_a_failing_one_failing() -> Result<()> {
    lab::ensure_root()?;
    let netns = Netns::create(format!("{}-health", netns::unique_prefix()))?;
    netns.run(&["ip", "addr", "add", &format!("{SERVER}/32"), "dev", "lo"])?;
    let scratch = Scratch::new(&netns)?;
    let (key, cert) = (scratch.0.join("key.pem"), scratch.0.join("cert.pem"));
    lb_tests::netns::run(std::process::Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=lab",
        "-keyout",
        &key.to_string_lossy(),
        "-out",
        &cert.to_string_lossy(),
    ]))
    .context("making a certificate with openssl")?;
    let _tls = Server(
        netns
            .command("openssl")
            .args(["s_server", "-quiet", "-www", "-accept", &format!("{SERVER}:{HTTPS_PORT}")])
            .args(["-cert", &cert.to_string_lossy(), "-key", &key.to_string_lossy()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting openssl s_server")?,
    );
    let _udp = Server(
        netns
            .command(&binary("lb-udp-echo")?.to_string_lossy())
            .args(["udp-rs", &format!("{SERVER}:{UDP_PORT}")])
            .spawn()?,
    );
    let https = check("{ type: https, path: /, status: 200, expect: 's_server' }");
    lab::wait_until(Duration::from_secs(10), "openssl s_server to serve", || {
        Ok(probe_all(&netns, &[(https.clone(), HTTPS_PORT)])?[0].is_ok())
    })?;

    let healthy = [
        (https, HTTPS_PORT),
        (check("{ type: tcp }"), HTTPS_PORT),
        (check("{ type: udp, expect: udp-rs }"), UDP_PORT),
        (check("{ type: udp }"), UDP_PORT),
        (check("{ type: dns, query: ok.lab }"), DNS_PORT),
        (check("{ type: exec, command: 'test %a = 198.18.40.1 && test %p = 7' }"), 7),
    ];
    for ((check, _), outcome) in healthy.iter().zip(probe_all(&netns, &healthy)?) {
        assert_eq!(outcome, Ok(()), "{check:?}");
    }

    let failing = [
        (check("{ type: https, status: [500, 599] }"), HTTPS_PORT, "status 200, not 500-599"),
        (check("{ type: https, expect: nowhere }"), HTTPS_PORT, "does not contain \"nowhere\""),
        (check("{ type: http }"), CLOSED_PORT, "Connection refused"),
        (check("{ type: tcp }"), CLOSED_PORT, "Connection refused"),
        (check("{ type: udp, expect: another }"), UDP_PORT, "does not contain \"another\""),
        // An ICMP port unreachable answers a datagram to a closed port.
        (check("{ type: udp }"), CLOSED_PORT, "Connection refused"),
        (check("{ type: dns, query: other.lab }"), DNS_PORT, "error code 5"),
        (check("{ type: exec, command: 'exit 3' }"), 7, "exit status: 3"),
        (check("{ type: exec, command: 'sleep 30', timeout: 200ms }"), 7, "did not finish within 200ms"),
    ];
    let checks: Vec<(Check, u16)> = failing.iter().map(|(check, port, _)| (check.clone(), *port)).collect();
    for ((check, _, says), outcome) in failing.iter().zip(probe_all(&netns, &checks)?) {
        let why = outcome.expect_err(&format!("{check:?} should fail"));
        assert!(why.contains(says), "{check:?} failed with {why:?}, not {says:?}");
    }
    Ok(())
}

/// A scratch directory for the certificate, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(netns: &Netns) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{}{}", lab::SCRATCH, netns.name()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
