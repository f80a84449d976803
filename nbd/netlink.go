package nbd

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The generic netlink interface of the kernel's nbd driver
// (include/uapi/linux/nbd-netlink.h). Numbers are ABI: never renumber.
const (
	genlFamilyName = "nbd"
	genlVersion    = 1

	cmdConnect     = 1
	cmdDisconnect  = 2
	cmdReconfigure = 3
	cmdStatus      = 5

	attrIndex             = 1  // u32
	attrSizeBytes         = 2  // u64
	attrBlockSizeBytes    = 3  // u64
	attrTimeout           = 4  // u64, seconds
	attrServerFlags       = 5  // u64, NBD_FLAG_* of the export
	attrClientFlags       = 6  // u64, NBD_CFLAG_*
	attrSockets           = 7  // nested: sockItem{sockFD}
	attrDeadConnTimeout   = 8  // u64, seconds
	attrDeviceList        = 9  // nested: deviceItem{deviceIndex, deviceConnected}
	attrBackendIdentifier = 10 // string

	sockItem = 1
	sockFD   = 1 // u32

	deviceItem      = 1
	deviceIndex     = 1 // u32
	deviceConnected = 2 // u8
)

// connectConfig is what CONNECT and RECONFIGURE carry. Zero fields are
// left out of the message so the kernel keeps its defaults (or, on
// RECONFIGURE, the current values).
type connectConfig struct {
	Index           int // -1: any free device (CONNECT only)
	Size            int64
	BlockSize       uint32
	Timeout         time.Duration
	DeadConnTimeout time.Duration
	ServerFlags     uint64
	ClientFlags     uint64
	BackendID       string
	SocketFDs       []int
}

// attrs builds the attribute list of a CONNECT or RECONFIGURE message.
func (c connectConfig) attrs() []*nl.RtAttr {
	var as []*nl.RtAttr
	if c.Index >= 0 {
		as = append(as, nl.NewRtAttr(attrIndex, nl.Uint32Attr(uint32(c.Index))))
	}
	if c.Size > 0 {
		as = append(as, nl.NewRtAttr(attrSizeBytes, nl.Uint64Attr(uint64(c.Size))))
	}
	if c.BlockSize > 0 {
		as = append(as, nl.NewRtAttr(attrBlockSizeBytes, nl.Uint64Attr(uint64(c.BlockSize))))
	}
	if c.Timeout > 0 {
		as = append(as, nl.NewRtAttr(attrTimeout, nl.Uint64Attr(seconds(c.Timeout))))
	}
	if c.DeadConnTimeout > 0 {
		as = append(as, nl.NewRtAttr(attrDeadConnTimeout, nl.Uint64Attr(seconds(c.DeadConnTimeout))))
	}
	if c.ServerFlags != 0 {
		as = append(as, nl.NewRtAttr(attrServerFlags, nl.Uint64Attr(c.ServerFlags)))
	}
	if c.ClientFlags != 0 {
		as = append(as, nl.NewRtAttr(attrClientFlags, nl.Uint64Attr(c.ClientFlags)))
	}
	if c.BackendID != "" {
		as = append(as, nl.NewRtAttr(attrBackendIdentifier, nl.ZeroTerminated(c.BackendID)))
	}
	if len(c.SocketFDs) > 0 {
		socks := nl.NewRtAttr(attrSockets|int(unix.NLA_F_NESTED), nil)
		for _, fd := range c.SocketFDs {
			item := socks.AddRtAttr(sockItem|int(unix.NLA_F_NESTED), nil)
			item.AddRtAttr(sockFD, nl.Uint32Attr(uint32(fd)))
		}
		as = append(as, socks)
	}
	return as
}

// seconds rounds up so that a sub-second timeout never becomes "none".
func seconds(d time.Duration) uint64 {
	return uint64((d + time.Second - 1) / time.Second)
}

// deviceStatus is one entry of a STATUS reply.
type deviceStatus struct {
	Index     int
	Connected bool
}

// parseGenlReply splits a generic netlink reply (the payload after the
// netlink header) into its command and attributes.
func parseGenlReply(msg []byte) (cmd uint8, attrs []syscall.NetlinkRouteAttr, err error) {
	if len(msg) < nl.SizeofGenlmsg {
		return 0, nil, fmt.Errorf("nbd netlink: reply of %d bytes is shorter than a genl header", len(msg))
	}
	attrs, err = nl.ParseRouteAttr(msg[nl.SizeofGenlmsg:])
	if err != nil {
		return 0, nil, fmt.Errorf("nbd netlink: malformed attributes in reply: %w", err)
	}
	return msg[0], attrs, nil
}

func attrType(a syscall.NetlinkRouteAttr) uint16 { return a.Attr.Type & nl.NLA_TYPE_MASK }

// parseConnectReply returns the device index from a CONNECT reply.
func parseConnectReply(msg []byte) (int, error) {
	_, attrs, err := parseGenlReply(msg)
	if err != nil {
		return 0, err
	}
	for _, a := range attrs {
		if attrType(a) == attrIndex && len(a.Value) >= 4 {
			return int(nl.NativeEndian().Uint32(a.Value)), nil
		}
	}
	return 0, errors.New("nbd netlink: CONNECT reply carries no device index")
}

