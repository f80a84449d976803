package graph

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	units "github.com/docker/go-units"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/sizes"
)

// Options are the layer options of the driver (keys rbd.imageprefix,
// rbd.basesize, rbd.fs, rbd.mkfsarg, rbd.mountopt, rbd.maxclonedepth,
// rbd.flatten, rbd.unmountdelay). The keys of where the images live and how devices are
// served belong to the store and the attacher (graph/rbdstore,
// graph/nbdattach), each an OptionSet of its own; a front end parses one
// list of key=value strings into all of them with ParseOptionSets, in
// increasing precedence: a config file, flags, then per-instance values
// (dockerd's --storage-opt). An unknown key is an error, never ignored.
type Options struct {
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
	// UnmountDelay keeps a layer mounted this long after the Put that
	// dropped its last reference (rbd.unmountdelay), so a Get soon after
	// costs nothing: dockerd mounts a container's layer when it creates
	// the container, again when it starts it and again when it commits
	// it. 0 unmounts at that Put.
	UnmountDelay time.Duration
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

// DefaultUnmountDelay is rbd.unmountdelay's default: longer than the
// gaps between dockerd's mounts of one layer in a build step, short
// enough that a stopped container's device soon goes.
const DefaultUnmountDelay = 10 * time.Second

const (
	minBaseSize    = 64 << 20
	minBaseSizeXFS = 300 << 20 // mkfs.xfs refuses smaller filesystems
)

// DefaultOptions are the defaults of every layer option.
func DefaultOptions() Options {
	return Options{
		BaseSize:      10 << 30,
		FS:            "ext4",
		MaxCloneDepth: 8,
		Flatten:       FlattenBackground,
		UnmountDelay:  DefaultUnmountDelay,
	}
}

// OptionSet is a group of option keys that one part of the driver owns
// and validates: Options here, the store's and the attacher's in their
// packages. Keys are lower case.
type OptionSet interface {
	// SetOption applies value to key; known is false for a key the set
	// does not own. err says what is wrong with the value, without the
	// key (ParseOptionSets adds it).
	SetOption(key, value string) (known bool, err error)
	// OptionKeys lists the keys the set owns.
	OptionKeys() []string
	// Validate checks the combination of values once all are set; its
	// errors wrap ErrInvalidOption.
	Validate() error
}

// ParseOptionSets applies "key=value" strings, in order, to the set that
// owns each key (keys are case-insensitive), then validates every set.
func ParseOptionSets(kvs []string, sets ...OptionSet) error {
	for _, kv := range kvs {
		key, val, ok := strings.Cut(kv, "=")
		key = strings.ToLower(strings.TrimSpace(key))
		if !ok {
			return fmt.Errorf("%w %q: want key=value", ErrInvalidOption, kv)
		}
		known := false
		for _, set := range sets {
			var err error
			if known, err = set.SetOption(key, strings.TrimSpace(val)); err != nil {
				return fmt.Errorf("%w %s=%q: %v", ErrInvalidOption, key, val, err)
			}
			if known {
				break
			}
		}
		if !known {
			return fmt.Errorf("%w: unknown option %q; known options: %s", ErrInvalidOption, key, strings.Join(OptionKeys(sets...), " "))
		}
	}
	for _, set := range sets {
		if err := set.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// OptionKeys lists the keys of every set, sorted (for help texts).
func OptionKeys(sets ...OptionSet) []string {
	var keys []string
	for _, set := range sets {
		keys = append(keys, set.OptionKeys()...)
	}
	sort.Strings(keys)
	return keys
}

// OptionSetters is a table of an OptionSet's keys; each setter gets the
// trimmed value.
type OptionSetters[T any] map[string]func(o *T, v string) error

// Set applies key=value to o; known is false for a key not in the table.
func (t OptionSetters[T]) Set(o *T, key, value string) (known bool, err error) {
	set, ok := t[key]
	if !ok {
		return false, nil
	}
	return true, set(o, value)
}

// Keys lists the table's keys.
func (t OptionSetters[T]) Keys() []string {
	keys := make([]string, 0, len(t))
	for k := range t {
		keys = append(keys, k)
	}
	return keys
}

var layerKeys = OptionSetters[Options]{
	"rbd.imageprefix": func(o *Options, v string) error {
		if err := validName(v, true); err != nil {
			return err
		}
		o.ImagePrefix = v
		return nil
	},
	"rbd.basesize": func(o *Options, v string) error {
		n, err := sizes.Parse(v)
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
	"rbd.maxclonedepth": func(o *Options, v string) (err error) {
		o.MaxCloneDepth, err = ParseIntOption(v, 1, 1000)
		return err
	},
	"rbd.flatten": func(o *Options, v string) error {
		switch m := FlattenMode(v); m {
		case FlattenBackground, FlattenOnCreate:
			o.Flatten = m
			return nil
		}
		return fmt.Errorf("use %s or %s", FlattenBackground, FlattenOnCreate)
	},
	"rbd.unmountdelay": func(o *Options, v string) (err error) {
		o.UnmountDelay, err = ParseDurationOption(v)
		return err
	},
}

// ParseIntOption reads an integer from min to max.
func ParseIntOption(v string, min, max int) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < min || n > max {
		return 0, fmt.Errorf("want an integer from %d to %d", min, max)
	}
	return n, nil
}

// ParseDurationOption reads a Go duration ("90s", "2m") or plain
// seconds; negative durations are refused.
func ParseDurationOption(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		secs, err2 := strconv.Atoi(v)
		if err2 != nil {
			return 0, fmt.Errorf("want a duration such as 30s or 2m, or plain seconds")
		}
		d = time.Duration(secs) * time.Second
	}
	if d < 0 {
		return 0, fmt.Errorf("must not be negative")
	}
	return d, nil
}

// ParseBoolOption reads true or false (and strconv.ParseBool's spellings).
func ParseBoolOption(v string) (bool, error) {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("want true or false")
	}
	return b, nil
}

// SetOption implements OptionSet for the layer keys.
func (o *Options) SetOption(key, value string) (bool, error) { return layerKeys.Set(o, key, value) }

// OptionKeys implements OptionSet.
func (o *Options) OptionKeys() []string { return layerKeys.Keys() }

// ParseOptions applies "key=value" strings of layer keys to base and
// validates the result; base is not changed.
func ParseOptions(base Options, kvs []string) (Options, error) {
	o := base.clone()
	if err := ParseOptionSets(kvs, &o); err != nil {
		return Options{}, err
	}
	return o, nil
}

// clone copies o with lists of its own, so appending to them (rbd.mkfsarg
// and rbd.mountopt add to the list) leaves o as it was.
func (o Options) clone() Options {
	o.MkfsArgs = append([]string(nil), o.MkfsArgs...)
	o.MountOptions = append([]string(nil), o.MountOptions...)
	return o
}

// Validate checks the combination of values.
func (o Options) Validate() error {
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
			n, err := sizes.Parse(v)
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
