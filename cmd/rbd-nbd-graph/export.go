package main

import (
	"errors"
	"fmt"
	"os"
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
	metrics         *metricsFlags
}

// defaultShutdownTimeout is how long export waits, after SIGINT or
// SIGTERM, for the requests in flight and for closing the target.
const defaultShutdownTimeout = 30 * time.Second

// errShutdownDeadline: export gave up on requests in flight (or on
// closing its target) at the shutdown deadline and exits without them.
var errShutdownDeadline = errors.New("shutdown deadline passed")

func parseExportFlags(env *environment, args []string) (*exportFlags, string, error) {
	f := &exportFlags{}
	fs := newFlagSet(env, "export", "export [--socket PATH | --listen ADDR] [flags] TARGET",
		"Serves TARGET to NBD clients (nbdinfo, nbdcopy, qemu, fio, nbd-client) until SIGINT or SIGTERM,\n"+
			"then finishes the requests in flight and exits 0; if that takes longer than --shutdown-timeout\n"+
			"(a cluster that does not answer), it exits 1 without them. Prints the export's NBD URI once it listens.\n"+
			"TARGET: "+targetForms+".")
	f.ceph.register(fs)
	fs.StringVar(&f.socket, "socket", "", "serve on this unix socket")
	fs.StringVar(&f.listen, "listen", "", "serve on this TCP address (default "+defaultListen+"; loopback only unless --allow-remote)")
	fs.BoolVar(&f.allowRemote, "allow-remote", false, "let --listen use a non-loopback address: anyone who can reach it can read and write the export")
	fs.BoolVar(&f.readOnly, "read-only", false, "refuse writes (and open the target read-only)")
	fs.StringVar(&f.name, "name", "", "export name clients ask for (the export is also the default one)")
	fs.StringVar(&f.description, "description", "", "export description shown by NBD_OPT_LIST (default: TARGET)")
	fs.IntVar(&f.queueDepth, "queue-depth", 0, fmt.Sprintf("requests served at once per connection (0: %d)", nbd.DefaultQueueDepth))
	fs.BoolVar(&f.multiConn, "multi-conn", false, "advertise NBD_FLAG_CAN_MULTI_CONN: clients may use several connections")
	durationVar(fs, &f.shutdownTimeout, "shutdown-timeout", defaultShutdownTimeout,
		"after SIGINT/SIGTERM, wait this long for requests in flight and for closing TARGET, then exit anyway (status 1)")
	fs.UintVar(&f.blockSize, "block-size", 0, "minimum block size clients must align to (0: 512, or 1 if the size is not a multiple of 512)")
	mode := fs.String("socket-mode", "0600", "permissions of the --socket file, in octal: whoever may connect can read and write the export")
	group := fs.String("socket-group", "", "group (name or id) of the --socket file, e.g. with --socket-mode 0660")
	fs.StringVar(&f.tlsMode, "tls", "off", "NBD STARTTLS: off, on (offered) or require (no export without it)")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "server certificate (PEM) for --tls on|require")
	fs.StringVar(&f.tlsKey, "tls-key", "", "server private key (PEM) for --tls on|require")
	fs.StringVar(&f.tlsCA, "tls-ca", "", "CA certificates (PEM): clients must present a certificate they signed")
	fs.IntVar(&f.maxConns, "max-connections", nbd.DefaultMaxConnections, "clients served at once; more are closed at once with a log line")
	f.metrics = registerMetricsFlags(fs)
	inflight := fs.String("max-inflight-bytes", fmt.Sprintf("%dM", nbd.DefaultServerMaxInFlightBytes>>20),
		fmt.Sprintf("payload bytes held by requests in flight across all clients (each client also at most %dM); more requests wait", nbd.DefaultMaxInFlightBytes>>20))
	if err := parseFlags(fs, args); err != nil {
		return nil, "", err
	}
	if fs.NArg() != 1 {
		return nil, "", fmt.Errorf("%w: want exactly one TARGET, got %d arguments %q", errUsage, fs.NArg(), fs.Args())
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
