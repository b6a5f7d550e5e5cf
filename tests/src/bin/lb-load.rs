//! Opens TCP connections at a steady rate and holds them until its input closes: one of
//! the processes of `lb_tests::load::Load`, whose `client` says what it prints.
//!
//!   lb-load ADDRESS:PORT RATE COUNT FIRST_PORT

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [to, rate, count, first_port] = args.as_slice() else {
        bail!("usage: lb-load ADDRESS:PORT RATE COUNT FIRST_PORT")
    };
    let to = to.parse().with_context(|| format!("ADDRESS:PORT expected, not {to:?}"))?;
    let rate = rate.parse().with_context(|| format!("RATE (connections a second) expected, not {rate:?}"))?;
    let count = count.parse().with_context(|| format!("COUNT (connections) expected, not {count:?}"))?;
    let first_port = first_port
        .parse()
        .with_context(|| format!("FIRST_PORT (the first client port) expected, not {first_port:?}"))?;
    lb_tests::load::client(to, rate, count, first_port)
}
