package nbd

import "encoding/binary"

// encodeChunk puts the structured reply of a READ or BLOCK_STATUS in
// front of its data: one chunk with NBD_REPLY_FLAG_DONE. A READ's data
// goes out in place (OFFSET_DATA) as a simple reply's would, so reads
// stay one iovec; failures become an NBD_REPLY_TYPE_ERROR chunk (a
// simple reply is not allowed for READ once structured replies are
// negotiated).
func (s *session) encodeChunk(r *request) {
	h := &r.hdr
	var typ uint16
	var length int
	switch {
	case r.errno != 0:
		// Error chunk: errno and a zero-length message.
		typ, length = ReplyTypeError, 6
		r.head = replyHeadroom - StructuredReplyHeader - length
		binary.BigEndian.PutUint32(r.buf[replyHeadroom-6:], r.errno)
		binary.BigEndian.PutUint16(r.buf[replyHeadroom-2:], 0)
		r.send = replyHeadroom
	case h.Type == CmdRead && h.Length == 0:
		// OFFSET_DATA must carry data: an empty read is a NONE chunk.
		typ = ReplyTypeNone
		r.head = replyHeadroom - StructuredReplyHeader
		r.send = replyHeadroom
	case h.Type == CmdRead:
		typ, length = ReplyTypeOffsetData, 8+int(h.Length)
		r.head = replyHeadroom - StructuredReplyHeader - 8
		binary.BigEndian.PutUint64(r.buf[replyHeadroom-8:], h.Offset)
		r.send = replyHeadroom + int(h.Length)
	default: // CmdBlockStatus
		typ, length = ReplyTypeBlockStatus, r.dlen
		r.head = replyHeadroom - StructuredReplyHeader
		r.send = replyHeadroom + r.dlen
	}
	b := r.buf[r.head:]
	binary.BigEndian.PutUint32(b[0:4], MagicStructuredReply)
	binary.BigEndian.PutUint16(b[4:6], ReplyFlagDone)
	binary.BigEndian.PutUint16(b[6:8], typ)
	binary.BigEndian.PutUint64(b[8:16], h.Cookie)
	binary.BigEndian.PutUint32(b[16:20], uint32(length))
}

// blockStatus answers a BLOCK_STATUS for base:allocation into data (the
// reply payload: context id, then block descriptors) and sets r.dlen.
// Allocated extents come from the backend's Extenter; the gaps between
// them are holes reading as zeroes (NBD_STATE_HOLE|NBD_STATE_ZERO).
// Without an Extenter the whole range is reported allocated.
func (s *session) blockStatus(r *request, data []byte) error {
	h := &r.hdr
	off, end := int64(h.Offset), int64(h.Offset)+int64(h.Length)
	ext := []Extent{{Offset: off, Length: int64(h.Length)}}
	complete := true // the extents cover the whole range
	if s.ext != nil {
		var err error
		if ext, err = s.ext.Extents(s.ctx, off, int64(h.Length), maxStatusExtents); err != nil {
			return err
		}
		complete = len(ext) < maxStatusExtents
	}
	binary.BigEndian.PutUint32(data[0:4], metaBaseAllocationID)
	n := 0 // descriptors
	add := func(length int64, flags uint32) {
		if n > 0 {
			if d := data[4+8*(n-1):]; binary.BigEndian.Uint32(d[4:8]) == flags {
				// Merge with the previous one: the sum stays within
				// the request's 32-bit length.
				binary.BigEndian.PutUint32(d[0:4], binary.BigEndian.Uint32(d[0:4])+uint32(length))
				return
			}
		}
		d := data[4+8*n:]
		binary.BigEndian.PutUint32(d[0:4], uint32(length))
		binary.BigEndian.PutUint32(d[4:8], flags)
		n++
	}
	cur := off
	for _, e := range ext {
		// Clip to the request and to what is reported already, so a
		// backend's overlapping or out-of-range extents cannot make the
		// descriptors go backwards.
		a, b := max(e.Offset, cur), min(e.Offset+e.Length, end)
		if b <= a {
			continue
		}
		if a > cur {
			add(a-cur, StateHole|StateZero)
		}
		add(b-a, 0)
		cur = b
	}
	if cur < end && (complete || n == 0) {
		flags := StateHole | StateZero
		if !complete {
			flags = 0 // nothing usable came back: say allocated, which is never wrong
		}
		add(end-cur, flags)
	}
	if h.Flags&CmdFlagReqOne != 0 {
		n = 1
	}
	r.dlen = 4 + 8*n
	return nil
}
