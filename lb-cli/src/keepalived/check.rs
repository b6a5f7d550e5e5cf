//! A real server's keepalived checker as our `check:`, with keepalived's defaults: a
//! checker takes what its real server does not say from it, and the real server from its
//! virtual server; then `delay_loop` 60 s, `connect_timeout` 5 s, `retry` 1 (DNS_CHECK
//! 3, MISC_CHECK 0). keepalived takes a real server down after `retry` + 1 failures in a
//! row and up again after one success: `fall` and `rise`.

use super::{
    Notes,
    read::{At, Checker, RealServer, Timing, Url, VirtualServer},
    yaml::{Check, CheckType, Duration, Status},
};

const DEFAULT_DELAY_LOOP: Duration = Duration::from_secs(60);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// keepalived's `url` without `status_code`.
const DEFAULT_STATUS: (u16, u16) = (200, 299);

/// The check of `rs`, whose port here is `port`: its first checker (keepalived wants
/// every checker of a real server to pass; ours is one check).
pub fn check(vs: &VirtualServer, rs: &RealServer, port: Option<u16>, notes: &mut Notes) -> Option<Check> {
    let (first, others) = rs.checkers.split_first()?;
    for other in others {
        notes.lost(
            &other.place,
            &other.keyword,
            format_args!("one check per real server here: the {} above is kept", first.keyword),
        );
    }
    convert(first, rs, vs, port, notes)
}

fn convert(
    checker: &Checker,
    rs: &RealServer,
    vs: &VirtualServer,
    port: Option<u16>,
    notes: &mut Notes,
) -> Option<Check> {
    let levels = [&checker.timing, &rs.timing, &vs.timing];
    let interval = inherited(levels, |timing| timing.delay_loop).unwrap_or(DEFAULT_DELAY_LOOP);
    let retry = inherited(levels, |timing| timing.retry).unwrap_or(match checker.kind {
        CheckType::Dns => 3,
        CheckType::Exec => 0,
        _ => 1,
    });
    // MISC_CHECK has no connection: its script may run for misc_timeout, else for the
    // virtual server's delay_loop.
    let timeout = match checker.kind {
        CheckType::Exec => checker.misc_timeout.or(vs.timing.delay_loop).unwrap_or(DEFAULT_DELAY_LOOP),
        _ => inherited(levels, |timing| timing.connect_timeout).unwrap_or(DEFAULT_CONNECT_TIMEOUT),
    };
    // keepalived accepts any retry up to UINT_MAX.
    let fall = retry.saturating_add(1);
    if retry > 0 {
        retry_delay(inherited(levels, |timing| timing.delay_before_retry.clone()), interval, fall, notes);
    }
    let mut check = Check {
        kind: checker.kind,
        // keepalived checks the real server's port unless told another.
        port: checker.connect_port.or(rs.port.filter(|&port| port != 0)).filter(|&checked| Some(checked) != port),
        path: None,
        status: None,
        expect: None,
        command: None,
        interval,
        timeout,
        rise: 1,
        fall,
    };
    match checker.kind {
        CheckType::Http | CheckType::Https => http(&mut check, checker, notes)?,
        CheckType::Exec => check.command = Some(command(checker, rs, notes)?),
        CheckType::Udp => check.expect = checker.reply.clone(),
        CheckType::Tcp | CheckType::Dns => {}
    }
    Some(check)
}

/// The first level (checker, real server, virtual server) that says it.
fn inherited<T>(levels: [&Timing; 3], pick: impl Fn(&Timing) -> Option<T>) -> Option<T> {
    levels.into_iter().find_map(pick)
}

/// keepalived checks again `delay_before_retry` after a failure; ours keep their
/// interval, so a failing real server goes down after `fall` × `interval`.
fn retry_delay(delay: Option<At<Duration>>, interval: Duration, fall: u32, notes: &mut Notes) {
    let Some(delay) = delay.filter(|delay| delay.value != interval) else { return };
    let down = Duration { micros: interval.micros.saturating_mul(u64::from(fall)) };
    notes.lost(
        &delay.place,
        "delay_before_retry",
        format_args!(
            "our checks keep their interval after a failure: a real server goes down after {fall} × {interval} = {down}"
        ),
    );
}

