package nbd

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// chunk is one structured reply chunk as read off the wire.
type chunk struct {
	flags, typ uint16
	cookie     uint64
	payload    []byte
}

// anyReply reads one reply, simple or structured. A simple reply's
// data (READ) is read when dataLen says so.
func (rc rawConn) anyReply(dataLen int) (simple *SimpleReply, c *chunk, data []byte) {
	rc.t.Helper()
	rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var m [4]byte
	if _, err := io.ReadFull(rc.c, m[:]); err != nil {
		rc.t.Fatalf("reading reply magic: %v", err)
	}
	switch binary.BigEndian.Uint32(m[:]) {
	case MagicSimpleReply:
		var b [SimpleReplySize - 4]byte
		if _, err := io.ReadFull(rc.c, b[:]); err != nil {
			rc.t.Fatal(err)
		}
		r := &SimpleReply{Errno: binary.BigEndian.Uint32(b[0:]), Cookie: binary.BigEndian.Uint64(b[4:])}
		if r.Errno == 0 && dataLen > 0 {
			data = make([]byte, dataLen)
			if _, err := io.ReadFull(rc.c, data); err != nil {
				rc.t.Fatal(err)
			}
		}
		return r, nil, data
	case MagicStructuredReply:
		var b [StructuredReplyHeader - 4]byte
		if _, err := io.ReadFull(rc.c, b[:]); err != nil {
			rc.t.Fatal(err)
		}
		c := &chunk{flags: binary.BigEndian.Uint16(b[0:]), typ: binary.BigEndian.Uint16(b[2:]), cookie: binary.BigEndian.Uint64(b[4:])}
		c.payload = make([]byte, binary.BigEndian.Uint32(b[12:]))
		if _, err := io.ReadFull(rc.c, c.payload); err != nil {
			rc.t.Fatal(err)
		}
		return nil, c, nil
	default:
		rc.t.Fatalf("reply magic %#x", m)
	}
	return nil, nil, nil
}

// chunkReply sends h and expects a single structured chunk with the
// DONE flag in reply.
func (rc rawConn) chunkReply(h Request) *chunk {
	rc.t.Helper()
	rc.send(h, nil)
	simple, c, _ := rc.anyReply(0)
	if simple != nil {
		rc.t.Fatalf("%s: simple reply (errno %d), want a structured chunk", CommandName(h.Type), simple.Errno)
	}
	if c.cookie != h.Cookie || c.flags != ReplyFlagDone {
		rc.t.Fatalf("%s: chunk cookie %d flags %#x, want cookie %d and DONE", CommandName(h.Type), c.cookie, c.flags, h.Cookie)
	}
	return c
}

// descriptor is one base:allocation block descriptor.
type descriptor struct {
	length, flags uint32
}

func (d descriptor) String() string { return fmt.Sprintf("%d/%d", d.length, d.flags) }

// blockStatus asks for the status of [off, off+length) and decodes it.
func (rc rawConn) blockStatus(off uint64, length uint32, flags uint16) []descriptor {
	rc.t.Helper()
	c := rc.chunkReply(Request{Type: CmdBlockStatus, Flags: flags, Cookie: 7, Offset: off, Length: length})
	if c.typ != ReplyTypeBlockStatus {
		rc.t.Fatalf("BLOCK_STATUS chunk type %d (payload %x), want %d", c.typ, c.payload, ReplyTypeBlockStatus)
	}
	if len(c.payload) < 12 || (len(c.payload)-4)%8 != 0 {
		rc.t.Fatalf("BLOCK_STATUS payload of %d bytes", len(c.payload))
	}
	if id := binary.BigEndian.Uint32(c.payload); id != metaBaseAllocationID {
		rc.t.Fatalf("context id %d, want %d (the one SET_META_CONTEXT gave)", id, metaBaseAllocationID)
	}
	var ds []descriptor
	for p := c.payload[4:]; len(p) > 0; p = p[8:] {
		ds = append(ds, descriptor{binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])})
	}
	return ds
}

// goStructured negotiates structured replies (and base:allocation for
// name when meta) and enters transmission on name.
func goStructured(t *testing.T, s *Server, name string, meta bool) (rawConn, <-chan error) {
	t.Helper()
	h, done := startHandshake(t, s, clientFlagFixedNewstyle|clientFlagNoZeroes)
	h.option(OptStructuredReply, nil)
	h.expectReply(OptStructuredReply, RepAck)
	if meta {
		h.option(OptSetMetaContext, encodeMetaContextRequest(name, MetaBaseAllocation))
		r := h.expectReply(OptSetMetaContext, RepMetaContext)
		if id := binary.BigEndian.Uint32(r.data); id != metaBaseAllocationID || string(r.data[4:]) != MetaBaseAllocation {
			t.Fatalf("META_CONTEXT reply %q", r.data)
		}
		h.expectReply(OptSetMetaContext, RepAck)
	}
	h.option(OptGo, encodeInfoRequest(name, nil))
	for h.reply().typ != RepAck {
	}
	return rawConn{t, h.c}, done
}

