package dockerplugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"sync"
	"time"

	gd "github.com/docker/go-plugins-helpers/graphdriver"
	"github.com/docker/go-plugins-helpers/sdk"
)

// Handler serves the plugin protocol. go-plugins-helpers' graphdriver
// handler does the routing and encoding, but it answers a body it cannot
// decode with a text/plain 400 and has no way to report a Diff error, and
// it keeps its mux private. So Handler is a front that checks every
// request and answers what is wrong with {"Err": ...}, answers Diff
// itself, and passes the rest to the helper's handler, which serves an
// in-memory listener in the same process.
type Handler struct {
	p     *Plugin
	log   *slog.Logger
	ln    *pipeListener
	proxy *httputil.ReverseProxy
	done  chan error
}

// maxRequest bounds the JSON bodies the front reads (they carry IDs and
// options; ApplyDiff's tar stream is passed through, not read).
const maxRequest = 1 << 20

// requestBodies maps each method to the type its JSON body must decode
// into; nil means the body is not read (dockerd sends {} or nothing, or
// a tar stream for ApplyDiff).
var requestBodies = map[string]func() any{
	"/Plugin.Activate":             nil,
	"/GraphDriver.Init":            func() any { return new(gd.InitRequest) },
	"/GraphDriver.Create":          func() any { return new(gd.CreateRequest) },
	"/GraphDriver.CreateReadWrite": func() any { return new(gd.CreateRequest) },
	"/GraphDriver.Remove":          func() any { return new(gd.RemoveRequest) },
	"/GraphDriver.Get":             func() any { return new(gd.GetRequest) },
	"/GraphDriver.Put":             func() any { return new(gd.PutRequest) },
	"/GraphDriver.Exists":          func() any { return new(gd.ExistsRequest) },
	"/GraphDriver.Status":          nil,
	"/GraphDriver.GetMetadata":     func() any { return new(gd.GetMetadataRequest) },
	"/GraphDriver.Cleanup":         nil,
	"/GraphDriver.Diff":            func() any { return new(gd.DiffRequest) },
	"/GraphDriver.Changes":         func() any { return new(gd.ChangesRequest) },
	"/GraphDriver.ApplyDiff":       nil,
	"/GraphDriver.DiffSize":        func() any { return new(gd.DiffSizeRequest) },
	"/GraphDriver.Capabilities":    nil,
}

// NewHandler starts the helper's handler for p behind the front. Close
// stops it.
func NewHandler(p *Plugin) *Handler {
	h := &Handler{p: p, log: p.log, ln: newPipeListener(), done: make(chan error, 1)}
	inner := gd.NewHandler(p)
	go func() { h.done <- inner.Serve(h.ln) }()
	h.proxy = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.Out.URL.Scheme = "http"
			r.Out.URL.Host = "plugin"
		},
		Transport: &http.Transport{
			DialContext:        func(ctx context.Context, _, _ string) (net.Conn, error) { return h.ln.dial(ctx) },
			DisableCompression: true,
			MaxIdleConns:       16,
			IdleConnTimeout:    time.Minute,
		},
		FlushInterval: -1, // stream (ApplyDiff sizes come back at once; nothing to batch)
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			h.log.Error("plugin handler failed", "method", r.URL.Path, "err", err)
			writeErr(w, http.StatusInternalServerError, fmt.Errorf("%s failed inside the plugin: %w", r.URL.Path, err))
		},
	}
	return h
}

// Close stops the helper's handler.
func (h *Handler) Close() error {
	h.ln.Close()
	if err := <-h.done; err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	return nil
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	defer func() { h.log.Debug("request", "method", r.URL.Path, "took", time.Since(start)) }()

	newBody, known := requestBodies[r.URL.Path]
	if !known {
		writeErr(w, http.StatusNotFound, fmt.Errorf("unknown method %s: this plugin implements GraphDriver", r.URL.Path))
		return
	}
	if r.Method != http.MethodPost {
		writeErr(w, http.StatusMethodNotAllowed, fmt.Errorf("%s %s: plugin methods are called with POST", r.Method, r.URL.Path))
		return
	}
	if newBody == nil {
		h.proxy.ServeHTTP(w, r)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequest+1))
	if err == nil && len(body) > maxRequest {
		err = fmt.Errorf("body larger than %d bytes", maxRequest)
	}
	req := newBody()
	if err == nil {
		err = json.Unmarshal(body, req)
	}
	if err != nil {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("malformed request to %s: %w", r.URL.Path, err))
		return
	}
	if d, ok := req.(*gd.DiffRequest); ok {
		h.serveDiff(w, d)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	h.proxy.ServeHTTP(w, r)
}

// serveDiff streams the tar of a layer's changes, or {"Err": ...} when it
// cannot start. A failure half way aborts the response, so dockerd sees
// a broken transfer instead of a short tar.
func (h *Handler) serveDiff(w http.ResponseWriter, req *gd.DiffRequest) {
	rc, err := h.p.DiffStream(req.ID, req.Parent)
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", sdk.DefaultContentTypeV1_1)
	if _, err := io.Copy(w, rc); err != nil {
		h.log.Error("diff stream failed half way; aborting the response", "layer", req.ID, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// writeErr answers {"Err": ...}, the error form dockerd's plugin client
// understands.
func writeErr(w http.ResponseWriter, status int, err error) {
	w.Header().Set("Content-Type", sdk.DefaultContentTypeV1_1)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(gd.ErrorResponse{Err: err.Error()})
}

// pipeListener is a net.Listener whose connections are in-memory pipes
// made by dial.
type pipeListener struct {
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) dial(ctx context.Context) (net.Conn, error) {
	client, server := net.Pipe()
	select {
	case l.conns <- server:
		return client, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "in-process" }
