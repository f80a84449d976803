package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/user"
	"strconv"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/unixsock"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// defaultListen is where export listens when neither --socket nor
// --listen is given: the IANA NBD port, on loopback only.
const defaultListen = "127.0.0.1:10809"

type exportFlags struct {
	ceph        cephFlags
	socket      string
	listen      string
	allowRemote bool
	readOnly    bool
	name        string
	description string
	queueDepth  int
	multiConn   bool
	blockSize   uint
	// The socket's permissions, parsed from --socket-mode and
	// --socket-group.
	socketMode os.FileMode
	socketGID  int
	maxConns   int
	maxInLimit int64
	tlsMode    string
	tlsCert    string
	tlsKey     string
	tlsCA      string
	// shutdownTimeout bounds the drain after SIGTERM: see runExport.
	shutdownTimeout time.Duration
}

// defaultShutdownTimeout is how long export waits, after SIGINT or
// SIGTERM, for the requests in flight and for closing the target.
const defaultShutdownTimeout = 30 * time.Second

// errShutdownDeadline: export gave up on requests in flight (or on
// closing its target) at the shutdown deadline and exits without them.
var errShutdownDeadline = errors.New("shutdown deadline passed")

func parseExportFlags(env *environment, args []string) (*exportFlags, string, error) {
	f := &exportFlags{}
	fs := flag.NewFlagSet("export", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	f.ceph.register(fs)
	fs.StringVar(&f.socket, "socket", "", "serve on this unix socket")
	fs.StringVar(&f.listen, "listen", "", "serve on this TCP address (default "+defaultListen+"; loopback only unless --allow-remote)")
	fs.BoolVar(&f.allowRemote, "allow-remote", false, "let --listen use a non-loopback address: anyone who can reach it can read and write the export")
	fs.BoolVar(&f.readOnly, "read-only", false, "refuse writes (and open the target read-only)")
	fs.StringVar(&f.name, "name", "", "export name clients ask for (the export is also the default one)")
	fs.StringVar(&f.description, "description", "", "export description shown by NBD_OPT_LIST (default: TARGET)")
	fs.IntVar(&f.queueDepth, "queue-depth", 0, fmt.Sprintf("requests served at once per connection (0: %d)", nbd.DefaultQueueDepth))
	fs.BoolVar(&f.multiConn, "multi-conn", false, "advertise NBD_FLAG_CAN_MULTI_CONN: clients may use several connections")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", defaultShutdownTimeout,
		"after SIGINT/SIGTERM, wait this long for requests in flight and for closing TARGET, then exit anyway (status 1)")
	fs.UintVar(&f.blockSize, "block-size", 0, "minimum block size clients must align to (0: 512, or 1 if the size is not a multiple of 512)")
	mode := fs.String("socket-mode", "0600", "permissions of the --socket file, in octal: whoever may connect can read and write the export")
	group := fs.String("socket-group", "", "group (name or id) of the --socket file, e.g. with --socket-mode 0660")
	fs.StringVar(&f.tlsMode, "tls", "off", "NBD STARTTLS: off, on (offered) or require (no export without it)")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "server certificate (PEM) for --tls on|require")
	fs.StringVar(&f.tlsKey, "tls-key", "", "server private key (PEM) for --tls on|require")
	fs.StringVar(&f.tlsCA, "tls-ca", "", "CA certificates (PEM): clients must present a certificate they signed")
	fs.IntVar(&f.maxConns, "max-connections", nbd.DefaultMaxConnections, "clients served at once; more are closed at once with a log line")
	inflight := fs.String("max-inflight-bytes", fmt.Sprintf("%dM", nbd.DefaultServerMaxInFlightBytes>>20),
		fmt.Sprintf("payload bytes held by requests in flight across all clients (each client also at most %dM); more requests wait", nbd.DefaultMaxInFlightBytes>>20))
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "usage: rbd-nbd-graph export [--socket PATH | --listen ADDR] [flags] TARGET\n\n"+
			"Serves TARGET to NBD clients (nbdinfo, nbdcopy, qemu, fio, nbd-client) until SIGINT or SIGTERM,\n"+
			"then finishes the requests in flight and exits 0; if that takes longer than --shutdown-timeout\n"+
			"(a cluster that does not answer), it exits 1 without them. Prints the export's NBD URI once it listens.\n"+
			"TARGET: %s.\n\nflags:\n", targetForms)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return nil, "", err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return nil, "", fmt.Errorf("%w: want exactly one TARGET, got %d arguments", errUsage, fs.NArg())
	}
	if f.socket != "" && f.listen != "" {
		return nil, "", fmt.Errorf("%w: --socket and --listen are exclusive: serve on one or the other", errUsage)
	}
	if f.socket == "" && f.listen == "" {
		f.listen = defaultListen
	}
	if f.queueDepth < 0 || f.queueDepth > 1024 {
		return nil, "", fmt.Errorf("%w: --queue-depth %d out of range 0..1024", errUsage, f.queueDepth)
	}
	if f.shutdownTimeout <= 0 {
		return nil, "", fmt.Errorf("%w: --shutdown-timeout %v: want a positive duration such as 30s", errUsage, f.shutdownTimeout)
	}
	if b := f.blockSize; b != 0 && (b&(b-1) != 0 || b > 65536) {
		return nil, "", fmt.Errorf("%w: --block-size %d is not a power of two up to 65536", errUsage, b)
	}
	m, err := strconv.ParseUint(*mode, 8, 32)
	if err != nil || m > 0o777 {
		return nil, "", fmt.Errorf("%w: --socket-mode %q: want octal permissions such as 0600 or 0660", errUsage, *mode)
	}
	f.socketMode = os.FileMode(m)
	f.socketGID = unixsock.NoGroup
	if *group != "" {
		if f.socketGID, err = lookupGroup(*group); err != nil {
			return nil, "", fmt.Errorf("%w: --socket-group: %v", errUsage, err)
		}
	}
	if f.socket == "" && (*mode != "0600" || *group != "") {
		return nil, "", fmt.Errorf("%w: --socket-mode and --socket-group apply to --socket only", errUsage)
	}
	switch f.tlsMode {
	case "off":
		if f.tlsCert != "" || f.tlsKey != "" || f.tlsCA != "" {
			return nil, "", fmt.Errorf("%w: --tls-cert, --tls-key and --tls-ca need --tls on or --tls require", errUsage)
		}
	case "on", "require":
		if f.tlsCert == "" || f.tlsKey == "" {
			return nil, "", fmt.Errorf("%w: --tls %s needs --tls-cert and --tls-key", errUsage, f.tlsMode)
		}
	default:
		return nil, "", fmt.Errorf("%w: --tls %q: want off, on or require", errUsage, f.tlsMode)
	}
	if f.maxConns < 1 {
		return nil, "", fmt.Errorf("%w: --max-connections %d: want at least 1", errUsage, f.maxConns)
	}
	if f.maxInLimit, err = parseSize(*inflight); err != nil || f.maxInLimit < 1<<20 {
		return nil, "", fmt.Errorf("%w: --max-inflight-bytes %q: want a size of at least 1M, e.g. 256M", errUsage, *inflight)
	}
	return f, fs.Arg(0), nil
}

