package nbd

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// Option haggling limits. An option longer than maxOptionLen gets
// NBD_REP_ERR_TOO_BIG after its data is read and dropped; one longer
// than maxOptionSkip is treated as an attack and the connection closed.
const (
	maxOptionLen  = 64 << 10
	maxOptionSkip = 16 << 20
)

// errAbort ends a handshake the client gave up with NBD_OPT_ABORT.
var errAbort = errors.New("nbd: client sent NBD_OPT_ABORT")

// infoRequest is the parsed data of NBD_OPT_INFO and NBD_OPT_GO.
type infoRequest struct {
	name  string
	infos []uint16
}

// parseInfoRequest parses the data of NBD_OPT_INFO and NBD_OPT_GO:
// a 32-bit name length, the name, a 16-bit count and that many 16-bit
// information types. The lengths must account for the data exactly.
func parseInfoRequest(data []byte) (infoRequest, error) {
	var r infoRequest
	if len(data) < 6 {
		return r, fmt.Errorf("option data is %d bytes, shorter than the 6-byte minimum", len(data))
	}
	nameLen := binary.BigEndian.Uint32(data[0:4])
	if uint64(nameLen) > uint64(len(data)-6) {
		return r, fmt.Errorf("export name length %d exceeds the option data", nameLen)
	}
	if nameLen > maxStringLen {
		return r, fmt.Errorf("export name length %d exceeds %d bytes", nameLen, maxStringLen)
	}
	rest := data[4+nameLen:]
	n := int(binary.BigEndian.Uint16(rest[0:2]))
	rest = rest[2:]
	if len(rest) != 2*n {
		return r, fmt.Errorf("%d information requests need %d bytes, the option has %d", n, 2*n, len(rest))
	}
	r.name = string(data[4 : 4+nameLen])
	r.infos = make([]uint16, n)
	for i := range r.infos {
		r.infos[i] = binary.BigEndian.Uint16(rest[2*i:])
	}
	return r, nil
}

