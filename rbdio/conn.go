package rbdio

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/ceph/go-ceph/rados"
	"github.com/ceph/go-ceph/rbd"
)

// Config says how to reach the cluster and which pool to work in. The
// zero value connects as client.admin of cluster "ceph" to pool "rbd"
// with librados' own ceph.conf search (CEPH_CONF, then
// /etc/ceph/ceph.conf).
type Config struct {
	// ConfFile is the ceph.conf to read; "" means librados' default
	// search, which honours $CEPH_CONF.
	ConfFile string
	// Keyring is the cephx keyring file; "" means the one ceph.conf
	// names (or librados' default locations).
	Keyring string
	// ID is the cephx client id, without "client." (default "admin").
	ID string
	// Cluster is the cluster name (default "ceph"); it selects the
	// default conf and keyring file names, as in `ceph --cluster`.
	Cluster string
	// Pool holds the images (default "rbd").
	Pool string
	// Namespace is the RADOS namespace in Pool ("" is the default one).
	Namespace string
	// ConnectTimeout bounds connecting and every monitor request
	// (default 30s). Data IO is not bounded by it.
	ConnectTimeout time.Duration
	// OSDTimeout bounds every OSD request, data IO included
	// (rados_osd_op_timeout): a request the cluster does not complete in
	// time fails with ETIMEDOUT instead of waiting, for example while the
	// OSDs are paused or down. 0 (the default, as librados' and krbd's
	// osd_request_timeout) waits for ever, which never fails a write
	// that would have succeeded later.
	OSDTimeout time.Duration
	// AbortOnFull makes writes to a full pool (its quota reached, or the
	// cluster full) fail with ENOSPC or EDQUOT at once, as krbd's
	// abort_on_full, instead of waiting until space is freed
	// (rados_set_pool_full_try on the pool's context: librados then
	// sends the writes and the OSD refuses them). Default false, as
	// krbd.
	AbortOnFull bool
	// CachePolicy is librbd's cache and when a write is acknowledged
	// (default CacheNone). See doc.go, "librbd settings".
	CachePolicy CachePolicy
	// Submit is who makes librbd's asynchronous call for a request
	// (default SubmitAuto). See submit.go.
	Submit SubmitMode
}

// CachePolicy says whether librbd caches and when it acknowledges a
// write.
type CachePolicy string

const (
	// CacheNone turns librbd's cache off (rbd_cache=false, as krbd has
	// none): a write is acknowledged once the OSDs have it, so it
	// outlives the process that acknowledged it. A server that is killed
	// and replaced under a live device (reattach, the driver's restart)
	// must not lose writes the kernel already counts as done: the
	// filesystem above sees no crash. The default; the kernel's page
	// cache is the read cache.
	CacheNone CachePolicy = "none"
	// CacheWritethrough keeps librbd's object cache for reads and
	// acknowledges writes once the OSDs have them. As durable as
	// CacheNone, but its object cacher costs CPU on every read (fio's
	// rbd engine, 4k randread qd16: 15.2k IOPS against 23.4k without a
	// cache, 39 against 21 us of CPU per read).
	CacheWritethrough CachePolicy = "writethrough"
	// CacheWriteback and CacheWritearound acknowledge a write once
	// librbd has queued it (up to rbd_cache_max_dirty), from the first
	// request on; only FLUSH and FUA writes are durable. Faster writes,
	// but writes acknowledged by a server that dies are lost even though
	// the device lives on. For hosts that never restart the server under
	// mounted devices, and for measuring librbd's cache.
	CacheWriteback   CachePolicy = "writeback"
	CacheWritearound CachePolicy = "writearound"
)

// CachePolicies lists every policy, the default (CacheNone) first.
func CachePolicies() []CachePolicy {
	return []CachePolicy{CacheNone, CacheWritethrough, CacheWriteback, CacheWritearound}
}

// ParseCachePolicy checks a policy name.
func ParseCachePolicy(s string) (CachePolicy, error) {
	if p := CachePolicy(s); slices.Contains(CachePolicies(), p) {
		return p, nil
	}
	return "", fmt.Errorf("%w: cache policy %q: use %s, %s, %s or %s", ErrInvalid, s, CacheNone, CacheWritethrough, CacheWriteback, CacheWritearound)
}

