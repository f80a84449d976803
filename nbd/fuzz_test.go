package nbd

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

func encodeReq(r Request) []byte {
	b := make([]byte, RequestSize)
	r.Encode(b)
	return b
}

func FuzzDecodeRequest(f *testing.F) {
	f.Add(encodeReq(Request{Type: CmdRead, Cookie: 1, Offset: 4096, Length: 4096}))
	f.Add(encodeReq(Request{Type: CmdWrite, Flags: CmdFlagFUA, Cookie: ^uint64(0), Offset: ^uint64(0), Length: ^uint32(0)}))
	f.Add(encodeReq(Request{Type: CmdDisc}))
	f.Add(encodeReq(Request{Type: 0xffff, Flags: 0xffff}))
	f.Add([]byte{0x25, 0x60, 0x95})
	f.Add(bytes.Repeat([]byte{0xff}, RequestSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r Request
		err := DecodeRequest(b, &r)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v does not wrap ErrProtocol", err)
			}
			return
		}
		if got := encodeReq(r); !bytes.Equal(got, b[:RequestSize]) {
			t.Fatalf("decode/encode changed the request: %x -> %+v -> %x", b[:RequestSize], r, got)
		}
	})
}

func FuzzParseInfoRequest(f *testing.F) {
	f.Add(encodeInfoRequest("", nil))
	f.Add(encodeInfoRequest("disk", []uint16{InfoBlockSize, InfoName, InfoDescription}))
	f.Add([]byte{0, 0, 0, 4, 'a', 'b'})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0})
	f.Add([]byte{0, 0, 0, 0, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := parseInfoRequest(data)
		if err != nil {
			return
		}
		if got := encodeInfoRequest(r.name, r.infos); !bytes.Equal(got, data) {
			t.Fatalf("parse/encode changed the option: %x -> %+v -> %x", data, r, got)
		}
	})
}

func FuzzParseMetaContextRequest(f *testing.F) {
	f.Add(encodeMetaContextRequest(""))
	f.Add(encodeMetaContextRequest("disk", MetaBaseAllocation, "base:"))
	f.Add([]byte{0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9, 'x'})
	f.Fuzz(func(t *testing.T, data []byte) {
		name, queries, err := parseMetaContextRequest(data)
		if err != nil {
			return
		}
		if got := encodeMetaContextRequest(name, queries...); !bytes.Equal(got, data) {
			t.Fatalf("parse/encode changed the option: %x -> %q %q -> %x", data, name, queries, got)
		}
	})
}

// optionBytes encodes a client option for the fuzz seeds.
func optionBytes(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// FuzzHandshake feeds arbitrary client bytes to the server's handshake
// (and, when it reaches transmission, the IO loop): it must neither
// panic nor hang, whatever the client sends.
func FuzzHandshake(f *testing.F) {
	flags := binary.BigEndian.AppendUint32(nil, clientFlagFixedNewstyle|clientFlagNoZeroes)
	seed := func(parts ...[]byte) []byte { return bytes.Join(append([][]byte{flags}, parts...), nil) }
	f.Add(seed(optionBytes(OptList, nil), optionBytes(OptAbort, nil)))
	f.Add(seed(optionBytes(OptInfo, encodeInfoRequest("m", []uint16{InfoBlockSize})), optionBytes(OptGo, encodeInfoRequest("", nil)),
		encodeReq(Request{Type: CmdRead, Length: 512}), encodeReq(Request{Type: CmdDisc})))
	f.Add(seed(optionBytes(OptExportName, []byte("m")), encodeReq(Request{Type: CmdWrite, Length: 4}), []byte{1, 2, 3, 4}))
	f.Add(seed(optionBytes(OptStructuredReply, nil), optionBytes(99, []byte("x")), optionBytes(OptGo, []byte{0, 0, 0, 9})))
	f.Add(seed(optionBytes(OptGo, encodeInfoRequest("nope", nil))))
	f.Add(seed(optionBytes(OptStructuredReply, nil), optionBytes(OptListMetaContext, encodeMetaContextRequest("m", "base:")),
		optionBytes(OptSetMetaContext, encodeMetaContextRequest("m", MetaBaseAllocation)), optionBytes(OptGo, encodeInfoRequest("m", nil)),
		encodeReq(Request{Type: CmdWrite, Cookie: 1, Offset: 4096, Length: 4}), []byte{1, 2, 3, 4},
		encodeReq(Request{Type: CmdBlockStatus, Cookie: 2, Length: 64 << 10}), encodeReq(Request{Type: CmdRead, Cookie: 3, Length: 8}),
		encodeReq(Request{Type: CmdBlockStatus, Flags: CmdFlagReqOne, Cookie: 4, Offset: 8192, Length: 1})))
	f.Add([]byte{0, 0, 0, 0x10})
	f.Add(seed(optionBytes(OptList, nil), optionBytes(OptStartTLS, nil), []byte{0x16, 3, 1, 0, 5, 1, 0, 0, 1, 0}))
	// Each input also goes to a server requiring TLS, whose option gating
	// and TLS handshake then see it.
	tlsConf := &tls.Config{Certificates: []tls.Certificate{selfSigned(f)}}
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, tc := range []*tls.Config{nil, tlsConf} {
			s, err := NewServer([]Export{{Name: "m", Backend: NewMemory(64 << 10)}},
				ServerOptions{Logger: slog.New(slog.DiscardHandler), HandshakeTimeout: 5 * time.Second, TLS: tc, TLSRequired: tc != nil})
			if err != nil {
				t.Fatal(err)
			}
			cli, srv := net.Pipe()
			done := make(chan struct{})
			go func() {
				s.ServeConn(context.Background(), srv)
				close(done)
			}()
			go io.Copy(io.Discard, cli)
			cli.Write(in)
			cli.Close()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatalf("tls=%v: server still running 10s after the client sent %d bytes and closed", tc != nil, len(in))
			}
		}
	})
}

