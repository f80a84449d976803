package graph

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	units "github.com/docker/go-units"
)

// Options configure the driver. They come, in increasing precedence, from
// a config file and flags of `rbd-nbd-graph serve`, and from dockerd's
// `--storage-opt` (Init). Every key is listed in optionKeys; an unknown
// key is an error, never ignored.
type Options struct {
	// Where the images live (read by the store that cmd opens).
	Pool       string // rbd.pool
	DataPool   string // rbd.datapool: data objects in another pool (EC pools)
	Namespace  string // rbd.namespace: an RBD namespace inside Pool
	Client     string // rbd.client: cephx id, without "client."
	ConfigFile string // rbd.configfile: ceph.conf path
	Keyring    string // rbd.keyring
	// CachePolicy is librbd's cache (rbd.cachepolicy): none (default,
	// no cache) or writethrough acknowledge writes once the cluster has
	// them, so a driver restarted under mounted layers loses nothing;
	// writeback or writearound acknowledge from librbd's cache.
	CachePolicy string
	// OSDTimeout (rbd.osdtimeout) fails a Ceph request the OSDs do not
	// complete in time with ETIMEDOUT (EIO on the layer's device)
	// instead of waiting; 0 (default) waits for ever, as krbd.
	OSDTimeout time.Duration
	// ConnectTimeout (rbd.connecttimeout) bounds connecting to the
	// monitors at start and every monitor request (0: rbdio's 30s).
	ConnectTimeout time.Duration
	// AbortOnFull (rbd.abortonfull) fails writes to a full pool (quota
	// or cluster full) with ENOSPC at once, as krbd's abort_on_full;
	// false (default, as krbd) makes them wait until space is freed.
	AbortOnFull bool

	// ImagePrefix starts every image name this driver makes
	// (rbd.imageprefix). Empty means a prefix derived from this host's
	// machine ID and the driver's home, so hosts sharing a pool, and
	// dockerds sharing a host, never collide.
	ImagePrefix string

	BaseSize     int64    // rbd.basesize: size of the base image, bytes
	FS           string   // rbd.fs: ext4 or xfs
	MkfsArgs     []string // rbd.mkfsarg: extra mkfs arguments
	MountOptions []string // rbd.mountopt: extra mount options

	// MaxCloneDepth bounds the chain of clones a layer reads through
	// (rbd.maxclonedepth); a layer deeper than this is flattened.
	MaxCloneDepth int
	// Flatten says when (rbd.flatten): FlattenBackground or FlattenOnCreate.
	Flatten FlattenMode

	NBD NBDOptions
}

// NBDOptions tune the kernel devices (keys nbd.*). Zero values leave the
// choice to package nbd.
type NBDOptions struct {
	Connections     int           // nbd.connections: sockets per device
	QueueDepth      int           // nbd.queuedepth: requests in flight per socket
	IOTimeout       time.Duration // nbd.iotimeout: 0 waits forever
	DeadConnTimeout time.Duration // nbd.deadconntimeout: how long the kernel waits for a restarted server
}

// FlattenMode says when a layer past MaxCloneDepth is flattened.
type FlattenMode string

const (
	// FlattenBackground creates the clone at once and flattens it in
	// the background: Create stays fast; reads are slower meanwhile.
	FlattenBackground FlattenMode = "background"
	// FlattenOnCreate flattens before Create returns.
	FlattenOnCreate FlattenMode = "create"
)

const (
	minBaseSize    = 64 << 20
	minBaseSizeXFS = 300 << 20 // mkfs.xfs refuses smaller filesystems
)

// DefaultOptions are the defaults of every option.
func DefaultOptions() Options {
	return Options{
		Pool:          "rbd",
		Client:        "admin",
		CachePolicy:   "none",
		BaseSize:      10 << 30,
		FS:            "ext4",
		MaxCloneDepth: 8,
		Flatten:       FlattenBackground,
		NBD: NBDOptions{
			// Long enough for the plugin to be restarted (or crash and be
			// started again) without the kernel failing IO on mounted
			// layers; see README "Restarts".
			DeadConnTimeout: 2 * time.Minute,
		},
	}
}

