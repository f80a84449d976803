package nbd

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"
)

// socketPair returns two connected unix stream sockets, the kind of
// connection the kernel path serves.
func socketPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	dir := t.TempDir()
	ln, err := net.Listen("unix", dir+"/s")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		ch <- res{c, err}
	}()
	a, err := net.Dial("unix", dir+"/s")
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	return a, r.c
}

// logBuffer is a concurrency-safe log sink for asserting on log output.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func testLogger(t testing.TB) (*slog.Logger, *logBuffer) {
	lb := &logBuffer{}
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

// serving runs ServeTransmission on the server end of a fresh socket
// pair and returns the client end and the loop's result.
func serving(t testing.TB, b Backend, opts TransmissionOptions) (net.Conn, <-chan error) {
	t.Helper()
	cli, srv := socketPair(t)
	if opts.Logger == nil {
		opts.Logger, _ = testLogger(t)
	}
	done := make(chan error, 1)
	go func() { done <- ServeTransmission(context.Background(), srv, b, opts) }()
	t.Cleanup(func() { cli.Close() })
	return cli, done
}

func waitErr(t testing.TB, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("ServeTransmission did not return within 10s")
		return nil
	}
}