func TestMetaContextNegotiation(t *testing.T) {
	s, _ := testServer(t)
	h, done := startHandshake(t, s, clientFlagFixedNewstyle|clientFlagNoZeroes)
	// SET needs structured replies first; LIST does not.
	h.option(OptSetMetaContext, encodeMetaContextRequest("disk", MetaBaseAllocation))
	h.expectReply(OptSetMetaContext, RepErrInvalid)
	h.option(OptListMetaContext, encodeMetaContextRequest("disk"))
	if r := h.expectReply(OptListMetaContext, RepMetaContext); string(r.data[4:]) != MetaBaseAllocation {
		t.Fatalf("LIST with no query: %q", r.data)
	}
	h.expectReply(OptListMetaContext, RepAck)
	h.option(OptListMetaContext, encodeMetaContextRequest("disk", "base:"))
	h.expectReply(OptListMetaContext, RepMetaContext)
	h.expectReply(OptListMetaContext, RepAck)
	h.option(OptListMetaContext, encodeMetaContextRequest("disk", "qemu:dirty-bitmap:x"))
	h.expectReply(OptListMetaContext, RepAck)
	// Malformed: the query count cut short, and one the data cannot hold.
	h.option(OptListMetaContext, encodeMetaContextRequest("disk")[:10])
	h.expectReply(OptListMetaContext, RepErrInvalid)
	bad := encodeMetaContextRequest("disk")
	binary.BigEndian.PutUint32(bad[8:], 1<<30)
	h.option(OptListMetaContext, bad)
	h.expectReply(OptListMetaContext, RepErrInvalid)

	h.option(OptStructuredReply, []byte{1})
	h.expectReply(OptStructuredReply, RepErrInvalid)
	h.option(OptStructuredReply, nil)
	h.expectReply(OptStructuredReply, RepAck)
	h.option(OptSetMetaContext, encodeMetaContextRequest("nope", MetaBaseAllocation))
	h.expectReply(OptSetMetaContext, RepErrUnknown)
	// SET with a namespace only selects nothing.
	h.option(OptSetMetaContext, encodeMetaContextRequest("disk", "base:"))
	h.expectReply(OptSetMetaContext, RepAck)
	h.option(OptSetMetaContext, encodeMetaContextRequest("disk", "other:thing", MetaBaseAllocation))
	h.expectReply(OptSetMetaContext, RepMetaContext)
	h.expectReply(OptSetMetaContext, RepAck)
	// Contexts set for "disk" do not carry over to "ro".
	h.option(OptGo, encodeInfoRequest("ro", nil))
	for h.reply().typ != RepAck {
	}
	rc := rawConn{t, h.c}
	if c := rc.chunkReply(Request{Type: CmdBlockStatus, Cookie: 3, Length: 4096}); c.typ != ReplyTypeError || binary.BigEndian.Uint32(c.payload) != EINVAL {
		t.Fatalf("BLOCK_STATUS on an export without a meta context: chunk type %d payload %x, want an EINVAL error", c.typ, c.payload)
	}
	rc.send(Request{Type: CmdDisc}, nil)
	if err := waitErr(t, done); err != nil {
		t.Fatal(err)
	}
}

