package nbd

import (
	"context"
	"errors"
	"fmt"
	"syscall"
)

// Errno maps an error to the errno field of an NBD reply: 0 for nil, one of
// the protocol's error values otherwise (EPERM, EIO, ENOMEM, EINVAL, ENOSPC,
// EOVERFLOW, ENOTSUP, ESHUTDOWN). A syscall.Errno anywhere in the chain
// (errors.As) chooses the value; unknown errors become EIO.
func Errno(err error) uint32 {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return errnoValue(e)
	}
	if errors.Is(err, context.Canceled) {
		return ESHUTDOWN
	}
	return EIO
}

func errnoValue(e syscall.Errno) uint32 {
	switch e {
	case 0:
		// A zero Errno wrapped in an error is still a failure.
		return EIO
	case syscall.EPERM, syscall.EROFS, syscall.EACCES:
		return EPERM
	case syscall.EIO:
		return EIO
	case syscall.ENOMEM:
		return ENOMEM
	case syscall.EINVAL:
		return EINVAL
	case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
		return ENOSPC
	case syscall.EOVERFLOW:
		return EOVERFLOW
	case syscall.ENOTSUP:
		return ENOTSUP
	case syscall.ESHUTDOWN:
		return ESHUTDOWN
	}
	return EIO
}

// ReplyError is an error reply from an NBD server, as the Client returns
// it. It unwraps to the syscall.Errno of the reply, so
// errors.Is(err, syscall.ENOSPC) works and Errno(err) gives the value back.
type ReplyError struct {
	Command uint16
	Offset  uint64
	Length  uint32
	Errno   syscall.Errno
}

func (e *ReplyError) Error() string {
	return fmt.Sprintf("nbd: %s offset %d length %d: server replied %v (errno %d)",
		CommandName(e.Command), e.Offset, e.Length, e.Errno, uint32(e.Errno))
}

func (e *ReplyError) Unwrap() error { return e.Errno }
