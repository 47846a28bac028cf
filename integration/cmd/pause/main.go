// Command pause is the pod sandbox's process for integration/k8s.sh's
// cluster (registry.k8s.io/pause cannot be pulled offline): it sleeps until
// SIGTERM or SIGINT and reaps the zombies a sandbox's PID namespace leaves it.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sig {
		if s != syscall.SIGCHLD {
			return
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