func TestStructuredReplies(t *testing.T) {
	s, m := testServer(t)
	m.WriteAt([]byte("hello"), 512)
	rc, done := goStructured(t, s, "disk", true)
	// READ: one OFFSET_DATA chunk carrying offset and data.
	c := rc.chunkReply(Request{Type: CmdRead, Cookie: 1, Offset: 512, Length: 512})
	if c.typ != ReplyTypeOffsetData || len(c.payload) != 8+512 || binary.BigEndian.Uint64(c.payload) != 512 || string(c.payload[8:13]) != "hello" {
		t.Fatalf("READ chunk type %d, %d bytes, %q", c.typ, len(c.payload), c.payload[:min(13, len(c.payload))])
	}
	// A failing READ: an ERROR chunk, never a simple reply.
	c = rc.chunkReply(Request{Type: CmdRead, Cookie: 2, Offset: 1 << 20, Length: 512})
	if c.typ != ReplyTypeError || len(c.payload) != 6 || binary.BigEndian.Uint32(c.payload) != EINVAL {
		t.Fatalf("READ past the end: chunk type %d payload %x, want an EINVAL error chunk", c.typ, c.payload)
	}
	c = rc.chunkReply(Request{Type: CmdRead, Cookie: 3, Offset: 0, Length: 0})
	if c.typ != ReplyTypeNone || len(c.payload) != 0 {
		t.Fatalf("empty READ: chunk type %d payload %x, want NONE", c.typ, c.payload)
	}
	// WRITE and FLUSH keep simple replies (no payload).
	rc.send(Request{Type: CmdWrite, Cookie: 4, Offset: 4096, Length: 512}, make([]byte, 512))
	if r, _, _ := rc.anyReply(0); r == nil || r.Errno != 0 || r.Cookie != 4 {
		t.Fatalf("WRITE reply %+v, want a simple success", r)
	}
	// BLOCK_STATUS failures: error chunks.
	for _, h := range []Request{
		{Type: CmdBlockStatus, Cookie: 5, Offset: 1 << 20, Length: 512},               // past the end
		{Type: CmdBlockStatus, Cookie: 6, Offset: 0, Length: 0},                       // empty
		{Type: CmdBlockStatus, Flags: CmdFlagFUA, Cookie: 7, Offset: 0, Length: 4096}, // bad flag
	} {
		c = rc.chunkReply(h)
		if c.typ != ReplyTypeError || binary.BigEndian.Uint32(c.payload) != EINVAL {
			t.Fatalf("BLOCK_STATUS %+v: chunk type %d payload %x, want an EINVAL error chunk", h, c.typ, c.payload)
		}
	}
	rc.send(Request{Type: CmdDisc}, nil)
	if err := waitErr(t, done); err != nil {
		t.Fatal(err)
	}
}

