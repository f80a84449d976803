package nbd

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"
)

func TestRequestCodec(t *testing.T) {
	tests := []struct {
		name string
		req  Request
		wire string // hex
	}{
		{"read", Request{Type: CmdRead, Cookie: 1, Offset: 4096, Length: 512},
			"25609513" + "0000" + "0000" + "0000000000000001" + "0000000000001000" + "00000200"},
		{"write fua", Request{Flags: CmdFlagFUA, Type: CmdWrite, Cookie: 0xdeadbeefcafef00d, Offset: 1 << 40, Length: 4096},
			"25609513" + "0001" + "0001" + "deadbeefcafef00d" + "0000010000000000" + "00001000"},
		{"disc", Request{Type: CmdDisc},
			"25609513" + "0000" + "0002" + "0000000000000000" + "0000000000000000" + "00000000"},
		{"flush", Request{Type: CmdFlush, Cookie: 7},
			"25609513" + "0000" + "0003" + "0000000000000007" + "0000000000000000" + "00000000"},
		{"trim", Request{Type: CmdTrim, Cookie: 8, Offset: 512, Length: 1 << 20},
			"25609513" + "0000" + "0004" + "0000000000000008" + "0000000000000200" + "00100000"},
		{"write zeroes no hole", Request{Flags: CmdFlagNoHole | CmdFlagFUA, Type: CmdWriteZeroes, Cookie: 9, Length: 0xffffffff},
			"25609513" + "0003" + "0006" + "0000000000000009" + "0000000000000000" + "ffffffff"},
		{"max offset", Request{Type: CmdRead, Offset: ^uint64(0)},
			"25609513" + "0000" + "0000" + "0000000000000000" + "ffffffffffffffff" + "00000000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, _ := hex.DecodeString(tt.wire)
			var got [RequestSize]byte
			tt.req.Encode(got[:])
			if !bytes.Equal(got[:], want) {
				t.Fatalf("Encode = %x, want %x", got, want)
			}
			var back Request
			if err := DecodeRequest(want, &back); err != nil {
				t.Fatal(err)
			}
			if back != tt.req {
				t.Fatalf("DecodeRequest = %+v, want %+v", back, tt.req)
			}
		})
	}
}

func TestDecodeRequestErrors(t *testing.T) {
	good := make([]byte, RequestSize)
	(&Request{Type: CmdRead, Length: 1}).Encode(good)
	bad := bytes.Clone(good)
	bad[0] = 0x26
	reply := make([]byte, RequestSize)
	copy(reply, []byte{0x67, 0x44, 0x66, 0x98})
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"short", good[:RequestSize-1]},
		{"bad magic", bad},
		{"reply magic", reply},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r Request
			err := DecodeRequest(tt.b, &r)
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("DecodeRequest error = %v, want one wrapping ErrProtocol", err)
			}
		})
	}
}

func TestSimpleReplyCodec(t *testing.T) {
	tests := []struct {
		rep  SimpleReply
		wire string
	}{
		{SimpleReply{Cookie: 1}, "67446698" + "00000000" + "0000000000000001"},
		{SimpleReply{Errno: EINVAL, Cookie: 0xffffffffffffffff}, "67446698" + "00000016" + "ffffffffffffffff"},
		{SimpleReply{Errno: ESHUTDOWN, Cookie: 2}, "67446698" + "0000006c" + "0000000000000002"},
	}
	for _, tt := range tests {
		want, _ := hex.DecodeString(tt.wire)
		var got [SimpleReplySize]byte
		tt.rep.Encode(got[:])
		if !bytes.Equal(got[:], want) {
			t.Errorf("Encode(%+v) = %x, want %x", tt.rep, got, want)
		}
		var back SimpleReply
		if err := DecodeSimpleReply(want, &back); err != nil || back != tt.rep {
			t.Errorf("DecodeSimpleReply = %+v, %v; want %+v", back, err, tt.rep)
		}
	}
	structured, _ := hex.DecodeString("668e33ef" + "00000000" + "0000000000000001")
	var r SimpleReply
	if err := DecodeSimpleReply(structured, &r); !errors.Is(err, ErrProtocol) {
		t.Errorf("structured reply magic: err = %v, want ErrProtocol", err)
	}
	if err := DecodeSimpleReply(structured[:15], &r); !errors.Is(err, ErrProtocol) {
		t.Errorf("short reply: err = %v, want ErrProtocol", err)
	}
}

func TestCodecDoesNotAllocate(t *testing.T) {
	var b [RequestSize]byte
	req := Request{Type: CmdWrite, Cookie: 3, Offset: 4096, Length: 4096}
	var out Request
	var rb [SimpleReplySize]byte
	var rep SimpleReply
	allocs := testing.AllocsPerRun(1000, func() {
		req.Encode(b[:])
		_ = DecodeRequest(b[:], &out)
		(&SimpleReply{Cookie: 3}).Encode(rb[:])
		_ = DecodeSimpleReply(rb[:], &rep)
	})
	if allocs != 0 {
		t.Fatalf("codec allocates %.1f times per round trip, want 0", allocs)
	}
}

func TestInfoRequestCodec(t *testing.T) {
	tests := []struct {
		name  string
		data  []byte
		want  infoRequest
		error bool
	}{
		{"default export no infos", encodeInfoRequest("", nil), infoRequest{name: "", infos: []uint16{}}, false},
		{"named with infos", encodeInfoRequest("disk", []uint16{InfoBlockSize, InfoName}), infoRequest{name: "disk", infos: []uint16{InfoBlockSize, InfoName}}, false},
		{"too short", []byte{0, 0, 0, 0, 0}, infoRequest{}, true},
		{"name longer than data", append([]byte{0, 0, 0, 9}, "abc\x00\x00"...), infoRequest{}, true},
		{"count mismatch", append(encodeInfoRequest("a", nil)[:5], 0, 2, 0, 3), infoRequest{}, true},
		{"trailing garbage", append(encodeInfoRequest("a", []uint16{3}), 0), infoRequest{}, true},
		{"huge name length", []byte{0xff, 0xff, 0xff, 0xff, 0, 0}, infoRequest{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseInfoRequest(tt.data)
			if tt.error {
				if err == nil {
					t.Fatalf("parseInfoRequest(%x) = %+v, want an error", tt.data, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.name != tt.want.name || len(got.infos) != len(tt.want.infos) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			for i := range got.infos {
				if got.infos[i] != tt.want.infos[i] {
					t.Fatalf("got %+v, want %+v", got, tt.want)
				}
			}
		})
	}
}
