package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// rawHandshake drives the client side of option haggling by hand.
type rawHandshake struct {
	t testing.TB
	c net.Conn
}

func startHandshake(t *testing.T, s *Server, clientFlags uint32) (rawHandshake, <-chan error) {
	t.Helper()
	cli, srv := socketPair(t)
	t.Cleanup(func() { cli.Close() })
	done := make(chan error, 1)
	go func() { done <- s.ServeConn(context.Background(), srv) }()
	h := rawHandshake{t, cli}
	h.c.SetDeadline(time.Now().Add(10 * time.Second))
	var hello [18]byte
	if _, err := io.ReadFull(cli, hello[:]); err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint64(hello[0:]) != magicNBD || binary.BigEndian.Uint64(hello[8:]) != magicOpt {
		t.Fatalf("greeting %x", hello)
	}
	if f := binary.BigEndian.Uint16(hello[16:]); f != flagFixedNewstyle|flagNoZeroes {
		t.Fatalf("handshake flags %#x", f)
	}
	cli.Write(binary.BigEndian.AppendUint32(nil, clientFlags))
	return h, done
}

func (h rawHandshake) option(opt uint32, data []byte) {
	h.t.Helper()
	if err := writeOption(h.c, opt, data); err != nil {
		h.t.Fatal(err)
	}
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (h rawHandshake) reply() optReply {
	h.t.Helper()
	var b [optReplyHeader]byte
	if _, err := io.ReadFull(h.c, b[:]); err != nil {
		h.t.Fatalf("reading option reply: %v", err)
	}
	if m := binary.BigEndian.Uint64(b[:]); m != magicOptReply {
		h.t.Fatalf("option reply magic %#x", m)
	}
	r := optReply{opt: binary.BigEndian.Uint32(b[8:]), typ: binary.BigEndian.Uint32(b[12:])}
	r.data = make([]byte, binary.BigEndian.Uint32(b[16:]))
	if _, err := io.ReadFull(h.c, r.data); err != nil {
		h.t.Fatal(err)
	}
	return r
}

func (h rawHandshake) expectReply(opt, typ uint32) optReply {
	h.t.Helper()
	r := h.reply()
	if r.opt != opt || r.typ != typ {
		h.t.Fatalf("reply to %s: %s (%q), want %s to %s", OptionName(r.opt), ReplyTypeName(r.typ), r.data, ReplyTypeName(typ), OptionName(opt))
	}
	return r
}

func (h rawHandshake) expectClosed() {
	h.t.Helper()
	if n, err := h.c.Read(make([]byte, 1)); err != io.EOF {
		h.t.Fatalf("expected the server to close the connection, got %d bytes, %v", n, err)
	}
}

func testServer(t *testing.T) (*Server, *Memory) {
	t.Helper()
	log, _ := testLogger(t)
	m := NewMemory(1 << 20)
	s, err := NewServer([]Export{
		{Name: "disk", Description: "a test disk", Backend: m, Options: TransmissionOptions{BlockSize: 512}},
		{Name: "ro", Backend: NewMemory(2 << 20), Options: TransmissionOptions{ReadOnly: true}, MultiConn: true},
	}, ServerOptions{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	return s, m
}

func TestHandshakeList(t *testing.T) {
	s, _ := testServer(t)
	h, done := startHandshake(t, s, clientFlagFixedNewstyle|clientFlagNoZeroes)
	h.option(OptList, nil)
	var names []string
	for {
		r := h.reply()
		if r.typ == RepAck {
			break
		}
		if r.typ != RepServer {
			t.Fatalf("reply %s", ReplyTypeName(r.typ))
		}
		n := binary.BigEndian.Uint32(r.data)
		names = append(names, string(r.data[4:4+n])+"|"+string(r.data[4+n:]))
	}
	if want := "[disk|a test disk ro|]"; fmtList(names) != want {
		t.Fatalf("LIST = %v, want %s", names, want)
	}
	h.option(OptList, []byte{1})
	h.expectReply(OptList, RepErrInvalid)
	h.option(OptAbort, nil)
	h.expectReply(OptAbort, RepAck)
	h.expectClosed()
	if err := <-done; err != nil {
		t.Fatalf("ServeConn after ABORT = %v", err)
	}
}

func fmtList(s []string) string {
	var b bytes.Buffer
	b.WriteByte('[')
	for i, x := range s {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(x)
	}
	b.WriteByte(']')
	return b.String()
}

func TestHandshakeUnsupportedOptionsThenGo(t *testing.T) {
	s, m := testServer(t)
	h, done := startHandshake(t, s, clientFlagFixedNewstyle|clientFlagNoZeroes)
	for _, opt := range []uint32{OptStartTLS, OptExtendedHeaders, OptPeekExport, 99, 0xffffffff} {
		h.option(opt, []byte("some data"))
		r := h.expectReply(opt, RepErrUnsup)
		if len(r.data) == 0 {
			t.Errorf("ERR_UNSUP for %d carries no message", opt)
		}
	}
	// Malformed INFO, unknown export: errors, and haggling goes on.
	h.option(OptInfo, []byte{0, 0, 0, 200, 1})
	h.expectReply(OptInfo, RepErrInvalid)
	h.option(OptGo, encodeInfoRequest("nope", nil))
	h.expectReply(OptGo, RepErrUnknown)
	// An option too long to hold is dropped and refused.
	h.option(OptInfo, make([]byte, maxOptionLen+1))
	h.expectReply(OptInfo, RepErrTooBig)

	// INFO answers without leaving haggling.
	h.option(OptInfo, encodeInfoRequest("disk", []uint16{InfoName, InfoDescription, 77}))
	got := map[uint16][]byte{}
	for {
		r := h.reply()
		if r.typ == RepAck {
			break
		}
		if r.typ != RepInfo {
			t.Fatalf("INFO reply %s", ReplyTypeName(r.typ))
		}
		got[binary.BigEndian.Uint16(r.data)] = r.data[2:]
	}
	exp := got[InfoExport]
	if len(exp) != 10 || binary.BigEndian.Uint64(exp) != 1<<20 {
		t.Fatalf("INFO_EXPORT %x", exp)
	}
	wantFlags := FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim | FlagSendWriteZeroes
	if f := binary.BigEndian.Uint16(exp[8:]); f != wantFlags {
		t.Fatalf("flags %#x, want %#x", f, wantFlags)
	}
	bs := got[InfoBlockSize]
	if len(bs) != 12 || binary.BigEndian.Uint32(bs) != 512 || binary.BigEndian.Uint32(bs[4:]) != 4096 || binary.BigEndian.Uint32(bs[8:]) != DefaultMaxPayload {
		t.Fatalf("INFO_BLOCK_SIZE %x", bs)
	}
	if string(got[InfoName]) != "disk" || string(got[InfoDescription]) != "a test disk" {
		t.Fatalf("name %q description %q", got[InfoName], got[InfoDescription])
	}

	// GO enters transmission.
	h.option(OptGo, encodeInfoRequest("disk", []uint16{InfoBlockSize}))
	for h.reply().typ != RepAck {
	}
	m.WriteAt([]byte("hello"), 512)
	rc := rawConn{t, h.c}
	e, data := rc.roundTrip(Request{Type: CmdRead, Cookie: 1, Offset: 512, Length: 512}, nil)
	if e != 0 || string(data[:5]) != "hello" {
		t.Fatalf("read after GO: errno %d data %q", e, data[:5])
	}
	rc.send(Request{Type: CmdDisc}, nil)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestHandshakeExportName(t *testing.T) {
	for _, noZeroes := range []bool{false, true} {
		s, _ := testServer(t)
		flags := clientFlagFixedNewstyle
		if noZeroes {
			flags |= clientFlagNoZeroes
		}
		h, done := startHandshake(t, s, flags)
		h.option(OptExportName, []byte("ro"))
		n := 10
		if !noZeroes {
			n += 124
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(h.c, b); err != nil {
			t.Fatal(err)
		}
		if binary.BigEndian.Uint64(b) != 2<<20 {
			t.Fatalf("size %d", binary.BigEndian.Uint64(b))
		}
		if f := binary.BigEndian.Uint16(b[8:]); f != FlagHasFlags|FlagSendFlush|FlagSendFUA|FlagReadOnly|FlagCanMultiConn {
			t.Fatalf("flags %#x", f)
		}
		if !bytes.Equal(b[10:], make([]byte, n-10)) {
			t.Fatal("padding is not zeroes")
		}
		rc := rawConn{t, h.c}
		if e, _ := rc.roundTrip(Request{Type: CmdWrite, Cookie: 1, Length: 512}, make([]byte, 512)); e != EPERM {
			t.Fatalf("write to read-only export: errno %d, want EPERM", e)
		}
		rc.send(Request{Type: CmdDisc}, nil)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

func TestHandshakeDefaultExport(t *testing.T) {
	s, _ := testServer(t)
	h, done := startHandshake(t, s, clientFlagFixedNewstyle|clientFlagNoZeroes)
	h.option(OptGo, encodeInfoRequest("", []uint16{InfoName}))
	var name string
	for {
		r := h.reply()
		if r.typ == RepAck {
			break
		}
		if binary.BigEndian.Uint16(r.data) == InfoName {
			name = string(r.data[2:])
		}
	}
	if name != "disk" {
		t.Fatalf("default export is %q, want the first one, disk", name)
	}
	rawConn{t, h.c}.send(Request{Type: CmdDisc}, nil)
	<-done
}

func TestHandshakeViolationsClose(t *testing.T) {
	tests := []struct {
		name  string
		flags uint32
		send  func(h rawHandshake)
	}{
		{"unknown client flag", 1 << 5, func(rawHandshake) {}},
		{"bad option magic", clientFlagFixedNewstyle, func(h rawHandshake) {
			h.c.Write(make([]byte, optHeaderSize))
		}},
		{"unknown export by EXPORT_NAME", clientFlagFixedNewstyle, func(h rawHandshake) {
			h.option(OptExportName, []byte("nope"))
		}},
		{"truncated option", clientFlagFixedNewstyle, func(h rawHandshake) {
			b := binary.BigEndian.AppendUint64(nil, magicOpt)
			b = binary.BigEndian.AppendUint32(b, OptGo)
			b = binary.BigEndian.AppendUint32(b, 100)
			h.c.Write(append(b, 1, 2, 3))
			h.c.(*net.UnixConn).CloseWrite()
		}},
		{"huge option", clientFlagFixedNewstyle, func(h rawHandshake) {
			b := binary.BigEndian.AppendUint64(nil, magicOpt)
			b = binary.BigEndian.AppendUint32(b, OptGo)
			b = binary.BigEndian.AppendUint32(b, maxOptionSkip+1)
			h.c.Write(b)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := testServer(t)
			h, done := startHandshake(t, s, tt.flags)
			tt.send(h)
			h.expectClosed()
			if err := <-done; err == nil {
				t.Fatal("ServeConn returned nil for a broken handshake")
			}
		})
	}
}

func TestHandshakeTimeout(t *testing.T) {
	log, logs := testLogger(t)
	s, err := NewServer([]Export{{Name: "x", Backend: NewMemory(4096)}}, ServerOptions{HandshakeTimeout: 50 * time.Millisecond, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	cli, srv := socketPair(t)
	defer cli.Close()
	err = s.ServeConn(context.Background(), srv)
	if !isTimeout(err) {
		t.Fatalf("ServeConn = %v, want a timeout", err)
	}
	if !bytes.Contains([]byte(logs.String()), []byte("handshake failed")) {
		t.Fatalf("no log of the failed handshake:\n%s", logs)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestNewServerErrors(t *testing.T) {
	m := NewMemory(4096)
	for name, exports := range map[string][]Export{
		"none":       nil,
		"no backend": {{Name: "a"}},
		"duplicate":  {{Name: "a", Backend: m}, {Name: "a", Backend: m}},
		"long name":  {{Name: string(make([]byte, 5000)), Backend: m}},
		"bad block":  {{Name: "a", Backend: m, Options: TransmissionOptions{BlockSize: 1000}}},
	} {
		if _, err := NewServer(exports, ServerOptions{}); err == nil {
			t.Errorf("%s: NewServer accepted %+v", name, exports)
		}
	}
}