// extentServer serves b as export "x" with a 512-byte block size.
func extentServer(t *testing.T, b Backend) *Server {
	t.Helper()
	log, _ := testLogger(t)
	s, err := NewServer([]Export{{Name: "x", Backend: b, Options: TransmissionOptions{BlockSize: 512}}}, ServerOptions{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const hole = StateHole | StateZero

func TestBlockStatusMemory(t *testing.T) {
	m := NewMemory(1 << 20)
	rc, done := goStructured(t, extentServer(t, m), "x", true)
	if got := rc.blockStatus(0, 1<<20, 0); !slices.Equal(got, []descriptor{{1 << 20, hole}}) {
		t.Fatalf("empty export: %v, want one hole", got)
	}
	// Written pages become data; a read does not allocate.
	m.WriteAt(make([]byte, 100), 8192+10)
	m.WriteAt(make([]byte, 8192), 64<<10)
	m.ReadAt(make([]byte, 4096), 128<<10)
	want := []descriptor{{8192, hole}, {4096, 0}, {64<<10 - 12288, hole}, {8192, 0}, {1<<20 - 72<<10, hole}}
	if got := rc.blockStatus(0, 1<<20, 0); !slices.Equal(got, want) {
		t.Fatalf("after writes: %v, want %v", got, want)
	}
	// A sub-range, and REQ_ONE: one descriptor, within the request.
	if got := rc.blockStatus(10240, 1024, 0); !slices.Equal(got, []descriptor{{1024, 0}}) {
		t.Fatalf("inside a page: %v", got)
	}
	if got := rc.blockStatus(0, 1<<20, CmdFlagReqOne); !slices.Equal(got, []descriptor{{8192, hole}}) {
		t.Fatalf("REQ_ONE: %v", got)
	}
	// A discard gives whole pages back: they are holes again.
	rc.send(Request{Type: CmdTrim, Cookie: 9, Offset: 64 << 10, Length: 4096}, nil)
	if r, _, _ := rc.anyReply(0); r == nil || r.Errno != 0 {
		t.Fatalf("TRIM: %+v", r)
	}
	want = []descriptor{{8192, hole}, {4096, 0}, {64<<10 - 12288 + 4096, hole}, {4096, 0}, {1<<20 - 72<<10, hole}}
	if got := rc.blockStatus(0, 1<<20, 0); !slices.Equal(got, want) {
		t.Fatalf("after TRIM: %v, want %v", got, want)
	}
	rc.send(Request{Type: CmdDisc}, nil)
	if err := waitErr(t, done); err != nil {
		t.Fatal(err)
	}
}

// TestBlockStatusManyExtents: more allocated extents than one reply
// holds; the reply stops after the last one it has, and the client's
// next request from there gets the rest.
func TestBlockStatusManyExtents(t *testing.T) {
	const n = maxStatusExtents + 100
	m := NewMemory(2 * n * memPage)
	for i := range n {
		m.WriteAt([]byte{1}, int64(2*i*memPage))
	}
	rc, done := goStructured(t, extentServer(t, m), "x", true)
	var got []descriptor
	for off := uint64(0); off < 2*n*memPage; {
		ds := rc.blockStatus(off, uint32(2*n*memPage-off), 0)
		for _, d := range ds {
			off += uint64(d.length)
		}
		got = append(got, ds...)
		if len(got) > 4*n {
			t.Fatal("no progress")
		}
	}
	if len(got) != 2*n {
		t.Fatalf("%d descriptors, want %d", len(got), 2*n)
	}
	for i, d := range got {
		if want := (descriptor{memPage, uint32(i%2) * hole}); d != want {
			t.Fatalf("descriptor %d: %v, want %v", i, d, want)
		}
	}
	rc.send(Request{Type: CmdDisc}, nil)
	if err := waitErr(t, done); err != nil {
		t.Fatal(err)
	}
}

func TestBlockStatusFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(4 << 20)
	f.WriteAt(make([]byte, 64<<10), 1<<20)
	f.Close()
	b, err := OpenFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ext, err := b.Extents(t.Context(), 0, 4<<20, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(ext) == 1 && ext[0].Length == 4<<20 {
		t.Skipf("the file system of %s reports no holes (SEEK_DATA unsupported)", path)
	}
	rc, done := goStructured(t, extentServer(t, b), "x", true)
	want := []descriptor{{1 << 20, hole}, {64 << 10, 0}, {3<<20 - 64<<10, hole}}
	if got := rc.blockStatus(0, 4<<20, 0); !slices.Equal(got, want) {
		t.Fatalf("file with 64 KiB at 1 MiB: %v, want %v", got, want)
	}
	rc.send(Request{Type: CmdDisc}, nil)
	if err := waitErr(t, done); err != nil {
		t.Fatal(err)
	}
}

// A backend without Extenter is reported allocated throughout, and
// the loop serves BLOCK_STATUS on a worker (blocking backend) too.
func TestBlockStatusNoExtenter(t *testing.T) {
	// Without structured replies: simple replies only, and BLOCK_STATUS
	// is refused.
	s := extentServer(t, NewMemory(1<<20))
	h, done0 := startHandshake(t, s, clientFlagFixedNewstyle|clientFlagNoZeroes)
	h.option(OptGo, encodeInfoRequest("x", nil))
	for h.reply().typ != RepAck {
	}
	rc0 := rawConn{t, h.c}
	if e, _ := rc0.roundTrip(Request{Type: CmdRead, Cookie: 1, Length: 512}, nil); e != 0 {
		t.Fatalf("simple READ: errno %d", e)
	}
	if e, _ := rc0.roundTrip(Request{Type: CmdBlockStatus, Cookie: 2, Length: 512}, nil); e != EINVAL {
		t.Fatalf("BLOCK_STATUS without negotiation: errno %d, want EINVAL", e)
	}
	rc0.send(Request{Type: CmdDisc}, nil)
	if err := waitErr(t, done0); err != nil {
		t.Fatal(err)
	}

	rc, done := goStructured(t, extentServer(t, asBlocking(plainBackend{NewMemory(1 << 20)})), "x", true)
	if got := rc.blockStatus(4096, 8192, 0); !slices.Equal(got, []descriptor{{8192, 0}}) {
		t.Fatalf("%v, want all data", got)
	}
	rc.send(Request{Type: CmdDisc}, nil)
	if err := waitErr(t, done); err != nil {
		t.Fatal(err)
	}
}

// Zeroing keeps Memory's allocation map truthful: WRITE_ZEROES that
// may unmap leaves holes (and a never-written page partly zeroed stays
// a hole), NO_HOLE allocates.
func TestBlockStatusMemoryZeroes(t *testing.T) {
	m := NewMemory(64 << 10)
	m.WriteAt(make([]byte, 16<<10), 0)
	if err := m.WriteZeroes(4096, 8192, true); err != nil {
		t.Fatal(err)
	}
	m.WriteZeroes(32<<10+512, 1024, true)
	m.WriteZeroes(48<<10, 4096, false)
	got, err := m.Extents(t.Context(), 0, 64<<10, 10)
	want := []Extent{{0, 4096}, {12288, 4096}, {48 << 10, 4096}}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("Extents: %v, %v; want %v", got, err, want)
	}
	if got, _ := m.Extents(t.Context(), 0, 64<<10, 2); len(got) != 2 {
		t.Fatalf("limit 2: %v", got)
	}
}