// encodeInfoRequest is the inverse of parseInfoRequest (used by Client).
func encodeInfoRequest(name string, infos []uint16) []byte {
	b := make([]byte, 0, 4+len(name)+2+2*len(infos))
	b = binary.BigEndian.AppendUint32(b, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, t := range infos {
		b = binary.BigEndian.AppendUint16(b, t)
	}
	return b
}

// optionReader reads client options. It reads exactly what each message
// holds, never ahead, so nothing of the transmission phase is consumed.
type optionReader struct {
	r   io.Reader
	hdr [optHeaderSize]byte
}

// option is one client option.
type option struct {
	code uint32
	// data is nil when the option was longer than maxOptionLen and its
	// data was dropped; length is what the client sent.
	data   []byte
	length uint32
}

func (or *optionReader) next() (option, error) {
	var o option
	if _, err := io.ReadFull(or.r, or.hdr[:]); err != nil {
		if err == io.ErrUnexpectedEOF {
			err = fmt.Errorf("%w: connection closed inside an option header", ErrProtocol)
		}
		return o, err
	}
	if m := binary.BigEndian.Uint64(or.hdr[0:8]); m != magicOpt {
		return o, fmt.Errorf("%w: bad option magic %#016x", ErrProtocol, m)
	}
	o.code = binary.BigEndian.Uint32(or.hdr[8:12])
	o.length = binary.BigEndian.Uint32(or.hdr[12:16])
	switch {
	case o.length <= maxOptionLen:
		o.data = make([]byte, o.length)
		if _, err := io.ReadFull(or.r, o.data); err != nil {
			return o, fmt.Errorf("%w: reading %d bytes of option %s: %v", ErrProtocol, o.length, OptionName(o.code), err)
		}
	case o.length <= maxOptionSkip && o.code != OptExportName:
		if _, err := io.CopyN(io.Discard, or.r, int64(o.length)); err != nil {
			return o, fmt.Errorf("%w: reading %d bytes of option %s: %v", ErrProtocol, o.length, OptionName(o.code), err)
		}
	default:
		return o, fmt.Errorf("%w: option %s with %d bytes of data", ErrProtocol, OptionName(o.code), o.length)
	}
	return o, nil
}

// appendOptReply appends a fixed-newstyle option reply.
func appendOptReply(b []byte, opt, typ uint32, data []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, magicOptReply)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// exportInfo is what the handshake tells a client about an export.
type exportInfo struct {
	name        string
	description string
	size        uint64
	flags       uint16
	minBlock    uint32
	prefBlock   uint32
	maxPayload  uint32
}

func appendInfoExport(b []byte, e *exportInfo) []byte {
	b = binary.BigEndian.AppendUint16(b, InfoExport)
	b = binary.BigEndian.AppendUint64(b, e.size)
	return binary.BigEndian.AppendUint16(b, e.flags)
}

func appendInfoBlockSize(b []byte, e *exportInfo) []byte {
	b = binary.BigEndian.AppendUint16(b, InfoBlockSize)
	b = binary.BigEndian.AppendUint32(b, e.minBlock)
	b = binary.BigEndian.AppendUint32(b, e.prefBlock)
	return binary.BigEndian.AppendUint32(b, e.maxPayload)
}

// negotiator is the server side of one fixed-newstyle handshake.
type negotiator struct {
	conn net.Conn
	or   optionReader
	// lookup finds an export by name ("" is the default export).
	lookup   func(name string) (*exportInfo, bool)
	list     func() []*exportInfo
	noZeroes bool
	// tls, when set, offers NBD_OPT_STARTTLS; with tlsRequired every
	// option but STARTTLS and ABORT is refused until TLS is up. conn is
	// the TLS connection once it is.
	tls         *tls.Config
	tlsRequired bool
	tlsUp       bool
	// structured: NBD_OPT_STRUCTURED_REPLY was acked. metaExport is the
	// export the last NBD_OPT_SET_META_CONTEXT selected base:allocation
	// for (nil when none); it applies only if the client then goes to
	// that same export.
	structured bool
	metaExport *exportInfo
}

// parseMetaContextRequest parses the data of NBD_OPT_LIST_META_CONTEXT
// and NBD_OPT_SET_META_CONTEXT: a 32-bit export name length, the name, a
// 32-bit query count and that many length-prefixed query strings. The
// lengths must account for the data exactly.
func parseMetaContextRequest(data []byte) (name string, queries []string, err error) {
	take := func(what string) (string, error) {
		if len(data) < 4 {
			return "", fmt.Errorf("%s length is cut short", what)
		}
		n := binary.BigEndian.Uint32(data)
		if n > maxStringLen || uint64(n) > uint64(len(data)-4) {
			return "", fmt.Errorf("%s length %d exceeds the option data or %d bytes", what, n, maxStringLen)
		}
		v := string(data[4 : 4+n])
		data = data[4+n:]
		return v, nil
	}
	if name, err = take("export name"); err != nil {
		return "", nil, err
	}
	if len(data) < 4 {
		return "", nil, fmt.Errorf("query count is missing")
	}
	count := binary.BigEndian.Uint32(data)
	data = data[4:]
	// Each query takes at least its 4-byte length: bound the count by
	// what the data can hold before allocating.
	if uint64(count)*4 > uint64(len(data)) {
		return "", nil, fmt.Errorf("%d queries do not fit in %d bytes", count, len(data))
	}
	queries = make([]string, 0, count)
	for i := uint32(0); i < count; i++ {
		q, err := take("query")
		if err != nil {
			return "", nil, err
		}
		queries = append(queries, q)
	}
	if len(data) != 0 {
		return "", nil, fmt.Errorf("%d bytes after the last query", len(data))
	}
	return name, queries, nil
}

// encodeMetaContextRequest is the inverse of parseMetaContextRequest.
func encodeMetaContextRequest(name string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// metaContextMatches reports whether query names base:allocation, the
// only context this server has. For LIST a namespace ("base:") matches
// every context in it; SET needs the full name.
func metaContextMatches(query string, list bool) bool {
	return query == MetaBaseAllocation || (list && query == "base:")
}

// negotiated reports what the client chose for export e: structured
// replies, and base:allocation if it was set for e.
func (n *negotiator) negotiated(e *exportInfo) (structured, baseAllocation bool) {
	return n.structured, n.structured && e != nil && n.metaExport != nil && n.metaExport.name == e.name
}

// run performs the handshake. It returns the export the client chose
// with NBD_OPT_GO or NBD_OPT_EXPORT_NAME, errAbort after NBD_OPT_ABORT,
// or an error; on error the caller closes the connection.
func (n *negotiator) run() (*exportInfo, error) {
	n.or.r = n.conn
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:8], magicNBD)
	binary.BigEndian.PutUint64(hello[8:16], magicOpt)
	binary.BigEndian.PutUint16(hello[16:18], flagFixedNewstyle|flagNoZeroes)
	if _, err := n.conn.Write(hello[:]); err != nil {
		return nil, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(n.conn, cf[:]); err != nil {
		return nil, fmt.Errorf("reading client flags: %w", err)
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if unknown := flags &^ (clientFlagFixedNewstyle | clientFlagNoZeroes); unknown != 0 {
		return nil, fmt.Errorf("%w: unknown client flags %#x", ErrProtocol, unknown)
	}
	n.noZeroes = flags&clientFlagNoZeroes != 0
	// A client without NBD_FLAG_C_FIXED_NEWSTYLE is served as fixed
	// newstyle anyway, as proto.md allows: it can only send
	// NBD_OPT_EXPORT_NAME, which behaves the same in both.
	for {
		o, err := n.or.next()
		if err != nil {
			return nil, err
		}
		e, done, err := n.handle(o)
		if err != nil || done {
			return e, err
		}
	}
}

// handle answers one option. done is set when the handshake is over.
func (n *negotiator) handle(o option) (e *exportInfo, done bool, err error) {
	reply := func(typ uint32, data []byte) error {
		_, err := n.conn.Write(appendOptReply(nil, o.code, typ, data))
		return err
	}
	if o.data == nil && o.length > 0 {
		return nil, false, reply(RepErrTooBig, fmt.Appendf(nil, "option %s data of %d bytes exceeds %d", OptionName(o.code), o.length, maxOptionLen))
	}
	if n.tlsRequired && !n.tlsUp && o.code != OptStartTLS && o.code != OptAbort {
		if o.code == OptExportName {
			// It has no error reply: the session ends.
			return nil, false, fmt.Errorf("NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS on a server requiring TLS")
		}
		return nil, false, reply(RepErrTLSReqd, []byte("this server requires TLS: send NBD_OPT_STARTTLS first"))
	}
	switch o.code {
	case OptStartTLS:
		if n.tls == nil {
			break // unsupported, below
		}
		if n.tlsUp || len(o.data) != 0 {
			return nil, false, reply(RepErrInvalid, []byte("NBD_OPT_STARTTLS takes no data and only once"))
		}
		if err := reply(RepAck, nil); err != nil {
			return nil, false, err
		}
		tc := tls.Server(n.conn, n.tls)
		if err := tc.Handshake(); err != nil {
			return nil, false, fmt.Errorf("TLS handshake: %w", err)
		}
		n.conn, n.or.r, n.tlsUp = tc, tc, true
		// proto.md: what was negotiated before TLS does not carry over.
		n.structured, n.metaExport = false, nil
		return nil, false, nil

	case OptStructuredReply:
		if len(o.data) != 0 {
			return nil, false, reply(RepErrInvalid, []byte("NBD_OPT_STRUCTURED_REPLY takes no data"))
		}
		n.structured = true
		return nil, false, reply(RepAck, nil)

	case OptListMetaContext, OptSetMetaContext:
		set := o.code == OptSetMetaContext
		name, queries, perr := parseMetaContextRequest(o.data)
		if perr != nil {
			return nil, false, reply(RepErrInvalid, []byte("NBD_OPT_"+OptionName(o.code)+": "+perr.Error()))
		}
		if set && !n.structured {
			n.metaExport = nil
			return nil, false, reply(RepErrInvalid, []byte("NBD_OPT_SET_META_CONTEXT needs NBD_OPT_STRUCTURED_REPLY first"))
		}
		e, ok := n.lookup(name)
		if !ok {
			if set {
				n.metaExport = nil
			}
			return nil, false, reply(RepErrUnknown, fmt.Appendf(nil, "unknown export %q", name))
		}
		// LIST with no query lists every context; SET with none
		// selects none.
		found := !set && len(queries) == 0
		for _, q := range queries {
			found = found || metaContextMatches(q, !set)
		}
		var b []byte
		if found {
			d := binary.BigEndian.AppendUint32(nil, metaBaseAllocationID)
			b = appendOptReply(b, o.code, RepMetaContext, append(d, MetaBaseAllocation...))
		}
		if set {
			n.metaExport = nil
			if found {
				n.metaExport = e
			}
		}
		b = appendOptReply(b, o.code, RepAck, nil)
		_, err := n.conn.Write(b)
		return nil, false, err

	case OptExportName:
		// No error reply is possible: an unknown export closes the session.
		e, ok := n.lookup(string(o.data))
		if !ok {
			return nil, false, fmt.Errorf("NBD_OPT_EXPORT_NAME: unknown export %q", o.data)
		}
		b := binary.BigEndian.AppendUint64(nil, e.size)
		b = binary.BigEndian.AppendUint16(b, e.flags)
		if !n.noZeroes {
			b = append(b, make([]byte, 124)...)
		}
		_, err := n.conn.Write(b)
		return e, err == nil, err

	case OptAbort:
		// proto.md: reply ACK; the client may already have closed.
		reply(RepAck, nil)
		return nil, false, errAbort

	case OptList:
		if len(o.data) != 0 {
			return nil, false, reply(RepErrInvalid, []byte("NBD_OPT_LIST takes no data"))
		}
		var b []byte
		for _, e := range n.list() {
			d := binary.BigEndian.AppendUint32(nil, uint32(len(e.name)))
			d = append(d, e.name...)
			d = append(d, e.description...)
			b = appendOptReply(b, o.code, RepServer, d)
		}
		b = appendOptReply(b, o.code, RepAck, nil)
		_, err := n.conn.Write(b)
		return nil, false, err

	case OptInfo, OptGo:
		req, perr := parseInfoRequest(o.data)
		if perr != nil {
			return nil, false, reply(RepErrInvalid, []byte("NBD_OPT_"+OptionName(o.code)+": "+perr.Error()))
		}
		e, ok := n.lookup(req.name)
		if !ok {
			return nil, false, reply(RepErrUnknown, fmt.Appendf(nil, "unknown export %q", req.name))
		}
		var b []byte
		b = appendOptReply(b, o.code, RepInfo, appendInfoExport(nil, e))
		// Block sizes are sent whether asked or not (proto.md allows
		// unrequested information) so a client that did not ask still
		// learns an alignment the server enforces.
		b = appendOptReply(b, o.code, RepInfo, appendInfoBlockSize(nil, e))
		for _, t := range req.infos {
			switch t {
			case InfoName:
				d := binary.BigEndian.AppendUint16(nil, InfoName)
				b = appendOptReply(b, o.code, RepInfo, append(d, e.name...))
			case InfoDescription:
				if e.description != "" {
					d := binary.BigEndian.AppendUint16(nil, InfoDescription)
					b = appendOptReply(b, o.code, RepInfo, append(d, e.description...))
				}
			}
		}
		b = appendOptReply(b, o.code, RepAck, nil)
		if _, err := n.conn.Write(b); err != nil {
			return nil, false, err
		}
		if o.code == OptGo {
			return e, true, nil
		}
		return nil, false, nil

	}
	// STARTTLS without TLS configured, EXTENDED_HEADERS and anything
	// unknown: not supported, and the client may carry on.
	return nil, false, reply(RepErrUnsup, fmt.Appendf(nil, "option %s (%d) is not supported by this server", OptionName(o.code), o.code))
}
