package nbd

import (
	"context"
	"io"
	"net"
	"testing"
)

// The request path benchmarks drive ServeTransmission over a unix socket
// pair with a pipelined raw client keeping depth requests in flight, as
// fio's nbd engine or the kernel would. They report allocations of the
// whole process (server and client): the steady state must be 0 allocs/op.

func BenchmarkServeTransmissionRead4K(b *testing.B)  { benchTransmission(b, CmdRead, 4096, 16) }
func BenchmarkServeTransmissionWrite4K(b *testing.B) { benchTransmission(b, CmdWrite, 4096, 16) }
func BenchmarkServeTransmissionRead4KQD1(b *testing.B) {
	benchTransmission(b, CmdRead, 4096, 1)
}
func BenchmarkServeTransmissionRead128K(b *testing.B) { benchTransmission(b, CmdRead, 128<<10, 16) }
func BenchmarkServeTransmissionWrite128K(b *testing.B) {
	benchTransmission(b, CmdWrite, 128<<10, 16)
}

func benchTransmission(b *testing.B, cmd uint16, size, depth int) {
	benchTransmissionOn(b, NewMemory(64<<20), cmd, size, depth)
}

func benchTransmissionOn(b *testing.B, m Backend, cmd uint16, size, depth int) {
	benchTransmissionOpts(b, m, cmd, size, depth, TransmissionOptions{QueueDepth: depth})
}

func benchTransmissionOpts(b *testing.B, m Backend, cmd uint16, size, depth int, opts TransmissionOptions) {
	span := m.Size()
	// Touch every chunk so reads hit allocated memory, as on a used disk.
	m.(ZeroWriter).WriteZeroes(0, span, false)
	cli, srv := socketPair(b)
	defer cli.Close()
	log, _ := testLogger(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	opts.Logger = log
	go func() { done <- ServeTransmission(ctx, srv, m, opts) }()

	p := newPipeliner(cli, cmd, size, depth, span)
	p.run(b, 4*depth) // warm up: workers started, buffers allocated
	b.ReportAllocs()
	b.SetBytes(int64(size))
	b.ResetTimer()
	p.run(b, b.N)
	b.StopTimer()
	var disc [RequestSize]byte
	(&Request{Type: CmdDisc}).Encode(disc[:])
	cli.Write(disc[:])
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// pipeliner keeps depth requests in flight: one goroutine sends while
// the caller's goroutine reads replies. Everything is preallocated.
type pipeliner struct {
	conn    net.Conn
	cmd     uint16
	size    int
	span    int64
	reqs    [][]byte // per slot: header (+ payload for WRITE)
	tokens  chan int
	replies []byte
	seq     uint64
}

func newPipeliner(conn net.Conn, cmd uint16, size, depth int, span int64) *pipeliner {
	p := &pipeliner{conn: conn, cmd: cmd, size: size, span: span, tokens: make(chan int, depth)}
	for i := 0; i < depth; i++ {
		n := RequestSize
		if cmd == CmdWrite {
			n += size
		}
		p.reqs = append(p.reqs, make([]byte, n))
		p.tokens <- i
	}
	p.replies = make([]byte, SimpleReplySize+size)
	return p
}

func (p *pipeliner) run(b *testing.B, n int) {
	sendErr := make(chan error, 1)
	go func() {
		for i := 0; i < n; i++ {
			slot := <-p.tokens
			p.seq++
			// A cheap scatter over the span, aligned to the request size.
			off := (p.seq * 2654435761 % uint64(p.span/int64(p.size))) * uint64(p.size)
			r := Request{Type: p.cmd, Cookie: uint64(slot), Offset: off, Length: uint32(p.size)}
			r.Encode(p.reqs[slot])
			if _, err := p.conn.Write(p.reqs[slot]); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()
	for i := 0; i < n; i++ {
		h := p.replies[:SimpleReplySize]
		if _, err := io.ReadFull(p.conn, h); err != nil {
			b.Fatal(err)
		}
		var r SimpleReply
		if err := DecodeSimpleReply(h, &r); err != nil || r.Errno != 0 {
			b.Fatalf("reply %+v: %v", r, err)
		}
		if p.cmd == CmdRead {
			if _, err := io.ReadFull(p.conn, p.replies[SimpleReplySize:]); err != nil {
				b.Fatal(err)
			}
		}
		p.tokens <- int(r.Cookie)
	}
	if err := <-sendErr; err != nil {
		b.Fatal(err)
	}
}

// The same through the worker pool, as a backend that may block (rbd, a
// file on disk) is served.
func BenchmarkServeTransmissionWorkersRead4K(b *testing.B) {
	benchTransmissionOn(b, blocking{NewMemory(64 << 20)}, CmdRead, 4096, 16)
}
func BenchmarkServeTransmissionWorkersWrite4K(b *testing.B) {
	benchTransmissionOn(b, blocking{NewMemory(64 << 20)}, CmdWrite, 4096, 16)
}

// blocking hides Memory's NonBlocking ability.
type blocking struct{ *Memory }

func (blocking) NonBlocking() bool { return false }
