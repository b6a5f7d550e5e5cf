#!/bin/sh
# Sets up a real server for LVS direct routing (dr) or tunnelling (tun), as LVS
# operators do by hand: every VIP on the loopback, so the real server accepts packets
# for it and answers the client itself, and ARP tuned so it never answers or announces
# the VIPs (only the director may, or clients would bypass it).
#
#   realserver.sh start [--tun] VIP [VIP ...]   add the VIPs, set arp_ignore=1 / arp_announce=2
#   realserver.sh stop [--tun] VIP [VIP ...]    undo all of it, restore the ARP defaults
#   realserver.sh status                        the loopback's addresses, ARP settings, lb-decap
#
# With --tun the director's packets come in IP tunnels (IPIP, IPv6-in-IPv6, IPv4-in-
# IPv6), and this kernel may have no ipip/ip6_tunnel modules: lb-decap (from PATH, or
# beside this script) strips the outer header in XDP on every interface that is up
# with an Ethernet address, so the client's packet reaches the VIP on the loopback
# as if it had come directly. rp_filter is relaxed from strict (1) to loose (2) where
# it is strict, since the client's packet arrives on the interface the tunnel came
# by, which need not be the route back to the client. `start` returns once lb-decap
# is attached; `stop`, with or without --tun, stops it and restores rp_filter.
# lb-decap's pid file, log and the saved rp_filter values are in /run/lb/, named
# after this network namespace, so real servers in several namespaces of one host
# keep apart (LB_RUN_DIR names another directory).
#
# IPv6 needs no ARP tuning: Linux answers neighbour solicitations only for addresses
# on the interface they arrive on, and a VIP on the loopback is not.
set -eu

usage() {
    echo "usage: $(basename "$0") start|stop [--tun] VIP [VIP ...] | status" >&2
    exit 2
}

arp() {
    for iface in all lo; do
        echo "$1" > "/proc/sys/net/ipv4/conf/$iface/arp_ignore"
        echo "$2" > "/proc/sys/net/ipv4/conf/$iface/arp_announce"
    done
}

prefix() {
    case "$1" in
        *:*) echo "$1/128" ;;
        *.*) echo "$1/32" ;;
        *) echo "not an IP address: $1" >&2; exit 2 ;;
    esac
}

# Where lb-decap's state for this network namespace lives.
RUN_DIR=${LB_RUN_DIR:-/run/lb}
netns=net$(ls -Li /proc/self/ns/net | awk '{ print $1 }')
pid_file=$RUN_DIR/decap-$netns.pid
log_file=$RUN_DIR/decap-$netns.log
rp_saved=$RUN_DIR/decap-$netns.rp_filter

lb_decap() {
    if command -v lb-decap >/dev/null 2>&1; then
        command -v lb-decap
    elif [ -x "$(dirname "$0")/lb-decap" ]; then
        echo "$(dirname "$0")/lb-decap"
    else
        echo "lb-decap is neither on PATH nor beside $0 (cargo xtask install puts it in /usr/local/sbin)" >&2
        exit 1
    fi
}

# Whether process $1 exists and has not exited (a zombie has).
alive() {
    [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) \(.\).*/\1/' "/proc/$1/stat")" != Z ]
}

# The pid of the lb-decap this script started in this namespace, if it still runs.
running_decap() {
    [ -f "$pid_file" ] || return 1
    pid=$(cat "$pid_file")
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = lb-decap ] && alive "$pid" && echo "$pid"
}

relax_rp_filter() {
    # Saved once: a second start must not take our own 2s for the originals.
    [ -f "$rp_saved" ] && return 0
    : > "$rp_saved"
    for setting in /proc/sys/net/ipv4/conf/*/rp_filter; do
        if [ "$(cat "$setting")" = 1 ]; then
            echo "$setting 1" >> "$rp_saved"
            echo 2 > "$setting"
        fi
    done
}

restore_rp_filter() {
    [ -f "$rp_saved" ] || return 0
    while read -r setting value; do
        [ -f "$setting" ] && echo "$value" > "$setting"
    done < "$rp_saved"
    rm -f "$rp_saved"
}

start_decap() {
    decap=$(lb_decap)
    stop_decap # a running one is replaced: the VIPs may have changed
    relax_rp_filter
    rm -f "$pid_file"
    "$decap" --pid-file "$pid_file" "$@" < /dev/null >> "$log_file" 2>&1 &
    child=$!
    # lb-decap writes its pid file once it is attached.
    tries=0
    until [ -s "$pid_file" ]; do
        if ! alive "$child"; then
            echo "lb-decap did not start:" >&2
            tail -n 5 "$log_file" >&2
            exit 1
        fi
        tries=$((tries + 1))
        if [ "$tries" -gt 100 ]; then
            kill "$child"
            echo "lb-decap did not attach within 10 s; see $log_file" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "lb-decap running (pid $(cat "$pid_file")), log $log_file"
}

stop_decap() {
    if pid=$(running_decap); then
        kill -TERM "$pid"
        tries=0
        while alive "$pid" && [ "$tries" -lt 100 ]; do
            tries=$((tries + 1))
            sleep 0.1
        done
        if alive "$pid"; then
            echo "lb-decap (pid $pid) ignored SIGTERM for 10 s; killing it" >&2
            kill -KILL "$pid"
        fi
    fi
    rm -f "$pid_file"
}

[ $# -ge 1 ] || usage
action=$1
shift
tun=
if [ "${1:-}" = --tun ]; then
    tun=yes
    shift
fi
case "$action" in
    start)
        [ $# -ge 1 ] || usage
        for vip in "$@"; do prefix "$vip" > /dev/null; done
        arp 1 2
        for vip in "$@"; do
            case "$vip" in
                *:*) ip addr replace "$(prefix "$vip")" dev lo nodad ;;
                *) ip addr replace "$(prefix "$vip")" dev lo ;;
            esac
        done
        ip link set lo up
        if [ -n "$tun" ]; then
            mkdir -p "$RUN_DIR"
            start_decap "$@"
        fi
        ;;
    stop)
        [ $# -ge 1 ] || usage
        stop_decap
        restore_rp_filter
        for vip in "$@"; do
            ip addr del "$(prefix "$vip")" dev lo 2>/dev/null || true
        done
        arp 0 0
        ;;
    status)
        ip addr show dev lo
        for iface in all lo; do
            echo "$iface: arp_ignore=$(cat /proc/sys/net/ipv4/conf/$iface/arp_ignore)" \
                "arp_announce=$(cat /proc/sys/net/ipv4/conf/$iface/arp_announce)"
        done
        if pid=$(running_decap); then
            echo "lb-decap: running (pid $pid), log $log_file"
            "$(lb_decap)" status
        fi
        ;;
    *) usage ;;
esac
