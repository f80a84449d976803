package main

import (
	"context"
	"errors"
	"log/slog"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/sdnotify"
)

// notifySystemd tells the manager of a Type=notify unit (NOTIFY_SOCKET)
// that the service is ready, with status as its STATUS line, and, once
// ctx ends (SIGTERM: the restart handover), that it is stopping. Outside
// such a unit it does nothing; a failed send is logged, never fatal.
// The caller defers the function it returns: it waits, once ctx has
// ended, until STOPPING=1 is sent, so the process cannot exit first.
func notifySystemd(ctx context.Context, log *slog.Logger, status string) (sent func()) {
	err := sdnotify.Notify(sdnotify.Ready + "\nSTATUS=" + status)
	if errors.Is(err, sdnotify.ErrNoSocket) {
		return func() {}
	}
	if err != nil {
		log.Warn("could not tell systemd the service is ready", "err", err)
		return func() {}
	}
	log.Debug("told systemd: ready", "status", status)
	done := make(chan struct{})
	context.AfterFunc(ctx, func() {
		defer close(done)
		if err := sdnotify.Notify(sdnotify.Stopping); err != nil {
			log.Warn("could not tell systemd the service is stopping", "err", err)
		}
	})
	return func() {
		if ctx.Err() != nil {
			<-done
		}
	}
}