/// HTTP_GET and SSL_GET: one path, one status (a code or a range), and a regex that is
/// plain text as `expect:`.
fn http(check: &mut Check, checker: &Checker, notes: &mut Notes) -> Option<()> {
    let mut urls = checker.urls.iter().filter(|url| url.path.is_some());
    let Some(url) = urls.next() else {
        notes.lost(&checker.place, &checker.keyword, "it has no url with a path (keepalived drops it too)");
        return None;
    };
    let path = url.path.clone()?;
    for other in urls {
        notes.lost(&other.place, "url", format_args!("our check requests one path: {path}"));
    }
    check.status = Some(status(url, notes));
    check.expect = url.regex.as_ref().and_then(|regex| expect(regex, notes));
    check.path = Some(path);
    Some(())
}

/// keepalived's list of codes and ranges, as one code or one range: adjacent ones join,
/// and the lowest is kept.
fn status(url: &Url, notes: &mut Notes) -> Status {
    let mut ranges = if url.status.is_empty() { vec![DEFAULT_STATUS] } else { url.status.clone() };
    ranges.sort_unstable();
    let mut joined: Vec<(u16, u16)> = Vec::new();
    for (low, high) in ranges {
        match joined.last_mut() {
            Some(last) if low <= last.1 + 1 => last.1 = last.1.max(high),
            _ => joined.push((low, high)),
        }
    }
    let show = |&(low, high): &(u16, u16)| if low == high { low.to_string() } else { format!("{low}-{high}") };
    let (&first, rest) = joined.split_first().expect("at least the default range");
    if let (false, Some(place)) = (rest.is_empty(), &url.status_place) {
        let dropped: Vec<String> = rest.iter().map(show).collect();
        notes.lost(
            place,
            "status_code",
            format_args!("our status is one code or one range: {} is kept, {} not", show(&first), dropped.join(" ")),
        );
    }
    match first {
        (code, high) if code == high => Status::Code(code),
        (low, high) => Status::Range([low, high]),
    }
}

/// A regex without special characters finds its text anywhere in the body, as
/// `expect:` does.
fn expect(regex: &At<String>, notes: &mut Notes) -> Option<String> {
    if regex.value.contains(|c| "\\^$.|?*+()[]{}".contains(c)) {
        notes.lost(&regex.place, "regex", "our check looks for a plain string (expect:), not a regular expression");
        return None;
    }
    Some(regex.value.clone())
}

/// keepalived runs `misc_path` as written, so a script learns its real server from
/// literal arguments (`check.sh 10.0.0.1 80`); `%a` and `%p` say the same of whichever
/// real server is checked, so one check can serve the whole service.
fn command(checker: &Checker, rs: &RealServer, notes: &mut Notes) -> Option<String> {
    let Some(path) = &checker.command else {
        notes.lost(&checker.place, &checker.keyword, "it has no misc_path (keepalived drops it too)");
        return None;
    };
    if path.value.contains('%') {
        notes.note(
            &path.place,
            "misc_path",
            "our exec check reads `%a` and `%p` in it as the real server's address and port",
        );
    }
    let address = rs.address.to_string();
    let port = rs.port.map(|port| port.to_string());
    let words: Vec<&str> = path.value.split(' ').collect();
    let translated: Vec<String> = words
        .iter()
        .enumerate()
        .map(|(i, &word)| match (word, port.as_deref()) {
            (word, _) if word == address => "%a".to_owned(),
            (word, Some(port)) if word == port && i > 0 && words[i - 1] == address => "%p".to_owned(),
            (word, Some(port)) if word == format!("{address}:{port}") => "%a:%p".to_owned(),
            (word, _) => word.to_owned(),
        })
        .collect();
    Some(translated.join(" "))
}
