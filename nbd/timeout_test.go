package nbd

import (
	"testing"
	"time"
)

// servedOn is g as the IO loop's path named mode sees it: "worker" (g's
// own synchronous calls) or "async".
func servedOn(t *testing.T, mode string, g *gateBackend) Backend {
	if mode == "async" {
		return newAsyncOver(t, g, false)
	}
	return g
}

// TestRequestTimeout: a request the backend sits on past RequestTimeout
// is answered with EIO, the connection stays in sync, later requests
// are served, and the late result is dropped (no second reply), on the
// worker path and on the asynchronous path.
func TestRequestTimeout(t *testing.T) {
	for _, mode := range []string{"worker", "async"} {
		t.Run(mode, func(t *testing.T) {
			g := newGateBackend(1 << 20)
			defer g.open()
			b := servedOn(t, mode, g)
			const timeout = 200 * time.Millisecond
			c, done := serving(t, b, TransmissionOptions{RequestTimeout: timeout})
			rc := rawConn{t, c}
			start := time.Now()
			rc.send(Request{Type: CmdRead, Cookie: 1, Offset: 0, Length: 512}, nil)
			<-g.entered
			r, _ := rc.reply(map[uint64]int{1: 512})
			if r.Cookie != 1 || r.Errno != EIO {
				t.Fatalf("reply %+v, want EIO for cookie 1", r)
			}
			if el := time.Since(start); el < timeout || el > timeout+5*time.Second {
				t.Fatalf("the timed-out reply came after %v; want about %v", el, timeout)
			}
			// The backend finishes late: its result must not reach the
			// client, and the slot must come back for new requests.
			g.open()
			if errno, data := rc.roundTrip(Request{Type: CmdRead, Cookie: 2, Offset: 4096, Length: 512}, nil); errno != 0 || len(data) != 512 {
				t.Fatalf("read after the timeout: errno %d, %d bytes", errno, len(data))
			}
			rc.send(Request{Type: CmdDisc}, nil)
			rc.expectClosed()
			if err := waitErr(t, done); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestNoRequestTimeoutByDefault: without RequestTimeout a slow request
// waits as long as the backend needs.
func TestNoRequestTimeoutByDefault(t *testing.T) {
	g := newGateBackend(1 << 20)
	defer g.open()
	c, _ := serving(t, g, TransmissionOptions{})
	rc := rawConn{t, c}
	rc.send(Request{Type: CmdWrite, Cookie: 7, Length: 512}, make([]byte, 512))
	<-g.entered
	c.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("got %d reply bytes while the backend still held the write", n)
	}
	g.open()
	if r, _ := rc.reply(nil); r.Cookie != 7 || r.Errno != 0 {
		t.Fatalf("reply %+v", r)
	}
}

// TestReadDone: the callback says whether the client ended with DISC,
// and comes before requests in flight are waited for.
func TestReadDone(t *testing.T) {
	for _, disc := range []bool{true, false} {
		g := newGateBackend(1 << 20)
		got := make(chan bool, 1)
		c, done := serving(t, g, TransmissionOptions{ReadDone: func(d bool) { got <- d }})
		rc := rawConn{t, c}
		rc.send(Request{Type: CmdRead, Cookie: 1, Length: 512}, nil)
		<-g.entered
		if disc {
			rc.send(Request{Type: CmdDisc}, nil)
		} else {
			c.(interface{ CloseWrite() error }).CloseWrite()
		}
		select {
		case d := <-got:
			if d != disc {
				t.Fatalf("ReadDone(%v), want %v", d, disc)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("ReadDone not called while a request was in flight")
		}
		g.open()
		waitErr(t, done)
	}
}