// CachePolicies lists the values of rbd.cachepolicy, the default first.
func CachePolicies() []string {
	return []string{"none", "writethrough", "writeback", "writearound"}
}

type optionSetter func(o *Options, v string) error

var optionKeys = map[string]optionSetter{
	"rbd.pool":       stringOpt(func(o *Options) *string { return &o.Pool }),
	"rbd.datapool":   stringOpt(func(o *Options) *string { return &o.DataPool }),
	"rbd.namespace":  stringOpt(func(o *Options) *string { return &o.Namespace }),
	"rbd.configfile": stringOpt(func(o *Options) *string { return &o.ConfigFile }),
	"rbd.keyring":    stringOpt(func(o *Options) *string { return &o.Keyring }),
	"rbd.cachepolicy": func(o *Options, v string) error {
		if slices.Contains(CachePolicies(), v) {
			o.CachePolicy = v
			return nil
		}
		p := CachePolicies()
		return fmt.Errorf("use %s or %s", strings.Join(p[:len(p)-1], ", "), p[len(p)-1])
	},
	"rbd.osdtimeout":     durationOpt(func(o *Options) *time.Duration { return &o.OSDTimeout }),
	"rbd.connecttimeout": durationOpt(func(o *Options) *time.Duration { return &o.ConnectTimeout }),
	"rbd.abortonfull": func(o *Options, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("want true or false")
		}
		o.AbortOnFull = b
		return nil
	},
	"rbd.client": func(o *Options, v string) error {
		o.Client = strings.TrimPrefix(v, "client.")
		return nil
	},
	"rbd.imageprefix": func(o *Options, v string) error {
		if err := validName(v, true); err != nil {
			return err
		}
		o.ImagePrefix = v
		return nil
	},
	"rbd.basesize": func(o *Options, v string) error {
		n, err := units.RAMInBytes(v)
		if err != nil {
			return err
		}
		o.BaseSize = n
		return nil
	},
	"rbd.fs": func(o *Options, v string) error {
		if v != "ext4" && v != "xfs" {
			return fmt.Errorf("use ext4 or xfs")
		}
		o.FS = v
		return nil
	},
	"rbd.mkfsarg": func(o *Options, v string) error {
		o.MkfsArgs = append(o.MkfsArgs, strings.Fields(v)...)
		return nil
	},
	"rbd.mountopt": func(o *Options, v string) error {
		var opts []string
		for _, opt := range strings.Split(v, ",") {
			if opt = strings.TrimSpace(opt); opt != "" {
				opts = append(opts, opt)
			}
		}
		// VFS options become mount(2) flags at mount time; refuse
		// what no layer mount can take now rather than at first Get.
		if _, _, err := splitMountOptions(opts); err != nil {
			return err
		}
		o.MountOptions = append(o.MountOptions, opts...)
		return nil
	},
	"rbd.maxclonedepth": intOpt(1, 1000, func(o *Options) *int { return &o.MaxCloneDepth }),
	"rbd.flatten": func(o *Options, v string) error {
		switch m := FlattenMode(v); m {
		case FlattenBackground, FlattenOnCreate:
			o.Flatten = m
			return nil
		}
		return fmt.Errorf("use %s or %s", FlattenBackground, FlattenOnCreate)
	},
	"nbd.connections":     intOpt(1, 64, func(o *Options) *int { return &o.NBD.Connections }),
	"nbd.queuedepth":      intOpt(1, 4096, func(o *Options) *int { return &o.NBD.QueueDepth }),
	"nbd.iotimeout":       durationOpt(func(o *Options) *time.Duration { return &o.NBD.IOTimeout }),
	"nbd.deadconntimeout": durationOpt(func(o *Options) *time.Duration { return &o.NBD.DeadConnTimeout }),
}

func stringOpt(field func(*Options) *string) optionSetter {
	return func(o *Options, v string) error {
		*field(o) = v
		return nil
	}
}

func intOpt(min, max int, field func(*Options) *int) optionSetter {
	return func(o *Options, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < min || n > max {
			return fmt.Errorf("want an integer from %d to %d", min, max)
		}
		*field(o) = n
		return nil
	}
}

