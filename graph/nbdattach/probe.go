package nbdattach

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// Probe attaches a tiny in-memory device and detaches it again, so a
// host without NBD is told so when a front end starts rather than at
// the first layer it attaches. It also loads the nbd module.
func Probe(ctx context.Context, log *slog.Logger) error {
	dev, err := nbd.Attach(ctx, nbd.NewMemory(1<<20), nbd.AttachOptions{Index: nbd.IndexAny, ReadOnly: true,
		BackendID: BackendPrefix + "probe", Logger: log})
	if err != nil {
		return fmt.Errorf("the graph driver needs kernel NBD devices: %w", err)
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	return dev.Detach(dctx)
}
