package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/user"
	"strconv"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/unixsock"
)

// Where and how export listens: the loopback policy, the unix socket's
// hygiene and permissions, TLS from PEM files, and the NBD URI.

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
