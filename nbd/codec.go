package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrProtocol marks a violation of the NBD protocol by the peer (a bad
// magic, a truncated message, a malformed option). The connection cannot
// be resynchronised after one; match it with errors.Is.
var ErrProtocol = errors.New("nbd protocol violation")

// Request is a transmission-phase request header. For CmdWrite, Length
// bytes of payload follow it on the wire.
type Request struct {
	Flags  uint16
	Type   uint16
	Cookie uint64
	Offset uint64
	Length uint32
}

// Encode writes the 28-byte wire form of r into b, which must be at least
// RequestSize long. It does not allocate.
func (r *Request) Encode(b []byte) {
	_ = b[RequestSize-1]
	binary.BigEndian.PutUint32(b[0:4], MagicRequest)
	binary.BigEndian.PutUint16(b[4:6], r.Flags)
	binary.BigEndian.PutUint16(b[6:8], r.Type)
	binary.BigEndian.PutUint64(b[8:16], r.Cookie)
	binary.BigEndian.PutUint64(b[16:24], r.Offset)
	binary.BigEndian.PutUint32(b[24:28], r.Length)
}

// DecodeRequest parses a request header from the first RequestSize bytes
// of b. A short b or a wrong magic is an error wrapping ErrProtocol; the
// command type and flags are not validated here (the IO loop answers
// unknown ones with EINVAL). It does not allocate on success.
func DecodeRequest(b []byte, r *Request) error {
	if len(b) < RequestSize {
		return errShortRequest
	}
	if m := binary.BigEndian.Uint32(b[0:4]); m != MagicRequest {
		return &magicError{what: "request", got: m}
	}
	r.Flags = binary.BigEndian.Uint16(b[4:6])
	r.Type = binary.BigEndian.Uint16(b[6:8])
	r.Cookie = binary.BigEndian.Uint64(b[8:16])
	r.Offset = binary.BigEndian.Uint64(b[16:24])
	r.Length = binary.BigEndian.Uint32(b[24:28])
	return nil
}

// SimpleReply is a transmission-phase reply header. A successful reply to
// CmdRead is followed by the requested bytes; no other reply has a payload.
type SimpleReply struct {
	Errno  uint32
	Cookie uint64
}

// Encode writes the 16-byte wire form of r into b. It does not allocate.
func (r *SimpleReply) Encode(b []byte) {
	_ = b[SimpleReplySize-1]
	binary.BigEndian.PutUint32(b[0:4], MagicSimpleReply)
	binary.BigEndian.PutUint32(b[4:8], r.Errno)
	binary.BigEndian.PutUint64(b[8:16], r.Cookie)
}

// DecodeSimpleReply parses a simple reply header. A structured reply magic
// is a protocol error too: this package never negotiates structured replies.
func DecodeSimpleReply(b []byte, r *SimpleReply) error {
	if len(b) < SimpleReplySize {
		return errShortReply
	}
	if m := binary.BigEndian.Uint32(b[0:4]); m != MagicSimpleReply {
		return &magicError{what: "reply", got: m}
	}
	r.Errno = binary.BigEndian.Uint32(b[4:8])
	r.Cookie = binary.BigEndian.Uint64(b[8:16])
	return nil
}

var (
	errShortRequest = fmt.Errorf("%w: request header shorter than %d bytes", ErrProtocol, RequestSize)
	errShortReply   = fmt.Errorf("%w: reply header shorter than %d bytes", ErrProtocol, SimpleReplySize)
)

// magicError is a bad magic number. It is a pointer type with a fixed
// layout so the decoders' error path stays cheap, and it matches
// ErrProtocol with errors.Is.
type magicError struct {
	what string
	got  uint32
}

func (e *magicError) Error() string {
	return fmt.Sprintf("%v: bad %s magic %#08x", ErrProtocol, e.what, e.got)
}

func (e *magicError) Unwrap() error { return ErrProtocol }
