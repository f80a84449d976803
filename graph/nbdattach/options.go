package nbdattach

import (
	"fmt"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
)

// Options tune the kernel devices (keys nbd.connections, nbd.queuedepth,
// nbd.maxsectorskb, nbd.iotimeout, nbd.deadconntimeout). Zero values leave the choice to
// package nbd. *Options is a graph.OptionSet.
type Options struct {
	Connections     int           // nbd.connections: sockets per device
	QueueDepth      int           // nbd.queuedepth: requests in flight per socket
	MaxSectorsKB    int           // nbd.maxsectorskb: largest request the kernel sends, KiB
	IOTimeout       time.Duration // nbd.iotimeout: 0 waits forever
	DeadConnTimeout time.Duration // nbd.deadconntimeout: how long the kernel waits for a restarted server
}

// DefaultOptions are the defaults of every device option.
func DefaultOptions() Options {
	return Options{
		// Long enough for the plugin to be restarted (or crash and be
		// started again) without the kernel failing IO on mounted
		// layers; see README "Restarts".
		DeadConnTimeout: 2 * time.Minute,
	}
}

const (
	maxConnections = 64
	maxQueueDepth  = 4096
	maxSectorsKB   = 32 << 10 // the nbd driver's max_hw_sectors_kb
)

var keys = graph.OptionSetters[Options]{
	"nbd.connections": func(o *Options, v string) (err error) {
		o.Connections, err = graph.ParseIntOption(v, 1, maxConnections)
		return err
	},
	"nbd.queuedepth": func(o *Options, v string) (err error) {
		o.QueueDepth, err = graph.ParseIntOption(v, 1, maxQueueDepth)
		return err
	},
	"nbd.maxsectorskb": func(o *Options, v string) (err error) {
		o.MaxSectorsKB, err = graph.ParseIntOption(v, 4, maxSectorsKB)
		return err
	},
	"nbd.iotimeout": func(o *Options, v string) (err error) {
		o.IOTimeout, err = graph.ParseDurationOption(v)
		return err
	},
	"nbd.deadconntimeout": func(o *Options, v string) (err error) {
		o.DeadConnTimeout, err = graph.ParseDurationOption(v)
		return err
	},
}

// SetOption implements graph.OptionSet.
func (o *Options) SetOption(key, value string) (bool, error) { return keys.Set(o, key, value) }

// OptionKeys implements graph.OptionSet.
func (o *Options) OptionKeys() []string { return keys.Keys() }

// Validate implements graph.OptionSet: it checks values set without
// SetOption too (zero means package nbd's default).
func (o *Options) Validate() error {
	switch {
	case o.Connections < 0 || o.Connections > maxConnections:
		return fmt.Errorf("%w: nbd.connections=%d: want 1 to %d", graph.ErrInvalidOption, o.Connections, maxConnections)
	case o.QueueDepth < 0 || o.QueueDepth > maxQueueDepth:
		return fmt.Errorf("%w: nbd.queuedepth=%d: want 1 to %d", graph.ErrInvalidOption, o.QueueDepth, maxQueueDepth)
	case o.MaxSectorsKB != 0 && (o.MaxSectorsKB < 4 || o.MaxSectorsKB > maxSectorsKB):
		return fmt.Errorf("%w: nbd.maxsectorskb=%d: want 4 to %d", graph.ErrInvalidOption, o.MaxSectorsKB, maxSectorsKB)
	case o.IOTimeout < 0 || o.DeadConnTimeout < 0:
		return fmt.Errorf("%w: nbd.iotimeout and nbd.deadconntimeout must not be negative", graph.ErrInvalidOption)
	}
	return nil
}
