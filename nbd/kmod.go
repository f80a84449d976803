package nbd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/pmorjan/kmod"
)

// ErrNoKernelSupport means the running kernel cannot provide /dev/nbdN:
// the "nbd" generic netlink family is missing and the nbd module could not
// be loaded (the kernel was built without CONFIG_BLK_DEV_NBD, or without
// module support, or the module file is not installed).
var ErrNoKernelSupport = errors.New("this kernel has no NBD support: it needs CONFIG_BLK_DEV_NBD " +
	"(built in, or the nbd module installed under /lib/modules); " +
	`see README.md, section "Kernel support"`)

// ModuleOptions are the nbd module parameters used when this package loads
// the module. They have no effect when the module is already loaded or
// built in.
type ModuleOptions struct {
	NBDsMax int // nbds_max: devices created at load time (0: the module's default, 16)
	MaxPart int // max_part: partitions per device (0: the module's default)
}

func (o ModuleOptions) params() string {
	var p []string
	if o.NBDsMax > 0 {
		p = append(p, fmt.Sprintf("nbds_max=%d", o.NBDsMax))
	}
	if o.MaxPart > 0 {
		p = append(p, fmt.Sprintf("max_part=%d", o.MaxPart))
	}
	return strings.Join(p, " ")
}

// openKernel returns a handle on the "nbd" netlink family, loading the nbd
// module first when the family is missing. Any failure to get there is an
// error wrapping ErrNoKernelSupport that says what was tried.
func openKernel(ctx context.Context, mod ModuleOptions, log *slog.Logger) (*genl, error) {
	g, err := lookupFamily()
	if err == nil {
		return g, nil
	}
	if !errors.Is(err, errFamilyMissing) {
		return nil, err
	}
	log.Debug("nbd netlink family missing: loading the nbd module", "params", mod.params())
	if lerr := loadModule(mod); lerr != nil {
		return nil, fmt.Errorf("%w (%v; loading the nbd module failed: %v)", ErrNoKernelSupport, errFamilyMissing, lerr)
	}
	// The family is registered by the module's init; it is there when
	// init_module returns, but give a slow machine a moment anyway.
	deadline := time.Now().Add(5 * time.Second)
	for {
		g, err = lookupFamily()
		if err == nil {
			log.Info("loaded the nbd kernel module", "params", mod.params())
			return g, nil
		}
		if !errors.Is(err, errFamilyMissing) || time.Now().After(deadline) {
			return nil, fmt.Errorf("%w (the nbd module loaded but: %v)", ErrNoKernelSupport, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// loadModule loads nbd and its dependencies with pmorjan/kmod, which reads
// /lib/modules/$(uname -r)/modules.dep the way modprobe does.
func loadModule(mod ModuleOptions) error {
	k, err := kmod.New()
	if err != nil {
		return fmt.Errorf("no module index for this kernel: %w", err)
	}
	if err := k.Load("nbd", mod.params(), 0); err != nil {
		return err
	}
	return nil
}
