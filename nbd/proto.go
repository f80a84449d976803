package nbd

// Wire constants of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md).
// Every integer on the wire is big-endian.

// Handshake magics.
const (
	// magicNBD opens the newstyle handshake ("NBDMAGIC").
	magicNBD uint64 = 0x4e42444d41474943
	// magicOpt follows it and prefixes every client option ("IHAVEOPT").
	magicOpt uint64 = 0x49484156454f5054
	// magicOptReply prefixes every fixed-newstyle option reply.
	magicOptReply uint64 = 0x0003e889045565a9
)

// Transmission magics.
const (
	MagicRequest         uint32 = 0x25609513
	MagicSimpleReply     uint32 = 0x67446698
	MagicStructuredReply uint32 = 0x668e33ef // once NBD_OPT_STRUCTURED_REPLY is negotiated
)

// Handshake flags (server, 16 bits) and client flags (32 bits).
const (
	flagFixedNewstyle uint16 = 1 << 0
	flagNoZeroes      uint16 = 1 << 1

	clientFlagFixedNewstyle uint32 = 1 << 0
	clientFlagNoZeroes      uint32 = 1 << 1
)

// Transmission flags, sent in NBD_INFO_EXPORT, the NBD_OPT_EXPORT_NAME reply
// and, for the kernel, NBD_ATTR_SERVER_FLAGS.
const (
	FlagHasFlags        uint16 = 1 << 0
	FlagReadOnly        uint16 = 1 << 1
	FlagSendFlush       uint16 = 1 << 2
	FlagSendFUA         uint16 = 1 << 3
	FlagRotational      uint16 = 1 << 4
	FlagSendTrim        uint16 = 1 << 5
	FlagSendWriteZeroes uint16 = 1 << 6
	FlagSendDF          uint16 = 1 << 7
	FlagCanMultiConn    uint16 = 1 << 8
	FlagSendResize      uint16 = 1 << 9
	FlagSendCache       uint16 = 1 << 10
	FlagSendFastZero    uint16 = 1 << 11
)

// Options a client sends during option haggling.
const (
	OptExportName      uint32 = 1
	OptAbort           uint32 = 2
	OptList            uint32 = 3
	OptPeekExport      uint32 = 4
	OptStartTLS        uint32 = 5
	OptInfo            uint32 = 6
	OptGo              uint32 = 7
	OptStructuredReply uint32 = 8
	OptListMetaContext uint32 = 9
	OptSetMetaContext  uint32 = 10
	OptExtendedHeaders uint32 = 11
)

// Option reply types. Errors have bit 31 set.
const (
	RepAck         uint32 = 1
	RepServer      uint32 = 2
	RepInfo        uint32 = 3
	RepMetaContext uint32 = 4

	repErrBit           uint32 = 1 << 31
	RepErrUnsup         uint32 = repErrBit | 1
	RepErrPolicy        uint32 = repErrBit | 2
	RepErrInvalid       uint32 = repErrBit | 3
	RepErrPlatform      uint32 = repErrBit | 4
	RepErrTLSReqd       uint32 = repErrBit | 5
	RepErrUnknown       uint32 = repErrBit | 6
	RepErrShutdown      uint32 = repErrBit | 7
	RepErrBlockSizeReqd uint32 = repErrBit | 8
	RepErrTooBig        uint32 = repErrBit | 9
	RepErrExtHeaderReqd uint32 = repErrBit | 10
)

// Information types of NBD_OPT_INFO and NBD_OPT_GO.
const (
	InfoExport      uint16 = 0
	InfoName        uint16 = 1
	InfoDescription uint16 = 2
	InfoBlockSize   uint16 = 3
)

// Command types.
const (
	CmdRead        uint16 = 0
	CmdWrite       uint16 = 1
	CmdDisc        uint16 = 2
	CmdFlush       uint16 = 3
	CmdTrim        uint16 = 4
	CmdCache       uint16 = 5
	CmdWriteZeroes uint16 = 6
	CmdBlockStatus uint16 = 7
)

// Command flags.
const (
	CmdFlagFUA      uint16 = 1 << 0
	CmdFlagNoHole   uint16 = 1 << 1
	CmdFlagDF       uint16 = 1 << 2
	CmdFlagReqOne   uint16 = 1 << 3
	CmdFlagFastZero uint16 = 1 << 4
)

