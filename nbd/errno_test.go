package nbd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"testing"
)

func TestErrno(t *testing.T) {
	tests := []struct {
		err  error
		want uint32
	}{
		{nil, 0},
		{syscall.EIO, EIO},
		{syscall.EPERM, EPERM},
		{syscall.EROFS, EPERM},
		{syscall.EACCES, EPERM},
		{syscall.ENOMEM, ENOMEM},
		{syscall.EINVAL, EINVAL},
		{syscall.ENOSPC, ENOSPC},
		{syscall.EDQUOT, ENOSPC},
		{syscall.EFBIG, ENOSPC},
		{syscall.EOVERFLOW, EOVERFLOW},
		{syscall.ENOTSUP, ENOTSUP},
		{syscall.ESHUTDOWN, ESHUTDOWN},
		{syscall.ENOENT, EIO},
		{syscall.Errno(0), EIO},
		{fmt.Errorf("rbd_write: %w", syscall.ENOSPC), ENOSPC},
		{&ReplyError{Command: CmdWrite, Errno: syscall.EPERM}, EPERM},
		{context.Canceled, ESHUTDOWN},
		{io.ErrUnexpectedEOF, EIO},
		{errors.New("anything"), EIO},
	}
	for _, tt := range tests {
		if got := Errno(tt.err); got != tt.want {
			t.Errorf("Errno(%v) = %d, want %d", tt.err, got, tt.want)
		}
	}
}

func TestReplyErrorIs(t *testing.T) {
	err := error(&ReplyError{Command: CmdRead, Offset: 512, Length: 4096, Errno: syscall.EINVAL})
	if !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("errors.Is(%v, EINVAL) = false", err)
	}
	want := "nbd: READ offset 512 length 4096: server replied invalid argument (errno 22)"
	if err.Error() != want {
		t.Fatalf("Error() = %q, want %q", err.Error(), want)
	}
}
