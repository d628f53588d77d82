// pause is the pod sandbox process of the tests' real node: it holds the pod's namespaces open,
// reaps orphans (it is PID 1 when a pod shares its process namespace) and exits on SIGTERM/SIGINT.
// The upstream pause image cannot be pulled here, so the tests build this one (see build.sh).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range sigs {
		if sig == syscall.SIGCHLD {
			for {
				var status syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		os.Exit(0)
	}
}
