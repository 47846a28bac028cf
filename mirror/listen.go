package mirror

import (
	"fmt"
	"net"
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