// Structured reply chunks: flags and types.
const (
	ReplyFlagDone         uint16 = 1 << 0
	ReplyTypeNone         uint16 = 0
	ReplyTypeOffsetData   uint16 = 1
	ReplyTypeOffsetHole   uint16 = 2
	ReplyTypeBlockStatus  uint16 = 5
	ReplyTypeError        uint16 = 1<<15 | 1
	ReplyTypeErrorOffset  uint16 = 1<<15 | 2
	StructuredReplyHeader        = 20 // magic, flags, type, cookie, length
)

// The base:allocation meta context: its name, the id this server gives
// it, and the status flags of its block descriptors.
const (
	MetaBaseAllocation          = "base:allocation"
	metaBaseAllocationID uint32 = 1
	StateHole            uint32 = 1 << 0
	StateZero            uint32 = 1 << 1
)

// Error values of a simple reply. The protocol restricts the errno field to
// these; Errno maps any Go error onto one of them.
const (
	EPERM     uint32 = 1
	EIO       uint32 = 5
	ENOMEM    uint32 = 12
	EINVAL    uint32 = 22
	ENOSPC    uint32 = 28
	EOVERFLOW uint32 = 75
	ENOTSUP   uint32 = 95
	ESHUTDOWN uint32 = 108
)

// Sizes of the fixed parts of messages.
const (
	RequestSize     = 28 // magic, flags, type, cookie, offset, length
	SimpleReplySize = 16 // magic, error, cookie
	optHeaderSize   = 16 // IHAVEOPT, option, length
	optReplyHeader  = 20 // magic, option, reply type, length
)

// Size constraints.
const (
	// DefaultMaxPayload is the largest READ or WRITE payload served unless
	// TransmissionOptions says otherwise: the 32 MiB every client must
	// accept (proto.md "Size constraints").
	DefaultMaxPayload = 32 << 20
	// preferredBlockSize is advertised in NBD_INFO_BLOCK_SIZE.
	preferredBlockSize = 4096
	// maxStringLen bounds export names and messages (proto.md: MUST be no
	// longer than 4096 bytes).
	maxStringLen = 4096
)

// CommandName is the protocol name of a command type, for logs and errors.
func CommandName(t uint16) string {
	switch t {
	case CmdRead:
		return "READ"
	case CmdWrite:
		return "WRITE"
	case CmdDisc:
		return "DISC"
	case CmdFlush:
		return "FLUSH"
	case CmdTrim:
		return "TRIM"
	case CmdCache:
		return "CACHE"
	case CmdWriteZeroes:
		return "WRITE_ZEROES"
	case CmdBlockStatus:
		return "BLOCK_STATUS"
	}
	return "UNKNOWN"
}

// OptionName is the protocol name of an option, for logs and errors.
func OptionName(o uint32) string {
	switch o {
	case OptExportName:
		return "EXPORT_NAME"
	case OptAbort:
		return "ABORT"
	case OptList:
		return "LIST"
	case OptPeekExport:
		return "PEEK_EXPORT"
	case OptStartTLS:
		return "STARTTLS"
	case OptInfo:
		return "INFO"
	case OptGo:
		return "GO"
	case OptStructuredReply:
		return "STRUCTURED_REPLY"
	case OptListMetaContext:
		return "LIST_META_CONTEXT"
	case OptSetMetaContext:
		return "SET_META_CONTEXT"
	case OptExtendedHeaders:
		return "EXTENDED_HEADERS"
	}
	return "UNKNOWN"
}

// ReplyTypeName is the protocol name of an option reply type.
func ReplyTypeName(t uint32) string {
	switch t {
	case RepAck:
		return "ACK"
	case RepServer:
		return "SERVER"
	case RepInfo:
		return "INFO"
	case RepMetaContext:
		return "META_CONTEXT"
	case RepErrUnsup:
		return "ERR_UNSUP"
	case RepErrPolicy:
		return "ERR_POLICY"
	case RepErrInvalid:
		return "ERR_INVALID"
	case RepErrPlatform:
		return "ERR_PLATFORM"
	case RepErrTLSReqd:
		return "ERR_TLS_REQD"
	case RepErrUnknown:
		return "ERR_UNKNOWN"
	case RepErrShutdown:
		return "ERR_SHUTDOWN"
	case RepErrBlockSizeReqd:
		return "ERR_BLOCK_SIZE_REQD"
	case RepErrTooBig:
		return "ERR_TOO_BIG"
	case RepErrExtHeaderReqd:
		return "ERR_EXT_HEADER_REQD"
	}
	return "UNKNOWN"
}