// durationOpt accepts a Go duration ("90s", "2m") or plain seconds.
func durationOpt(field func(*Options) *time.Duration) optionSetter {
	return func(o *Options, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			secs, err2 := strconv.Atoi(v)
			if err2 != nil {
				return fmt.Errorf("want a duration such as 30s or 2m")
			}
			d = time.Duration(secs) * time.Second
		}
		if d < 0 {
			return fmt.Errorf("must not be negative")
		}
		*field(o) = d
		return nil
	}
}

// OptionKeys lists every option key, sorted (for help texts).
func OptionKeys() []string {
	keys := make([]string, 0, len(optionKeys))
	for k := range optionKeys {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// ParseOptions applies "key=value" strings to base and validates the
// result. Keys are case-insensitive.
func ParseOptions(base Options, kvs []string) (Options, error) {
	o := base
	o.MkfsArgs = append([]string(nil), base.MkfsArgs...)
	o.MountOptions = append([]string(nil), base.MountOptions...)
	for _, kv := range kvs {
		if err := o.Set(kv); err != nil {
			return Options{}, err
		}
	}
	if err := o.Validate(); err != nil {
		return Options{}, err
	}
	return o, nil
}

// Set applies one "key=value".
func (o *Options) Set(kv string) error {
	key, val, ok := strings.Cut(kv, "=")
	key = strings.ToLower(strings.TrimSpace(key))
	if !ok {
		return fmt.Errorf("%w %q: want key=value", ErrInvalidOption, kv)
	}
	set, known := optionKeys[key]
	if !known {
		return fmt.Errorf("%w: unknown option %q; known options: %s", ErrInvalidOption, key, strings.Join(OptionKeys(), " "))
	}
	if err := set(o, strings.TrimSpace(val)); err != nil {
		return fmt.Errorf("%w %s=%q: %v", ErrInvalidOption, key, val, err)
	}
	return nil
}

// Validate checks the combination of values.
func (o Options) Validate() error {
	if o.Pool == "" {
		return fmt.Errorf("%w: rbd.pool is empty: name the RBD pool for the layers", ErrInvalidOption)
	}
	if o.Client == "" {
		return fmt.Errorf("%w: rbd.client is empty: name the cephx user (e.g. admin)", ErrInvalidOption)
	}
	min := int64(minBaseSize)
	if o.FS == "xfs" {
		min = minBaseSizeXFS
	}
	if o.BaseSize < min {
		return fmt.Errorf("%w: rbd.basesize=%s is below the minimum of %s for %s", ErrInvalidOption,
			units.BytesSize(float64(o.BaseSize)), units.BytesSize(float64(min)), o.FS)
	}
	if o.MaxCloneDepth < 1 {
		return fmt.Errorf("%w: rbd.maxclonedepth must be at least 1", ErrInvalidOption)
	}
	switch o.Flatten {
	case FlattenBackground, FlattenOnCreate:
	default:
		return fmt.Errorf("%w: rbd.flatten=%q: use %s or %s", ErrInvalidOption, o.Flatten, FlattenBackground, FlattenOnCreate)
	}
	return nil
}

// CreateOptions are the per-layer options of Create.
type CreateOptions struct {
	// Size, when larger than the parent layer's, grows the new layer's
	// image and filesystem to it (docker's --storage-opt size=).
	Size int64
}

// ParseStorageOpts reads docker's per-container storage options; only
// "size" is known.
func ParseStorageOpts(opts map[string]string) (CreateOptions, error) {
	var co CreateOptions
	for k, v := range opts {
		switch strings.ToLower(k) {
		case "size":
			n, err := units.RAMInBytes(v)
			if err != nil || n <= 0 {
				return co, fmt.Errorf("%w: storage-opt size=%q: want a size such as 20G", ErrInvalidOption, v)
			}
			co.Size = n
		default:
			return co, fmt.Errorf("%w: unknown storage-opt %q: this driver knows only size", ErrInvalidOption, k)
		}
	}
	return co, nil
}
