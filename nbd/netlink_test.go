package nbd

import (
	"encoding/binary"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// attrMap parses attributes into type -> attribute, failing on duplicates.
func attrMap(t *testing.T, b []byte) map[uint16]syscall.NetlinkRouteAttr {
	t.Helper()
	as, err := nl.ParseRouteAttr(b)
	if err != nil {
		t.Fatalf("parse attributes: %v", err)
	}
	m := map[uint16]syscall.NetlinkRouteAttr{}
	for _, a := range as {
		typ := attrType(a)
		if _, dup := m[typ]; dup {
			t.Fatalf("attribute %d appears twice", typ)
		}
		m[typ] = a
	}
	return m
}

func u64(t *testing.T, a syscall.NetlinkRouteAttr) uint64 {
	t.Helper()
	if len(a.Value) != 8 {
		t.Fatalf("attribute %d: %d bytes, want 8 (u64)", attrType(a), len(a.Value))
	}
	return binary.NativeEndian.Uint64(a.Value)
}

func TestConnectMessageEncoding(t *testing.T) {
	g := &genl{family: 0x1234}
	cfg := connectConfig{
		Index:           3,
		Size:            1 << 30,
		BlockSize:       4096,
		Timeout:         1500 * time.Millisecond, // rounds up to 2 s
		DeadConnTimeout: 30 * time.Second,
		ServerFlags:     uint64(FlagHasFlags | FlagSendFlush | FlagCanMultiConn),
		BackendID:       "rbd-nbd-graph:rbd/img",
		SocketFDs:       []int{7, 9},
	}
	raw := g.newRequest(cmdConnect, 0, cfg.attrs()).Serialize()

	if len(raw) < unix.SizeofNlMsghdr+nl.SizeofGenlmsg {
		t.Fatalf("message of %d bytes", len(raw))
	}
	if got := binary.NativeEndian.Uint32(raw[0:4]); int(got) != len(raw) {
		t.Errorf("nlmsg_len %d, message is %d bytes", got, len(raw))
	}
	if got := binary.NativeEndian.Uint16(raw[4:6]); got != 0x1234 {
		t.Errorf("nlmsg_type %#x, want the family id 0x1234", got)
	}
	genlHdr := raw[unix.SizeofNlMsghdr:]
	if genlHdr[0] != cmdConnect || genlHdr[1] != genlVersion {
		t.Errorf("genl header cmd=%d version=%d, want %d %d", genlHdr[0], genlHdr[1], cmdConnect, genlVersion)
	}
	m := attrMap(t, genlHdr[nl.SizeofGenlmsg:])

	if v := m[attrIndex].Value; len(v) != 4 || binary.NativeEndian.Uint32(v) != 3 {
		t.Errorf("INDEX = %v, want u32 3", v)
	}
	for _, c := range []struct {
		typ  uint16
		name string
		want uint64
	}{
		{attrSizeBytes, "SIZE_BYTES", 1 << 30},
		{attrBlockSizeBytes, "BLOCK_SIZE_BYTES", 4096},
		{attrTimeout, "TIMEOUT", 2},
		{attrDeadConnTimeout, "DEAD_CONN_TIMEOUT", 30},
		{attrServerFlags, "SERVER_FLAGS", cfg.ServerFlags},
	} {
		a, ok := m[c.typ]
		if !ok {
			t.Errorf("%s missing", c.name)
			continue
		}
		if got := u64(t, a); got != c.want {
			t.Errorf("%s = %d, want %d", c.name, got, c.want)
		}
	}
	if _, ok := m[attrClientFlags]; ok {
		t.Errorf("CLIENT_FLAGS sent although zero")
	}
	if got := string(m[attrBackendIdentifier].Value); got != "rbd-nbd-graph:rbd/img\x00" {
		t.Errorf("BACKEND_IDENTIFIER = %q, want the NUL-terminated id", got)
	}

	socks, ok := m[attrSockets]
	if !ok {
		t.Fatal("SOCKETS missing")
	}
	if socks.Attr.Type&unix.NLA_F_NESTED == 0 {
		t.Errorf("SOCKETS is not flagged nested")
	}
	items, err := nl.ParseRouteAttr(socks.Value)
	if err != nil {
		t.Fatal(err)
	}
	var fds []uint32
	for _, it := range items {
		if attrType(it) != sockItem {
			t.Fatalf("SOCKETS holds attribute %d, want only SOCK_ITEM", attrType(it))
		}
		f := attrMap(t, it.Value)
		v := f[sockFD].Value
		if len(v) != 4 {
			t.Fatalf("SOCK_FD of %d bytes", len(v))
		}
		fds = append(fds, binary.NativeEndian.Uint32(v))
	}
	if len(fds) != 2 || fds[0] != 7 || fds[1] != 9 {
		t.Errorf("socket fds %v, want [7 9]", fds)
	}
}

func TestConnectMessageOmitsDefaults(t *testing.T) {
	// Index -1 means "any device": no INDEX attribute at all. Zero
	// timeouts keep the kernel's defaults.
	cfg := connectConfig{Index: -1, Size: 4096, SocketFDs: []int{5}}
	g := &genl{family: 1}
	raw := g.newRequest(cmdConnect, 0, cfg.attrs()).Serialize()
	m := attrMap(t, raw[unix.SizeofNlMsghdr+nl.SizeofGenlmsg:])
	for _, typ := range []uint16{attrIndex, attrTimeout, attrDeadConnTimeout, attrBlockSizeBytes, attrServerFlags, attrBackendIdentifier} {
		if _, ok := m[typ]; ok {
			t.Errorf("attribute %d present, want it left out", typ)
		}
	}
	if _, ok := m[attrSizeBytes]; !ok {
		t.Error("SIZE_BYTES missing")
	}
}

// genlReply builds a kernel-style reply payload: genl header + attributes.
func genlReply(cmd uint8, attrs ...*nl.RtAttr) []byte {
	b := []byte{cmd, genlVersion, 0, 0}
	for _, a := range attrs {
		b = append(b, a.Serialize()...)
	}
	return b
}

func TestParseConnectReply(t *testing.T) {
	idx, err := parseConnectReply(genlReply(cmdConnect, nl.NewRtAttr(attrIndex, nl.Uint32Attr(12))))
	if err != nil || idx != 12 {
		t.Fatalf("parseConnectReply = %d, %v; want 12", idx, err)
	}
	if _, err := parseConnectReply(genlReply(cmdConnect)); err == nil {
		t.Error("a reply without INDEX was accepted")
	}
	if _, err := parseConnectReply([]byte{1, 2}); err == nil {
		t.Error("a truncated reply was accepted")
	}
	bad := genlReply(cmdConnect, nl.NewRtAttr(attrIndex, nl.Uint32Attr(1)))
	bad[4] = 200 // attribute length beyond the message
	if _, err := parseConnectReply(bad); err == nil {
		t.Error("a reply with a corrupt attribute length was accepted")
	}
}

func TestParseStatusReply(t *testing.T) {
	// As nbd_genl_status builds it: DEVICE_LIST (no nested flag) holding
	// one DEVICE_ITEM per device.
	list := nl.NewRtAttr(attrDeviceList, nil)
	for _, d := range []struct {
		idx  uint32
		conn uint8
	}{{0, 1}, {1, 0}, {15, 1}} {
		item := list.AddRtAttr(deviceItem, nil)
		item.AddRtAttr(deviceIndex, nl.Uint32Attr(d.idx))
		item.AddRtAttr(deviceConnected, nl.Uint8Attr(d.conn))
	}
	got, err := parseStatusReply(genlReply(cmdStatus, list))
	if err != nil {
		t.Fatal(err)
	}
	want := []deviceStatus{{0, true}, {1, false}, {15, true}}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("device %d: got %+v, want %+v", i, got[i], want[i])
		}
	}

	empty, err := parseStatusReply(genlReply(cmdStatus, nl.NewRtAttr(attrDeviceList, nil)))
	if err != nil || len(empty) != 0 {
		t.Errorf("empty list: %v, %v", empty, err)
	}

	noIndex := nl.NewRtAttr(attrDeviceList, nil)
	noIndex.AddRtAttr(deviceItem, nil).AddRtAttr(deviceConnected, nl.Uint8Attr(1))
	if _, err := parseStatusReply(genlReply(cmdStatus, noIndex)); err == nil {
		t.Error("a device item without an index was accepted")
	}
}

func TestSecondsRoundsUp(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want uint64
	}{{time.Nanosecond, 1}, {time.Second, 1}, {time.Second + 1, 2}, {90 * time.Second, 90}} {
		if got := seconds(c.d); got != c.want {
			t.Errorf("seconds(%v) = %d, want %d", c.d, got, c.want)
		}
	}
}