// Defaults of Config's empty fields.
const (
	DefaultID             = "admin"
	DefaultCluster        = "ceph"
	DefaultPool           = "rbd"
	DefaultConnectTimeout = 30 * time.Second
)

func (c Config) withDefaults() Config {
	if c.ID == "" {
		c.ID = DefaultID
	}
	if c.Cluster == "" {
		c.Cluster = DefaultCluster
	}
	if c.Pool == "" {
		c.Pool = DefaultPool
	}
	if c.CachePolicy == "" {
		c.CachePolicy = CacheNone
	}
	if c.Submit == "" {
		c.Submit = SubmitAuto
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	return c
}

// Conn is a connection to the cluster with the pool (and namespace)
// open. Its methods are safe for concurrent use. Close it after the
// images opened from it.
type Conn struct {
	cfg Config
	// inline is cfg.Submit resolved (submit.go): images' callers submit.
	inline bool
	rados  *rados.Conn
	ioctx  *rados.IOContext

	mu     sync.Mutex
	images map[*Image]struct{} // open images, closed by Close
	closed bool

	// imageCtx is held across every librbd call that makes or destroys
	// an image context on the connection's shared ioctx (rbd_open*,
	// rbd_close, and rbd_create4, rbd_clone3, rbd_remove, rbd_rename,
	// which open images inside): one at a time. The driver's plugin
	// aborted in the VM with glibc's "corrupted double-linked list"
	// inside rbd_open_read_only while another goroutine was inside
	// rbd_open on the same ioctx (docs/2026-12-06-background-removal.md).
	// These calls cost a round trip or more each and are never on the
	// IO path, so serialising them costs little.
	imageCtx sync.Mutex

	// flattens are the flattens running on image contexts of their own,
	// by image (guarded by mu): an open for writing interrupts them
	// (flatten.go).
	flattens map[string]*soloFlatten
}

// lockImageCtx takes the image-context lock (Conn.imageCtx) and
// returns its release.
func (c *Conn) lockImageCtx() func() {
	c.imageCtx.Lock()
	return c.imageCtx.Unlock
}

// Connect reads the configuration, authenticates, and opens the pool
// (and namespace). It fails with ErrUnreachable when no monitor answers
// within ConnectTimeout, ErrPermission when cephx refuses the key, and
// ErrNotFound for a missing conf file, keyring, pool or namespace. If
// ctx ends first Connect returns ctx.Err() and abandons the attempt
// (librados cannot be interrupted; the connection is shut down when it
// finishes).
//
// Wraps rados_create2, rados_conf_read_file, rados_conf_set,
// rados_connect, rados_ioctx_create, rados_ioctx_set_namespace and
// rbd_namespace_exists.
func Connect(ctx context.Context, cfg Config) (*Conn, error) {
	cfg = cfg.withDefaults()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if _, err := ParseCachePolicy(string(cfg.CachePolicy)); err != nil {
		return nil, err
	}
	if _, err := ParseSubmitMode(string(cfg.Submit)); err != nil {
		return nil, err
	}
	if cfg.OSDTimeout < 0 {
		return nil, &Error{Op: "connect", Kind: ErrInvalid, Hint: fmt.Sprintf("OSD timeout %v is negative: use 0 to wait for ever", cfg.OSDTimeout)}
	}
	for _, f := range []struct{ what, path, how string }{
		{"ceph.conf", cfg.ConfFile, "--ceph-conf, Config.ConfFile"},
		{"keyring", cfg.Keyring, "--keyring, Config.Keyring"},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return nil, &Error{Op: "connect", Object: f.what + " " + f.path, Kind: ErrNotFound,
				Hint: fmt.Sprintf("pass the right path (%s): %v", f.how, err)}
		}
	}

	type result struct {
		c   *Conn
		err error
	}
	done := make(chan result, 1)
	abandoned := make(chan struct{})
	go func() {
		c, err := connect(cfg)
		select {
		case done <- result{c, err}:
		case <-abandoned:
			if c != nil {
				c.Close()
			}
		}
	}()
	select {
	case r := <-done:
		return r.c, r.err
	case <-ctx.Done():
		close(abandoned)
		// The goroutine may have finished just now: don't leak its conn.
		select {
		case r := <-done:
			if r.c != nil {
				r.c.Close()
			}
		default:
		}
		return nil, ctx.Err()
	}
}