// parseStatusReply decodes NBD_ATTR_DEVICE_LIST from a STATUS reply.
func parseStatusReply(msg []byte) ([]deviceStatus, error) {
	_, attrs, err := parseGenlReply(msg)
	if err != nil {
		return nil, err
	}
	var out []deviceStatus
	for _, a := range attrs {
		if attrType(a) != attrDeviceList {
			continue
		}
		items, err := nl.ParseRouteAttr(a.Value)
		if err != nil {
			return nil, fmt.Errorf("nbd netlink: malformed device list: %w", err)
		}
		for _, it := range items {
			if attrType(it) != deviceItem {
				continue
			}
			fields, err := nl.ParseRouteAttr(it.Value)
			if err != nil {
				return nil, fmt.Errorf("nbd netlink: malformed device item: %w", err)
			}
			st := deviceStatus{Index: -1}
			for _, f := range fields {
				switch attrType(f) {
				case deviceIndex:
					if len(f.Value) >= 4 {
						st.Index = int(nl.NativeEndian().Uint32(f.Value))
					}
				case deviceConnected:
					st.Connected = len(f.Value) >= 1 && f.Value[0] != 0
				}
			}
			if st.Index < 0 {
				return nil, errors.New("nbd netlink: device item without an index")
			}
			out = append(out, st)
		}
	}
	return out, nil
}

// genl talks to the kernel's "nbd" generic netlink family. Each request
// opens its own netlink socket (vishvananda/netlink's default), so a genl
// is safe for concurrent use.
type genl struct {
	family uint16
}

// newRequest starts a request for cmd with the given attributes.
func (g *genl) newRequest(cmd uint8, flags int, attrs []*nl.RtAttr) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(int(g.family), flags)
	req.AddData(&nl.Genlmsg{Command: cmd, Version: genlVersion})
	for _, a := range attrs {
		req.AddData(a)
	}
	return req
}

// connect sends CONNECT and returns the index of the device the kernel set up.
func (g *genl) connect(c connectConfig) (int, error) {
	msgs, err := g.newRequest(cmdConnect, 0, c.attrs()).Execute(unix.NETLINK_GENERIC, 0)
	if err != nil {
		return 0, &OpError{Op: "connect", Index: c.Index, Err: err}
	}
	if len(msgs) == 0 {
		return 0, &OpError{Op: "connect", Index: c.Index, Err: errors.New("the kernel sent no reply")}
	}
	idx, err := parseConnectReply(msgs[0])
	if err != nil {
		return 0, &OpError{Op: "connect", Index: c.Index, Err: err}
	}
	return idx, nil
}

// reconfigure sends RECONFIGURE for c.Index (new size, timeouts, or new
// sockets to replace dead ones).
func (g *genl) reconfigure(c connectConfig) error {
	_, err := g.newRequest(cmdReconfigure, unix.NLM_F_ACK, c.attrs()).Execute(unix.NETLINK_GENERIC, 0)
	if err != nil {
		return &OpError{Op: "reconfigure", Index: c.Index, Err: err}
	}
	return nil
}

// disconnect sends DISCONNECT: the kernel sends NBD_CMD_DISC on every
// connection and shuts its socket ends down.
func (g *genl) disconnect(index int) error {
	attrs := []*nl.RtAttr{nl.NewRtAttr(attrIndex, nl.Uint32Attr(uint32(index)))}
	_, err := g.newRequest(cmdDisconnect, unix.NLM_F_ACK, attrs).Execute(unix.NETLINK_GENERIC, 0)
	if err != nil {
		return &OpError{Op: "disconnect", Index: index, Err: err}
	}
	return nil
}

// status asks for one device (index >= 0) or all of them (index < 0).
func (g *genl) status(index int) ([]deviceStatus, error) {
	var attrs []*nl.RtAttr
	if index >= 0 {
		attrs = append(attrs, nl.NewRtAttr(attrIndex, nl.Uint32Attr(uint32(index))))
	}
	msgs, err := g.newRequest(cmdStatus, 0, attrs).Execute(unix.NETLINK_GENERIC, 0)
	if err != nil {
		return nil, &OpError{Op: "status", Index: index, Err: err}
	}
	var out []deviceStatus
	for _, m := range msgs {
		st, err := parseStatusReply(m)
		if err != nil {
			return nil, &OpError{Op: "status", Index: index, Err: err}
		}
		out = append(out, st...)
	}
	return out, nil
}

// lookupFamily resolves the "nbd" family. It returns errFamilyMissing
// when the kernel has no such family (the module is not loaded, or the
// kernel has no NBD at all).
func lookupFamily() (*genl, error) {
	f, err := netlink.GenlFamilyGet(genlFamilyName)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, errFamilyMissing
		}
		return nil, fmt.Errorf("nbd: looking up generic netlink family %q: %w", genlFamilyName, err)
	}
	return &genl{family: f.ID}, nil
}

var errFamilyMissing = errors.New(`generic netlink family "nbd" is not registered`)

// OpError is a failed netlink command on a device. Err is usually a
// syscall.Errno from the kernel (EBUSY: the device is in use; EINVAL: no
// such device or not connected; EPERM: CAP_SYS_ADMIN is needed).
type OpError struct {
	Op    string // connect, disconnect, reconfigure, status
	Index int    // -1 when no device was named
	Err   error
}

func (e *OpError) Error() string {
	hint := ""
	switch {
	case errors.Is(e.Err, unix.EPERM):
		hint = " (the nbd netlink interface needs root / CAP_SYS_ADMIN)"
	case errors.Is(e.Err, unix.EBUSY):
		hint = " (the device is already connected: pick another index or let the kernel choose)"
	}
	if e.Index < 0 {
		return fmt.Sprintf("nbd %s: %v%s", e.Op, e.Err, hint)
	}
	return fmt.Sprintf("nbd %s of /dev/nbd%d: %v%s", e.Op, e.Index, e.Err, hint)
}

func (e *OpError) Unwrap() error { return e.Err }
