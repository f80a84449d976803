package rbdstore

import (
	"fmt"
	"strings"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

// Options are the store's: where the images live and how to reach the
// cluster (keys rbd.pool, rbd.datapool, rbd.namespace, rbd.client,
// rbd.configfile, rbd.keyring, rbd.cachepolicy, rbd.osdtimeout,
// rbd.connecttimeout, rbd.abortonfull, rbd.reopenwait, rbd.submit). *Options is a graph.OptionSet.
type Options struct {
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
	CachePolicy rbdio.CachePolicy
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
	// ReopenWait (rbd.reopenwait) bounds how long a layer's request that
	// failed because the cluster blocklisted the store's client waits
	// for the image to be reopened on a new connection, to be resubmitted
	// there (Reopener); 0 fails it at once (EIO), as krbd does.
	ReopenWait time.Duration
	// Submit (rbd.submit) is who calls librbd for a layer's request:
	// auto (default), inline or thread (rbdio.SubmitMode).
	Submit rbdio.SubmitMode

	// LockWait is how long OpenImage retries an image whose exclusive
	// lock another client holds: after a crash the dead process keeps it
	// until its watch times out (about 30 s). LockRetry is the pause
	// between attempts. No keys: tests shorten them.
	LockWait  time.Duration
	LockRetry time.Duration
}

// DefaultOptions are the defaults of every store option.
func DefaultOptions() Options {
	return Options{
		Pool:        rbdio.DefaultPool,
		Client:      rbdio.DefaultID,
		CachePolicy: rbdio.CacheNone,
		Submit:      rbdio.SubmitAuto,
		ReopenWait:  DefaultReopenWait,
		LockWait:    90 * time.Second,
		LockRetry:   2 * time.Second,
	}
}

var keys = graph.OptionSetters[Options]{
	"rbd.pool":       func(o *Options, v string) error { o.Pool = v; return nil },
	"rbd.datapool":   func(o *Options, v string) error { o.DataPool = v; return nil },
	"rbd.namespace":  func(o *Options, v string) error { o.Namespace = v; return nil },
	"rbd.configfile": func(o *Options, v string) error { o.ConfigFile = v; return nil },
	"rbd.keyring":    func(o *Options, v string) error { o.Keyring = v; return nil },
	"rbd.client": func(o *Options, v string) error {
		o.Client = strings.TrimPrefix(v, "client.")
		return nil
	},
	"rbd.cachepolicy": func(o *Options, v string) (err error) {
		o.CachePolicy, err = rbdio.ParseCachePolicy(v)
		return err
	},
	"rbd.osdtimeout": func(o *Options, v string) (err error) {
		o.OSDTimeout, err = graph.ParseDurationOption(v)
		return err
	},
	"rbd.connecttimeout": func(o *Options, v string) (err error) {
		o.ConnectTimeout, err = graph.ParseDurationOption(v)
		return err
	},
	"rbd.abortonfull": func(o *Options, v string) (err error) {
		o.AbortOnFull, err = graph.ParseBoolOption(v)
		return err
	},
	"rbd.submit": func(o *Options, v string) (err error) {
		o.Submit, err = rbdio.ParseSubmitMode(v)
		return err
	},
	"rbd.reopenwait": func(o *Options, v string) (err error) {
		o.ReopenWait, err = graph.ParseDurationOption(v)
		return err
	},
}

// SetOption implements graph.OptionSet.
func (o *Options) SetOption(key, value string) (bool, error) { return keys.Set(o, key, value) }

// OptionKeys implements graph.OptionSet.
func (o *Options) OptionKeys() []string { return keys.Keys() }

// Validate implements graph.OptionSet.
func (o *Options) Validate() error {
	if o.Pool == "" {
		return fmt.Errorf("%w: rbd.pool is empty: name the RBD pool for the layers", graph.ErrInvalidOption)
	}
	if o.Client == "" {
		return fmt.Errorf("%w: rbd.client is empty: name the cephx user (e.g. admin)", graph.ErrInvalidOption)
	}
	if _, err := rbdio.ParseCachePolicy(string(o.CachePolicy)); err != nil {
		return fmt.Errorf("%w: rbd.cachepolicy: %w", graph.ErrInvalidOption, err)
	}
	if _, err := rbdio.ParseSubmitMode(string(o.Submit)); err != nil {
		return fmt.Errorf("%w: rbd.submit: %w", graph.ErrInvalidOption, err)
	}
	if o.ReopenWait < 0 {
		return fmt.Errorf("%w: rbd.reopenwait %v: want 0 or more", graph.ErrInvalidOption, o.ReopenWait)
	}
	if o.LockWait < 0 || o.LockRetry <= 0 {
		return fmt.Errorf("%w: lock wait %v and retry %v: want a wait of 0 or more and a positive retry", graph.ErrInvalidOption, o.LockWait, o.LockRetry)
	}
	return nil
}

// Config is the rbdio connection configuration for o.
func (o Options) Config() rbdio.Config {
	return rbdio.Config{
		ConfFile:  o.ConfigFile,
		Keyring:   o.Keyring,
		ID:        o.Client,
		Pool:      o.Pool,
		Namespace: o.Namespace,
		// Layers are remounted under a restarted driver: writes it
		// acknowledged must be in the cluster, not in a dead cache.
		CachePolicy: o.CachePolicy,
		// A stuck cluster fails IO after this instead of hanging the
		// layers' devices, Remove and Cleanup (0 waits, as krbd).
		OSDTimeout:     o.OSDTimeout,
		ConnectTimeout: o.ConnectTimeout,
		AbortOnFull:    o.AbortOnFull,
		Submit:         o.Submit,
	}
}

// cacheStatus says what rbd.cachepolicy means for the layers' data, the
// question an operator has before restarting the plugin.
func cacheStatus(policy rbdio.CachePolicy) string {
	switch policy {
	case rbdio.CacheWriteback, rbdio.CacheWritearound:
		return string(policy) + " (writes acknowledged from the plugin's cache: lost if it dies under mounted layers)"
	case rbdio.CacheWritethrough:
		return string(policy) + " (writes acknowledged once on the OSDs)"
	}
	return "off (writes acknowledged once on the OSDs)"
}

// submitStatus says who calls librbd for a layer's request
// (rbd.submit), and why when auto chose.
func submitStatus(m rbdio.SubmitMode) string {
	r := m.Resolved()
	switch {
	case r == m:
		return string(r)
	case r == rbdio.SubmitInline:
		return string(r) + " (auto: the Go runtime's sysmon is kept awake)"
	}
	return string(r) + " (auto: the Go runtime's sysmon sleeps; GODEBUG=schedtrace is not set)"
}