// connect does the blocking part of Connect.
func connect(cfg Config) (*Conn, error) {
	user := "client." + cfg.ID
	object := fmt.Sprintf("cluster %q as %s", cfg.Cluster, user)
	rc, err := rados.NewConnWithClusterAndUser(cfg.Cluster, user)
	if err != nil {
		return nil, wrap(err, "connect", object, "rados_create2")
	}
	ok := false
	defer func() {
		if !ok {
			rc.Shutdown()
		}
	}()
	if cfg.ConfFile != "" {
		err = rc.ReadConfigFile(cfg.ConfFile)
	} else {
		err = rc.ReadDefaultConfigFile()
	}
	if err != nil {
		conf := cfg.ConfFile
		if conf == "" {
			conf = "default search ($CEPH_CONF, /etc/ceph/" + cfg.Cluster + ".conf)"
		}
		return nil, wrap(err, "read ceph.conf", conf, "rados_conf_read_file").
			with(ErrNotFound, "pass --ceph-conf (Config.ConfFile) or set CEPH_CONF")
	}
	secs := strconv.FormatFloat(cfg.ConnectTimeout.Seconds(), 'f', -1, 64)
	opts := [][2]string{
		{"client_mount_timeout", secs},
		{"rados_mon_op_timeout", secs},
		// When writes are acknowledged (Config.CachePolicy, doc.go).
		// With a caching policy NBD's flushes are the durability
		// points from the first request on, not only after a first
		// flush.
		{"rbd_cache", strconv.FormatBool(cfg.CachePolicy != CacheNone)},
		{"rbd_cache_writethrough_until_flush", "false"},
		// The data path's threading (aio.go, measured in doc.go): each
		// image's submitter thread runs librbd's request dispatch itself
		// instead of handing every request on to librados' io_context
		// threads, one context switch less per request.
		{"rbd_non_blocking_aio", "false"},
	}
	if cfg.CachePolicy != CacheNone {
		opts = append(opts, [2]string{"rbd_cache_policy", string(cfg.CachePolicy)})
	}
	if cfg.OSDTimeout > 0 {
		// librados rounds to whole seconds; never round a short
		// timeout down to 0, which would mean "wait for ever".
		osd := max(int64((cfg.OSDTimeout+time.Second-1)/time.Second), 1)
		opts = append(opts, [2]string{"rados_osd_op_timeout", strconv.FormatInt(osd, 10)})
	}
	if cfg.Keyring != "" {
		opts = append(opts, [2]string{"keyring", cfg.Keyring})
	}
	for _, o := range opts {
		if err := rc.SetConfigOption(o[0], o[1]); err != nil {
			return nil, wrap(err, "set option "+o[0], object, "rados_conf_set")
		}
	}
	if err := rc.Connect(); err != nil {
		e := wrap(err, "connect", object, "rados_connect")
		mons, _ := rc.GetConfigOption("mon_host")
		switch e.Errno {
		case syscall.ETIMEDOUT:
			conf := confInUse(cfg)
			return nil, e.with(ErrUnreachable, fmt.Sprintf(
				"no monitor answered at %q (mon host in ceph.conf %s) within %v: is the cluster running and reachable from here? Check with 'ceph -s --conf %s', and fix mon host there (or pass another --ceph-conf) if the monitors moved",
				mons, conf, cfg.ConnectTimeout, conf))
		case syscall.EACCES, syscall.EPERM:
			keyring, _ := rc.GetConfigOption("keyring")
			return nil, e.with(ErrPermission, fmt.Sprintf(
				"cephx refused %s with keyring %q: check --id and --keyring (Config.ID, Config.Keyring)", user, keyring))
		case syscall.ENOENT:
			keyring, _ := rc.GetConfigOption("keyring")
			return nil, e.with(ErrNotFound, fmt.Sprintf(
				"no key for %s in keyring %q: pass --keyring (Config.Keyring) or name it in ceph.conf", user, keyring))
		}
		return nil, e.with(nil, fmt.Sprintf("monitors %q", mons))
	}
	ioctx, err := rc.OpenIOContext(cfg.Pool)
	if err != nil {
		e := wrap(err, "open pool", cfg.Pool, "rados_ioctx_create")
		if e.Errno == syscall.ENOENT {
			e.Hint = fmt.Sprintf("create it with 'ceph osd pool create %s && rbd pool init %s', or pass another pool", cfg.Pool, cfg.Pool)
		}
		return nil, e
	}
	if cfg.AbortOnFull {
		// Images opened from this context inherit it (librbd copies the
		// context for its data path).
		if err := ioctx.SetPoolFullTry(); err != nil {
			ioctx.Destroy()
			return nil, wrap(err, "set pool full try", cfg.Pool, "rados_set_pool_full_try")
		}
	}
	if cfg.Namespace != "" {
		ioctx.SetNamespace(cfg.Namespace)
		exists, err := rbd.NamespaceExists(ioctx, cfg.Namespace)
		if err != nil {
			ioctx.Destroy()
			return nil, wrap(err, "check namespace", cfg.Pool+"/"+cfg.Namespace, "rbd_namespace_exists")
		}
		if !exists {
			ioctx.Destroy()
			return nil, &Error{Op: "open namespace", Object: cfg.Pool + "/" + cfg.Namespace, Kind: ErrNotFound,
				Hint: fmt.Sprintf("create it with 'rbd namespace create %s/%s'", cfg.Pool, cfg.Namespace)}
		}
	}
	ok = true
	return &Conn{cfg: cfg, inline: cfg.Submit.inline(), rados: rc, ioctx: ioctx, images: make(map[*Image]struct{})}, nil
}

