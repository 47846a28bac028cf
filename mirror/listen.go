package mirror

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
)

// CheckLoopback returns an error unless addr (host:port) names a loopback
// IP address. The mirror serves the bucket's images without authentication,
// so it must never be reachable from another machine.
func CheckLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: want 127.0.0.1:PORT: %w", addr, err)
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("address %q is not a loopback IP address: it would serve without authentication beyond this machine; use 127.0.0.1:PORT", addr)
	}
	return nil
}

// Listen listens on addr, which must be a loopback address (CheckLoopback).
func Listen(addr string) (net.Listener, error) {
	if err := CheckLoopback(addr); err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return l, nil
}

// unprivilegedPortStartFile holds the lowest port any user may bind
// (Linux's net.ipv4.ip_unprivileged_port_start, 1024 unless lowered).
const unprivilegedPortStartFile = "/proc/sys/net/ipv4/ip_unprivileged_port_start"

// UnprivilegedPortStart returns the lowest TCP port any local user may
// bind: net.ipv4.ip_unprivileged_port_start, or 1024 where it cannot be
// read (the traditional rule).
func UnprivilegedPortStart() int {
	b, err := os.ReadFile(unprivilegedPortStartFile)
	if err != nil {
		return 1024
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 {
		return 1024
	}
	return n
}

// ErrUnprivilegedPort is returned by CheckPrivileged for a port any local
// user may bind.
var ErrUnprivilegedPort = errors.New("unprivileged port")

// CheckPrivileged returns an error wrapping ErrUnprivilegedPort unless
// addr's port is below start (UnprivilegedPortStart): only root, or a
// process with CAP_NET_BIND_SERVICE, may bind such a port. Then no other
// local user can take the agent's address while it is down and answer
// containerd in its place (a mirror that serves any bytes for a tag), or
// keep the agent from starting.
func CheckPrivileged(addr string, start int) error {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 1 || port > 65535 {
		return fmt.Errorf("address %q: bad port", addr)
	}
	if port >= start {
		return fmt.Errorf("%s: port %d is not below net.ipv4.ip_unprivileged_port_start (%d): any local user can bind it while the agent is down: %w",
			addr, port, start, ErrUnprivilegedPort)
	}
	return nil
}
