// Command pause is the sandbox ("pause") container of the local cluster's real node: it holds a
// pod's namespaces and blocks until SIGTERM or SIGINT, as upstream's build/pause/linux/pause.c
// does. containerd's CRI runs it as every pod's sandbox; one that exits makes each pod
// "SandboxChanged" and restart forever. Static (CGO_ENABLED=0), so its image needs no rootfs.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