func runExport(ctx context.Context, env *environment, args []string) (err error) {
	f, target, err := parseExportFlags(env, args)
	if err != nil {
		return err
	}
	// Check the address before opening the target, which may be slow.
	if f.listen != "" {
		exposure, err := checkListenAddr(f.listen, f.allowRemote)
		if err != nil {
			return err
		}
		if exposure != "" {
			env.log.Warn("export: NBD has no authentication: anyone who can reach this address can read and write the export",
				"listen", f.listen, "exposure", exposure)
		}
	}
	tlsConf, err := loadTLS(f)
	if err != nil {
		return err
	}
	f.ceph.log = env.log
	b, closeTarget, err := openTarget(ctx, target, f.ceph, f.readOnly)
	if err != nil {
		return err
	}
	// Closing an rbd: target waits for the cluster (releasing the
	// exclusive lock is an OSD request): give it what is left of the
	// shutdown deadline, then leave it to the process's exit.
	var deadline time.Time // set when the shutdown begins
	abandoned := false     // requests still in flight: do not close
	defer func() {
		if abandoned {
			return
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(f.shutdownTimeout)
		}
		if cerr := boundedWait(closeTarget, deadline); cerr != nil && err == nil {
			err = fmt.Errorf("closing %s: %w", target, cerr)
		}
	}()
	bs := uint32(f.blockSize)
	if bs == 0 {
		bs = 512
		if b.Size()%512 != 0 {
			bs = 1
		}
	}
	desc := f.description
	if desc == "" {
		desc = target
	}
	srv, err := nbd.NewServer([]nbd.Export{{
		Name:        f.name,
		Description: desc,
		Backend:     b,
		Options:     nbd.TransmissionOptions{ReadOnly: f.readOnly, QueueDepth: f.queueDepth, BlockSize: bs, Logger: env.log},
		MultiConn:   f.multiConn,
	}}, nbd.ServerOptions{Logger: env.log, MaxConnections: f.maxConns, MaxInFlightBytes: f.maxInLimit,
		TLS: tlsConf, TLSRequired: f.tlsMode == "require"})
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}

	ln, uri, err := listen(f)
	if err != nil {
		return err
	}
	env.log.Info("export: serving", "target", target, "size", b.Size(), "uri", uri, "read_only", f.readOnly, "tls", f.tlsMode)
	// The URI on stdout tells scripts (and tests) the export is ready.
	fmt.Fprintln(env.stdout, uri)
	notifySystemd(ctx, env.log, "serving "+uri)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	// Serve stops reading requests and waits for those in flight, which
	// wait for the cluster: a paused or unreachable cluster (with
	// --osd-timeout 0) would keep them, and this process, for ever.
	deadline = time.Now().Add(f.shutdownTimeout)
	env.log.Info("export: stopping; waiting for requests in flight", "deadline", f.shutdownTimeout)
	timer := time.NewTimer(f.shutdownTimeout)
	defer timer.Stop()
	select {
	case err := <-served:
		if err != nil {
			return err
		}
		env.log.Info("export: stopped; requests in flight were completed")
		return nil
	case <-timer.C:
		// Not calling into librbd again (its close waits for the same
		// requests): the process exits and the cluster sees the client
		// go; its lock is broken by the next opener as after a crash.
		abandoned = true
		env.log.Error("export: requests in flight did not complete by the shutdown deadline; exiting without them (their clients get no reply; writes not acknowledged may or may not have reached the cluster)",
			"deadline", f.shutdownTimeout, "target", target)
		return fmt.Errorf("%w (--shutdown-timeout %v): the cluster did not complete the requests in flight; check 'ceph -s' (paused or full OSDs?)", errShutdownDeadline, f.shutdownTimeout)
	}
}

