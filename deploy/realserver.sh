#!/bin/sh
# Sets up a real server for LVS direct routing (dr), as LVS operators do by hand:
# every VIP on the loopback, so the real server accepts packets for it and answers the
# client itself, and ARP tuned so it never answers or announces the VIPs (only the
# director may, or clients would bypass it).
#
#   realserver.sh start VIP [VIP ...]   add the VIPs, set arp_ignore=1 / arp_announce=2
#   realserver.sh stop VIP [VIP ...]    remove the VIPs, restore the ARP defaults
#   realserver.sh status                show the loopback addresses and ARP settings
#
# IPv6 needs no ARP tuning: Linux answers neighbour solicitations only for addresses
# on the interface they arrive on, and a VIP on the loopback is not.
set -eu

usage() {
    echo "usage: $(basename "$0") start|stop VIP [VIP ...] | status" >&2
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

[ $# -ge 1 ] || usage
action=$1
shift
case "$action" in
    start)
        [ $# -ge 1 ] || usage
        arp 1 2
        for vip in "$@"; do
            case "$vip" in
                *:*) ip addr replace "$(prefix "$vip")" dev lo nodad ;;
                *) ip addr replace "$(prefix "$vip")" dev lo ;;
            esac
        done
        ip link set lo up
        ;;
    stop)
        [ $# -ge 1 ] || usage
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
        ;;
    *) usage ;;
esac