// FuzzTransmission feeds arbitrary request streams to the IO loop, both
// inline and through workers, with small limits so the error paths are
// reached: no panic, no hang, and the replies it writes are well formed.
func FuzzTransmission(f *testing.F) {
	join := func(p ...[]byte) []byte { return bytes.Join(p, nil) }
	f.Add(join(encodeReq(Request{Type: CmdWrite, Cookie: 1, Length: 8}), []byte("abcdefgh"), encodeReq(Request{Type: CmdRead, Cookie: 2, Length: 8})))
	f.Add(join(encodeReq(Request{Type: CmdFlush}), encodeReq(Request{Type: CmdTrim, Length: 1024}), encodeReq(Request{Type: CmdWriteZeroes, Flags: CmdFlagNoHole, Length: 512})))
	f.Add(join(encodeReq(Request{Type: CmdWrite, Length: 1 << 20}), make([]byte, 100)))
	f.Add(join(encodeReq(Request{Type: CmdRead, Offset: 1 << 40, Length: 512}), encodeReq(Request{Type: 77})))
	f.Add(join(encodeReq(Request{Type: CmdDisc}), []byte("trailing")))
	f.Add([]byte("NBDMAGIC not a request"))
	f.Fuzz(func(t *testing.T, in []byte) {
		for _, inline := range []bool{true, false} {
			var b Backend = NewMemory(64 << 10)
			if !inline {
				b = asBlocking(b)
			}
			cli, srv := net.Pipe()
			done := make(chan error, 1)
			go func() {
				done <- ServeTransmission(context.Background(), srv, b, TransmissionOptions{
					QueueDepth: 2, BlockSize: 8, MaxPayload: 4096, MaxInFlightBytes: 8192,
					Logger: slog.New(slog.DiscardHandler),
				})
			}()
			out := make(chan []byte, 1)
			go func() {
				b, _ := io.ReadAll(cli)
				out <- b
			}()
			cli.Write(in)
			// Half-close is not possible on a pipe: give the loop the
			// stream, then end it.
			cli.SetReadDeadline(time.Now().Add(10 * time.Second))
			select {
			case <-done:
			case <-time.After(200 * time.Millisecond):
				cli.Close()
				select {
				case <-done:
				case <-time.After(10 * time.Second):
					t.Fatalf("inline=%v: loop still running after the client closed", inline)
				}
			}
			cli.Close()
			checkReplies(t, in, <-out)
		}
	})
}

// checkReplies parses the server's output: every reply has the simple
// reply magic, and a successful READ's data length comes from the
// request with that cookie.
func checkReplies(t *testing.T, in, out []byte) {
	readLen := map[uint64]int{}
	seen := map[uint64]bool{}
	unique := true
	for len(in) >= RequestSize {
		var r Request
		if DecodeRequest(in, &r) != nil {
			break
		}
		in = in[RequestSize:]
		unique = unique && !seen[r.Cookie]
		seen[r.Cookie] = true
		if r.Type == CmdRead {
			readLen[r.Cookie] = int(r.Length)
		}
		if r.Type == CmdWrite {
			in = in[min(len(in), int(r.Length)):]
		}
	}
	for len(out) > 0 {
		var rep SimpleReply
		if err := DecodeSimpleReply(out, &rep); err != nil {
			t.Fatalf("malformed reply stream: %v (%x)", err, out[:min(len(out), 16)])
		}
		out = out[SimpleReplySize:]
		if !unique {
			return // cannot tell which request a reply answers
		}
		if rep.Errno == 0 {
			n := readLen[rep.Cookie]
			if n > len(out) {
				return // the stream was cut short by the close
			}
			out = out[n:]
		}
	}
}
