package rbdexport

import (
	"context"
	be "encoding/binary"
	"io"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// Every client of an rbd: image shares the image's completion goroutine.
// Client A sends 64 READs of 1 MiB and never reads the replies; client
// B's 4 KiB READ must still be answered within 1 s (it waited until B
// gave up when completions wrote replies with a blocking writev).
func TestStalledReaderDelaysOnlyItself(t *testing.T) {
	c := cluster(t)
	img := newImage(t, c, 128<<20)
	p := export(t, "rbd:rbd/"+img)
	u, err := url.Parse(p.uri)
	if err != nil {
		t.Fatal(err)
	}
	sock := u.Query().Get("socket")

	a, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	a.SetDeadline(time.Now().Add(30 * time.Second))
	var hello [18]byte
	if _, err := io.ReadFull(a, hello[:]); err != nil {
		t.Fatal(err)
	}
	msg := be.BigEndian.AppendUint32(nil, 3) // FIXED_NEWSTYLE | NO_ZEROES
	msg = append(msg, "IHAVEOPT"...)
	msg = be.BigEndian.AppendUint32(msg, nbd.OptExportName)
	msg = be.BigEndian.AppendUint32(msg, 0)
	if _, err := a.Write(msg); err != nil {
		t.Fatal(err)
	}
	var info [10]byte
	if _, err := io.ReadFull(a, info[:]); err != nil {
		t.Fatal(err)
	}
	var req [nbd.RequestSize]byte
	for i := range 64 {
		(&nbd.Request{Type: nbd.CmdRead, Cookie: uint64(i), Offset: uint64(i) << 20, Length: 1 << 20}).Encode(req[:])
		if _, err := a.Write(req[:]); err != nil {
			t.Fatal(err)
		}
	}
	// Time for A's READs to complete and its socket to fill.
	time.Sleep(2 * time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, err := nbd.Dial(ctx, "unix", sock, "")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := b.ReadAt(make([]byte, 4096), 100<<20)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("B's 4 KiB READ took %v while A stalls", time.Since(start))
	case <-time.After(time.Second):
		t.Fatal("B's 4 KiB READ not answered within 1 s while A does not read its replies")
	}
}