// boundedWait runs f and waits for it until deadline; past it, f is left
// running (it ends with the process) and an errShutdownDeadline returned.
func boundedWait(f func() error, deadline time.Time) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	timer := time.NewTimer(max(time.Until(deadline), 0))
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		return fmt.Errorf("%w: still waiting for the cluster; exiting without it", errShutdownDeadline)
	}
}

// checkListenAddr refuses addresses that are not loopback unless
// allowRemote: the NBD protocol has no authentication here. With
// allowRemote it returns what the address exposes the export to, for a
// warning, or "" for a loopback address.
func checkListenAddr(addr string, allowRemote bool) (exposure string, err error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("%w: --listen %q: %v (want HOST:PORT, e.g. %s)", errUsage, addr, err, defaultListen)
	}
	if host == "" && !allowRemote {
		return "", fmt.Errorf("%w: --listen %q listens on every interface; NBD has no authentication, so use a loopback address (e.g. %s) or add --allow-remote", errUsage, addr, defaultListen)
	}
	if ip := net.ParseIP(host); allowRemote && (host == "" || (ip != nil && ip.IsUnspecified())) {
		return "every interface of this machine", nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		return "", fmt.Errorf("%w: --listen %q: %v", errUsage, addr, err)
	}
	for _, ip := range ips {
		if !ip.IP.IsLoopback() {
			if !allowRemote {
				return "", fmt.Errorf("%w: --listen %q is not a loopback address (%s); NBD has no authentication, so anyone who can reach it could read and write the export: use 127.0.0.1 or [::1], or add --allow-remote", errUsage, addr, ip.IP)
			}
			return fmt.Sprintf("the network of non-loopback address %s", ip.IP), nil
		}
	}
	return "", nil
}

// lookupGroup resolves a group name or numeric id.
func lookupGroup(name string) (int, error) {
	if id, err := strconv.Atoi(name); err == nil && id >= 0 {
		return id, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(g.Gid)
}

// listen opens the listener and returns it with the export's NBD URI.
func listen(f *exportFlags) (net.Listener, string, error) {
	path := "/" + url.PathEscape(f.name)
	// nbds: clients must start TLS (with --tls on they may; the plain
	// URI then still works).
	scheme := "nbd"
	if f.tlsMode == "require" {
		scheme = "nbds"
	}
	if f.socket != "" {
		if err := removeStaleSocket(f.socket); err != nil {
			return nil, "", err
		}
		ln, err := unixsock.Listen(f.socket, f.socketMode, f.socketGID)
		if err != nil {
			return nil, "", fmt.Errorf("listen on unix socket: %w", err)
		}
		q := url.Values{"socket": {f.socket}}
		return ln, scheme + "+unix://" + path + "?" + q.Encode(), nil
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return nil, "", fmt.Errorf("listen on %s: %w", f.listen, err)
	}
	return ln, scheme + "://" + ln.Addr().String() + path, nil
}

// loadTLS builds the server's TLS configuration from --tls-cert,
// --tls-key and --tls-ca, or returns nil for --tls off.
func loadTLS(f *exportFlags) (*tls.Config, error) {
	if f.tlsMode == "off" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(f.tlsCert, f.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("%w: --tls-cert/--tls-key: %v", errUsage, err)
	}
	c := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if f.tlsCA != "" {
		pem, err := os.ReadFile(f.tlsCA)
		if err != nil {
			return nil, fmt.Errorf("%w: --tls-ca: %v", errUsage, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: --tls-ca %s holds no PEM certificate", errUsage, f.tlsCA)
		}
		c.ClientCAs, c.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return c, nil
}

// removeStaleSocket removes a unix socket left by a process that died,
// but never a socket someone still serves, nor anything else.
func removeStaleSocket(path string) error {
	st, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if st.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%w: --socket %s exists and is not a socket; choose another path", errUsage, path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("--socket %s: another server is listening there", path)
	}
	return os.Remove(path)
}
