use super::*;

fn parsed(line: &str) -> Invocation {
    let args: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    parse(&args).unwrap_or_else(|refusal| panic!("{line}: refused: {refusal:?}"))
}

fn refusal(line: &str) -> (i32, String) {
    let args: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
    let refusal = parse(&args).err().unwrap_or_else(|| panic!("{line}: accepted"));
    (refusal.status, refusal.message)
}

#[test]
fn commands_options_and_defaults_are_ipvsadms() {
    let add = parsed("-A -t 203.0.113.10:80 -s wrr -p");
    assert_eq!(add.command, Some(Command::AddService));
    let vip: IpAddr = "203.0.113.10".parse().unwrap();
    assert_eq!(add.service, Some(Service::Address { protocol: "tcp", vip, port: 80 }));
    assert_eq!((add.scheduler.as_deref(), add.persistent), (Some("wrr"), Some(DEFAULT_PERSISTENCE)));
    let clustered = parsed("-Ln");
    assert_eq!(clustered.command, Some(Command::List));
    assert!(clustered.has(opt::NUMERIC));
    let long =
        parsed("--add-server --udp-service=[2001:db8::53]:53 --real-server [2001:db8::1]:5353 --masquerading -w 3");
    assert_eq!(long.real, Some(("2001:db8::1".parse().unwrap(), Some(5353))));
    assert_eq!((long.forwarding, long.weight), (Some(Forwarding::Nat), Some(3)));
    let persistent = parsed("-A -u 203.0.113.10:53 -p -M 255.255.255.0");
    assert_eq!((persistent.persistent, persistent.netmask.as_deref()), (Some(360), Some("255.255.255.0")));
    assert_eq!(parsed("-A -t 203.0.113.10 -p600").persistent, Some(600));
    let fwmark = parsed("-A -f 11 -6 -s rr --match tcp:[2001:db8::10]:80,443");
    assert_eq!(fwmark.service, Some(Service::Fwmark { mark: 11, ipv6: true }));
    assert_eq!(fwmark.matches, ["tcp:[2001:db8::10]:80,443"]);
    assert_eq!(parsed("").command, Some(Command::List));
    assert_eq!(parsed("--set 900 0 60").values, ["900", "0", "60"]);
}

#[test]
fn scheduler_flags_are_the_schedulers_own() {
    assert_eq!(
        parsed("-A -t 203.0.113.10:80 -s mh -b mh-port,flag-1").sched_flags.as_deref(),
        Some("mh-port,mh-fallback")
    );
    assert_eq!(refusal("-A -t 203.0.113.10:80 -b sh-port"), (2, "incompatible scheduler flag `sh-port'".into()));
    assert_eq!(refusal("-A -t 203.0.113.10:80 -s sh -b sh-bogus"), (2, "invalid scheduler flag `sh-bogus'".into()));
}

#[test]
fn mistakes_get_ipvsadms_messages_and_statuses() {
    let try_help = (255, TRY_HELP.to_owned());
    assert_eq!(refusal("-nL"), try_help);
    assert_eq!(refusal("web"), try_help);
    let cases = [
        ("-A -s rr", "You need to supply the 'service-address' option for the 'add-service' command"),
        ("-a -t 10.0.0.1:80", "You need to supply the 'real-server' option for the 'add-server' command"),
        ("-A -t 10.0.0.1:80 -n", "Illegal 'numeric' option with the 'add-service' command"),
        ("-d -t 10.0.0.1:80 -r 10.0.0.2 -w 3", "Illegal 'weight' option with the 'delete-server' command"),
        ("-C -n", "Illegal 'numeric' option with the 'flush' command"),
        ("-L -c --timeout", "The option 'timeout' conflicts with the 'connection' option in the 'list' command"),
        ("-L -n -n", "multiple 'numeric' options specified"),
        ("-a -t 10.0.0.1:80 -r 10.0.0.2 -g -m", "multiple 'forwarding-method' options specified"),
        ("-a -t 10.0.0.1:80 -r 10.0.0.2 -w 70000", "illegal weight specified"),
        ("-a -t 10.0.0.1:80 -r 2001:db8::2 -g", "Different address family is allowed only for tunneling servers"),
        ("-A -t 10.0.0.1", "Zero port specified for non-persistent service"),
        ("-A -t 80", "illegal virtual server address[:port] specified"),
        ("-A -t [2001:db8::1] -p", "illegal virtual server address[:port] specified"),
        ("-A -t 10.0.0.1:80 -p 0", "invalid timeout value `0' specified"),
        ("-A -t 10.0.0.1:80 -p -M 255.255.0.x", "illegal virtual server persistent mask specified"),
        ("-A -f 0", "invalid fwmark value `0' specified"),
        ("-A -t 10.0.0.1:80 -6", "-6 used before -f"),
        ("--set 900 120", "--set option requires 3 timeout values"),
        ("--set 1 2 3 4", "unexpected argument 4"),
        ("-L -A", "invalid option `-A'"),
        ("-L -c --stats", "options conflicts in the list command"),
    ];
    for (line, message) in cases {
        assert_eq!(refusal(line), (2, message.to_owned()), "{line}");
    }
    assert_eq!(refusal("-L --bogus"), (255, "--bogus: unknown option".into()));
    assert_eq!(refusal("-A -t"), (255, "-t: missing argument".into()));
}

#[test]
fn addresses_are_read_as_ipvsadm_reads_them() {
    type Read<'a> = Option<(&'a str, Option<u16>)>;
    let cases: [(&str, Read); 8] = [
        ("10.0.0.1:80", Some(("10.0.0.1", Some(80)))),
        ("10.0.0.1", Some(("10.0.0.1", None))),
        ("10.0.0.1:0", Some(("10.0.0.1", Some(0)))),
        ("[2001:db8::1]:443", Some(("2001:db8::1", Some(443)))),
        ("2001:db8::1", Some(("2001:db8::1", None))),
        ("[2001:db8::1]", None),
        ("10.0.0.1:99999", None),
        ("80", None),
    ];
    for (text, expected) in cases {
        let expected = expected.map(|(address, port)| (address.parse::<IpAddr>().unwrap(), port));
        assert_eq!(address(text, "tcp"), expected, "{text}");
    }
}
