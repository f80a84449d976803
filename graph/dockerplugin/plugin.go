package dockerplugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"time"

	dgraph "github.com/docker/docker/daemon/graphdriver"
	"github.com/docker/docker/pkg/archive"
	"github.com/docker/docker/pkg/containerfs"
	"github.com/docker/docker/pkg/idtools"
	"github.com/docker/docker/pkg/ioutils"
	gd "github.com/docker/go-plugins-helpers/graphdriver"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
)

// Backend is what a driver instance runs on: the image store and the
// attacher for the options dockerd passed, and how to release them.
type Backend struct {
	Store graph.ImageStore
	// Deletions is graph.Config.Deletions: the same pool on a
	// connection of its own for deleting removed layers. May be nil.
	Deletions graph.ImageStore
	Attacher  graph.Attacher
	// Close releases the store and attacher (for example the cluster
	// connection) after the driver is closed. May be nil.
	Close func() error
}

// Opener opens the backend of one Init (Config.Parse returns it).
type Opener func(ctx context.Context) (Backend, error)

// Config configures a Plugin.
type Config struct {
	// Name is the driver name dockerd knows the plugin by.
	Name string
	// Options are key=value options from the plugin's flags and config
	// file; dockerd's --storage-opt values (Init) follow them, so they
	// override them.
	Options []string
	// Parse validates the options of an Init (the graph's layer keys and
	// the backend's) and returns the layer options and how to open the
	// backend the others name. Init calls it before it touches the
	// running instance, so bad options leave that one alone.
	Parse func(options []string) (graph.Options, Opener, error)
	// StateFile, when set, records the last Init (home, options, ID
	// maps) so that a plugin restarted while dockerd keeps running
	// (dockerd calls Init only when it starts) resumes serving at once,
	// adopting the devices the previous process left attached. dockerd's
	// Cleanup removes it. Put it on a tmpfs such as /run: after a reboot
	// there is nothing to resume.
	StateFile string
	// DetachOnExit makes Shutdown (SIGTERM) unmount and detach every
	// layer as Cleanup does. By default Shutdown is a handover: mounts
	// and devices stay for the next plugin process, so containers keep
	// running through a restart or an upgrade.
	DetachOnExit bool
	// ShutdownTimeout bounds how long Shutdown waits for requests in
	// flight on the devices (0: 30 s). Past it the plugin exits anyway
	// and the kernel re-sends what was not answered to the next process.
	ShutdownTimeout time.Duration
	// Filesystem and HostID are passed to graph.New (tests); zero
	// values mean the defaults.
	Filesystem graph.Filesystem
	HostID     string
	Logger     *slog.Logger
	// Observer, when set, is every driver instance's graph.Observer
	// (metrics).
	Observer graph.Observer
}

// Plugin is the driver as dockerd sees it: it implements
// go-plugins-helpers' graphdriver.Driver on top of a graph.Driver, with
// Diff, Changes, ApplyDiff and DiffSize from docker's NaiveDiffDriver.
//
// dockerd calls Init when it starts and Cleanup when it stops, while the
// plugin keeps running, so one Plugin serves a sequence of driver
// instances. An Init that repeats the current one (dockerd restarted
// without Cleanup) keeps the instance and its mounts.
type Plugin struct {
	cfg Config
	log *slog.Logger
	// ctx bounds every operation; Shutdown cancels it.
	ctx    context.Context
	cancel context.CancelFunc

	// lock guards cur. A channel, not a sync.Mutex, so that Shutdown can
	// give up waiting for it: an Init may hold it for as long as the
	// cluster does not answer (a full or paused pool blocks librbd calls
	// that no context interrupts), and SIGTERM must still end the process.
	lock chan struct{}
	cur  *instance
}

type instance struct {
	key     string // home, options and maps of the Init that made it
	drv     *graph.Driver
	proto   *protoDriver
	diff    dgraph.Driver // NaiveDiffDriver over proto
	idMap   idtools.IdentityMapping
	backend Backend
}

var _ gd.Driver = (*Plugin)(nil)

// ErrShutdownBlocked: Shutdown gave up waiting for an Init or Cleanup
// that the cluster does not let finish.
var ErrShutdownBlocked = errors.New("shutdown: an Init or Cleanup did not finish")

// ErrNotInitialized: a call before dockerd's Init or after Cleanup.
var ErrNotInitialized = errors.New("driver not initialized: dockerd calls GraphDriver.Init first")