// confInUse names the ceph.conf librados read, for messages.
func confInUse(cfg Config) string {
	if cfg.ConfFile != "" {
		return cfg.ConfFile
	}
	if env := os.Getenv("CEPH_CONF"); env != "" {
		return env
	}
	return "/etc/ceph/" + cfg.Cluster + ".conf"
}

// Config returns the configuration the connection was made with,
// defaults filled in.
func (c *Conn) Config() Config { return c.cfg }

// FSID is the cluster's fsid (rados_cluster_fsid).
func (c *Conn) FSID() (string, error) {
	id, err := c.rados.GetFSID()
	if err != nil {
		return "", wrap(err, "get fsid", "cluster", "rados_cluster_fsid")
	}
	return id, nil
}

// Close closes the images still open from c (their IO then fails with
// ErrClosed), then the pool and the cluster connection. Closing twice
// is harmless (rados_ioctx_destroy, rados_shutdown).
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	open := make([]*Image, 0, len(c.images))
	for im := range c.images {
		open = append(open, im)
	}
	c.mu.Unlock()
	var errs []error
	for _, im := range open {
		if err := im.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	c.ioctx.Destroy()
	c.rados.Shutdown()
	return errors.Join(errs...)
}

// spec names an image (and snapshot) in this connection's pool and
// namespace, as rbd(8) writes it: pool[/namespace]/image[@snap].
func (c *Conn) spec(image, snap string) string {
	s := c.cfg.Pool + "/"
	if c.cfg.Namespace != "" {
		s += c.cfg.Namespace + "/"
	}
	s += image
	if snap != "" {
		s += "@" + snap
	}
	return s
}

// check refuses calls after Close and with a done context.
func (c *Conn) check(ctx context.Context, op, object string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return &Error{Op: op, Object: object, Kind: ErrClosed, Errno: syscall.ESHUTDOWN}
	}
	return nil
}

// validName refuses names librbd would refuse or misparse.
func validName(what, name string) error {
	if name == "" {
		return &Error{Op: "check " + what + " name", Kind: ErrInvalid, Hint: "the " + what + " name is empty"}
	}
	for _, r := range name {
		if r == '/' || r == '@' || r < ' ' {
			return &Error{Op: "check " + what + " name", Object: strconv.Quote(name), Kind: ErrInvalid,
				Hint: "names cannot contain '/', '@' or control characters"}
		}
	}
	return nil
}