// New returns a Plugin; nothing is opened until Init.
func New(cfg Config) *Plugin {
	if cfg.Name == "" {
		cfg.Name = "rbd-nbd"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Plugin{cfg: cfg, log: log, ctx: ctx, cancel: cancel, lock: make(chan struct{}, 1)}
}

func (p *Plugin) acquire() { p.lock <- struct{}{} }
func (p *Plugin) release() { <-p.lock }

// acquireWithin takes the lock unless ctx ends first.
func (p *Plugin) acquireWithin(ctx context.Context) error {
	select {
	case p.lock <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// initRecord is the StateFile's content.
type initRecord struct {
	Home    string
	Options []string
	UIDMaps []idtools.IDMap
	GIDMaps []idtools.IDMap
}

// Resume repeats the Init recorded in StateFile, if any: `serve` calls it
// at start. Failing to resume is logged, not fatal; dockerd's next Init
// tries again.
func (p *Plugin) Resume() {
	if p.cfg.StateFile == "" {
		return
	}
	b, err := os.ReadFile(p.cfg.StateFile)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	var rec initRecord
	if err == nil {
		err = json.Unmarshal(b, &rec)
	}
	if err == nil {
		p.log.Info("resuming the driver dockerd initialized before this plugin restarted", "home", rec.Home, "state", p.cfg.StateFile)
		err = p.Init(rec.Home, rec.Options, rec.UIDMaps, rec.GIDMaps)
	}
	if err != nil {
		p.log.Error("could not resume; waiting for dockerd's Init", "state", p.cfg.StateFile, "err", err)
	}
}

func (p *Plugin) saveRecord(rec initRecord) error {
	if p.cfg.StateFile == "" {
		return nil
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p.cfg.StateFile), 0o700); err != nil {
		return err
	}
	tmp := p.cfg.StateFile + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p.cfg.StateFile)
}

// Init starts a driver instance for dockerd's home, --storage-opt values
// and user-namespace maps.
func (p *Plugin) Init(home string, options []string, uidMaps, gidMaps []idtools.IDMap) error {
	opts, open, err := p.cfg.Parse(append(append([]string(nil), p.cfg.Options...), options...))
	if err != nil {
		return err
	}
	idMap := idtools.IdentityMapping{UIDMaps: uidMaps, GIDMaps: gidMaps}
	root := idMap.RootPair()
	key := fmt.Sprintf("%s|%q|%v|%v", home, options, uidMaps, gidMaps)

	p.acquire()
	defer p.release()
	if p.cur != nil {
		if p.cur.key == key {
			p.log.Info("Init repeats the running instance; keeping it", "home", home)
			return nil
		}
		p.log.Info("Init with new settings; closing the running instance", "home", home)
		if err := p.closeLocked(); err != nil {
			return fmt.Errorf("close the previous instance: %w", err)
		}
	}
	backend, err := open(p.ctx)
	if err != nil {
		return err
	}
	drv, err := graph.New(p.ctx, graph.Config{
		Home:       home,
		Options:    opts,
		Store:      backend.Store,
		Deletions:  backend.Deletions,
		Attacher:   backend.Attacher,
		Filesystem: p.cfg.Filesystem,
		Root:       graph.Identity{UID: root.UID, GID: root.GID},
		HostID:     p.cfg.HostID,
		Logger:     p.log,
		Observer:   p.cfg.Observer,
	})
	if err != nil {
		if backend.Close != nil {
			err = errors.Join(err, backend.Close())
		}
		return err
	}
	if err := p.saveRecord(initRecord{Home: home, Options: options, UIDMaps: uidMaps, GIDMaps: gidMaps}); err != nil {
		// Serving works without it; only a restart could not resume.
		p.log.Warn("could not record Init for a plugin restart", "state", p.cfg.StateFile, "err", err)
	}
	proto := &protoDriver{name: p.cfg.Name, ctx: p.ctx, d: drv}
	p.cur = &instance{key: key, drv: drv, proto: proto, diff: dgraph.NewNaiveDiffDriver(proto, idMap), idMap: idMap, backend: backend}
	p.log.Info("driver initialized", "home", home, "prefix", drv.Prefix(), "remapped root", !idMap.Empty())
	return nil
}

func (p *Plugin) instance() (*instance, error) {
	p.acquire()
	defer p.release()
	if p.cur == nil {
		return nil, ErrNotInitialized
	}
	return p.cur, nil
}

// Driver returns the current graph.Driver, or nil before Init.
func (p *Plugin) Driver() *graph.Driver {
	p.acquire()
	defer p.release()
	if p.cur == nil {
		return nil
	}
	return p.cur.drv
}

func (p *Plugin) create(id, parent string, storageOpt map[string]string) error {
	in, err := p.instance()
	if err != nil {
		return err
	}
	return in.diff.Create(id, parent, &dgraph.CreateOpts{StorageOpt: storageOpt})
}

// Create makes an image layer.
func (p *Plugin) Create(id, parent, mountLabel string, storageOpt map[string]string) error {
	return p.create(id, parent, storageOpt)
}

// CreateReadWrite makes a container layer; storage-opt size= is honoured.
func (p *Plugin) CreateReadWrite(id, parent, mountLabel string, storageOpt map[string]string) error {
	return p.create(id, parent, storageOpt)
}

func (p *Plugin) Remove(id string) error {
	in, err := p.instance()
	if err != nil {
		return err
	}
	return in.diff.Remove(id)
}

// Get mounts the layer. mountLabel (SELinux) is not supported and must
// be empty.
func (p *Plugin) Get(id, mountLabel string) (containerfs.ContainerFS, error) {
	in, err := p.instance()
	if err != nil {
		return nil, err
	}
	if mountLabel != "" {
		return nil, fmt.Errorf("mount label %q: SELinux labels are not supported by this driver", mountLabel)
	}
	return in.diff.Get(id, "")
}

func (p *Plugin) Put(id string) error {
	in, err := p.instance()
	if err != nil {
		return err
	}
	return in.diff.Put(id)
}

// Exists answers false when not initialized (dockerd then creates).
func (p *Plugin) Exists(id string) bool {
	in, err := p.instance()
	if err != nil {
		return false
	}
	return in.diff.Exists(id)
}

func (p *Plugin) Status() [][2]string {
	in, err := p.instance()
	if err != nil {
		return [][2]string{{"State", "not initialized (waiting for dockerd's Init)"}}
	}
	return in.diff.Status()
}

func (p *Plugin) GetMetadata(id string) (map[string]string, error) {
	in, err := p.instance()
	if err != nil {
		return nil, err
	}
	return in.diff.GetMetadata(id)
}

// Cleanup closes the current instance: nothing stays mounted, attached
// or open. dockerd calls it when it stops; a later Init starts again, and
// until then a restarted plugin has nothing to resume.
func (p *Plugin) Cleanup() error {
	p.acquire()
	defer p.release()
	err := p.closeLocked()
	if p.cfg.StateFile != "" {
		if rerr := os.Remove(p.cfg.StateFile); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}
	return err
}

func (p *Plugin) closeLocked() error {
	if p.cur == nil {
		return nil
	}
	in := p.cur
	p.cur = nil
	err := in.drv.Close(context.WithoutCancel(p.ctx))
	if in.backend.Close != nil {
		err = errors.Join(err, in.backend.Close())
	}
	return err
}

// Shutdown is for SIGTERM: it cancels operations in flight and hands the
// instance over: every layer stops being served but stays mounted and
// attached, the kernel holds the devices' IO, and the next plugin
// process resumes from the Init record (dockerd, still running, will not
// call Init again) and adopts them. With Config.DetachOnExit it closes
// the instance like Cleanup instead, keeping the record.
//
// An Init (or Cleanup) still inside the cluster when SIGTERM comes holds
// the instance; Shutdown waits for it at most ShutdownTimeout and then
// returns ErrShutdownBlocked, leaving it: the process is leaving, and the
// Init record, if any, lets the next process resume.
func (p *Plugin) Shutdown() error {
	p.cancel()
	timeout := p.cfg.ShutdownTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := p.acquireWithin(ctx); err != nil {
		p.log.Error("an Init or Cleanup is still waiting for the cluster; exiting without it", "waited", timeout)
		return fmt.Errorf("%w (waited %v; check 'ceph -s' for a full or paused pool)", ErrShutdownBlocked, timeout)
	}
	defer p.release()
	if p.cfg.DetachOnExit {
		return p.closeLocked()
	}
	if p.cur == nil {
		return nil
	}
	in := p.cur
	p.cur = nil
	err := in.drv.Release(ctx)
	if err != nil {
		// Requests still in flight in the cluster hold the connection:
		// closing it would wait for them. Exiting releases it.
		p.log.Error("handover incomplete; exiting without closing the cluster connection", "err", err)
		return err
	}
	if in.backend.Close != nil {
		err = in.backend.Close()
	}
	p.log.Info("handed over: layers stay mounted for the next plugin process")
	return err
}

// DiffStream is Diff with its error: the tar stream of the changes of id
// against parent. The handler uses it so a failure reaches dockerd as
// {"Err": ...} instead of a short stream.
func (p *Plugin) DiffStream(id, parent string) (io.ReadCloser, error) {
	in, err := p.instance()
	if err != nil {
		return nil, err
	}
	if parent != "" || in.idMap.Empty() {
		return in.diff.Diff(id, parent)
	}
	// NaiveDiffDriver tars a layer without a parent with no ID map, so
	// under userns-remap its files would carry host IDs; shift them back
	// to container IDs as the diff against a parent does.
	fs, err := in.proto.Get(id, "")
	if err != nil {
		return nil, err
	}
	rc, err := archive.TarWithOptions(fs.Path(), &archive.TarOptions{Compression: archive.Uncompressed, IDMap: in.idMap})
	if err != nil {
		return nil, errors.Join(err, in.proto.Put(id))
	}
	return ioutils.NewReadCloserWrapper(rc, func() error { return errors.Join(rc.Close(), in.proto.Put(id)) }), nil
}

// Diff satisfies go-plugins-helpers, whose interface has no error: a
// failure (before or during the stream) aborts the HTTP response, so
// dockerd sees a broken transfer rather than a short, valid-looking tar.
// Handler answers Diff through DiffStream and never gets here.
func (p *Plugin) Diff(id, parent string) io.ReadCloser {
	rc, err := p.DiffStream(id, parent)
	return &abortingReader{rc: rc, err: err, log: p.log, what: "diff of " + id}
}

type abortingReader struct {
	rc   io.ReadCloser
	err  error
	log  *slog.Logger
	what string
}

func (a *abortingReader) Read(b []byte) (int, error) {
	if a.err == nil {
		var n int
		n, a.err = a.rc.Read(b)
		if a.err == nil || a.err == io.EOF {
			return n, a.err
		}
	}
	a.log.Error("aborting the response", "what", a.what, "err", a.err)
	panic(http.ErrAbortHandler)
}

func (a *abortingReader) Close() error {
	if a.rc == nil {
		return nil
	}
	return a.rc.Close()
}

func (p *Plugin) Changes(id, parent string) ([]gd.Change, error) {
	in, err := p.instance()
	if err != nil {
		return nil, err
	}
	changes, err := in.diff.Changes(id, parent)
	if err != nil {
		return nil, err
	}
	out := make([]gd.Change, len(changes))
	for i, c := range changes {
		// archive.ChangeKind and the helper's ChangeKind number
		// Modify, Add, Delete alike (0, 1, 2).
		out[i] = gd.Change{Path: c.Path, Kind: gd.ChangeKind(c.Kind)}
	}
	return out, nil
}

func (p *Plugin) ApplyDiff(id, parent string, archive io.Reader) (int64, error) {
	in, err := p.instance()
	if err != nil {
		return 0, err
	}
	return in.diff.ApplyDiff(id, parent, archive)
}

func (p *Plugin) DiffSize(id, parent string) (int64, error) {
	in, err := p.instance()
	if err != nil {
		return 0, err
	}
	return in.diff.DiffSize(id, parent)
}

// Capabilities: the naive diff is not byte-for-byte reproducible.
func (p *Plugin) Capabilities() dgraph.Capabilities {
	return dgraph.Capabilities{ReproducesExactDiffs: false}
}

// protoDriver is graph.Driver as docker's ProtoDriver, the interface
// NaiveDiffDriver builds the diff methods on.
type protoDriver struct {
	name string
	ctx  context.Context
	d    *graph.Driver
}

var _ dgraph.ProtoDriver = (*protoDriver)(nil)

func (p *protoDriver) String() string { return p.name }

func (p *protoDriver) Create(id, parent string, opts *dgraph.CreateOpts) error {
	var storageOpt map[string]string
	if opts != nil {
		storageOpt = opts.StorageOpt
	}
	co, err := graph.ParseStorageOpts(storageOpt)
	if err != nil {
		return err
	}
	return p.d.Create(p.ctx, id, parent, co)
}

func (p *protoDriver) CreateReadWrite(id, parent string, opts *dgraph.CreateOpts) error {
	return p.Create(id, parent, opts)
}

func (p *protoDriver) Remove(id string) error { return p.d.Remove(p.ctx, id) }

func (p *protoDriver) Get(id, mountLabel string) (containerfs.ContainerFS, error) {
	dir, err := p.d.Get(p.ctx, id)
	if err != nil {
		return nil, err
	}
	return containerfs.NewLocalContainerFS(dir), nil
}

func (p *protoDriver) Put(id string) error { return p.d.Put(p.ctx, id) }

func (p *protoDriver) Exists(id string) bool { return p.d.Exists(id) }

func (p *protoDriver) Status() [][2]string { return p.d.Status() }

func (p *protoDriver) GetMetadata(id string) (map[string]string, error) {
	return p.d.Metadata(p.ctx, id)
}

func (p *protoDriver) Cleanup() error { return p.d.Close(p.ctx) }
