package rbdio

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
)

// Kinds of failure. Every error rbdio returns is an *Error that matches
// one of these with errors.Is (when one applies) and also unwraps to the
// syscall.Errno Ceph reported, so nbd.Errno turns it into the right NBD
// reply and callers can test for both.
var (
	// ErrNotFound: the pool, namespace, image, snapshot or metadata key
	// does not exist.
	ErrNotFound = errors.New("not found")
	// ErrExists: an image or snapshot of that name already exists.
	ErrExists = errors.New("already exists")
	// ErrHasChildren: the image or snapshot has clones, so it cannot be
	// removed or unprotected.
	ErrHasChildren = errors.New("has clones")
	// ErrHasSnapshots: the image still has snapshots, so it cannot be
	// removed.
	ErrHasSnapshots = errors.New("has snapshots")
	// ErrProtected: the snapshot is protected, so it cannot be removed.
	ErrProtected = errors.New("snapshot is protected")
	// ErrNotProtected: the snapshot must be protected first (to clone it).
	ErrNotProtected = errors.New("snapshot is not protected")
	// ErrLocked: another client holds the image's exclusive lock.
	ErrLocked = errors.New("locked by another client")
	// ErrBusy: the image is open somewhere else (it has watchers) or an
	// operation on it is in progress.
	ErrBusy = errors.New("busy")
	// ErrReadOnly: a write to an image opened read-only or at a snapshot.
	ErrReadOnly = errors.New("read-only")
	// ErrPermission: cephx refused the client (wrong key, id or caps).
	ErrPermission = errors.New("permission denied")
	// ErrUnreachable: no monitor answered in time.
	ErrUnreachable = errors.New("cluster unreachable")
	// ErrInvalid: a bad argument (size, name, feature set...).
	ErrInvalid = errors.New("invalid argument")
	// ErrClosed: the image or connection was closed.
	ErrClosed = errors.New("closed")
)

// Error describes a failed rbdio call: what was done, on what, which
// librbd or librados function failed with which errno, and what to do.
type Error struct {
	Op     string        // what was being done: "open image", "create snapshot"
	Object string        // what it was done to: "rbd/base@snap1", "pool rbd"
	Func   string        // the librbd/librados C function that failed, if any
	Errno  syscall.Errno // the errno Ceph returned (0 when rbdio found the problem itself)
	Kind   error         // one of the Err* kinds above, or nil
	Hint   string        // how to fix it, when there is something to say
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("rbdio: ")
	b.WriteString(e.Op)
	if e.Object != "" {
		b.WriteString(" ")
		b.WriteString(e.Object)
	}
	b.WriteString(": ")
	switch {
	case e.Kind != nil:
		b.WriteString(e.Kind.Error())
	case e.Errno != 0:
		b.WriteString(e.Errno.Error())
	default:
		b.WriteString("failed")
	}
	if e.Func != "" || e.Errno != 0 {
		b.WriteString(" (")
		if e.Func != "" {
			b.WriteString(e.Func)
			if e.Errno != 0 {
				b.WriteString(": ")
			}
		}
		if e.Errno != 0 {
			fmt.Fprintf(&b, "%s, errno %d", errnoName(e.Errno), int(e.Errno))
		}
		b.WriteString(")")
	}
	if e.Hint != "" {
		b.WriteString("; ")
		b.WriteString(e.Hint)
	}
	return b.String()
}

// Unwrap gives the kind and the errno, so errors.Is(err, ErrNotFound),
// errors.Is(err, syscall.ENOENT) and errors.As(err, &syscall.Errno) all
// work.
func (e *Error) Unwrap() []error {
	errs := make([]error, 0, 2)
	if e.Kind != nil {
		errs = append(errs, e.Kind)
	}
	// The errno as Ceph reported it: what an NBD client is told is
	// nbd.Errno's decision, not ours.
	if e.Errno != 0 {
		errs = append(errs, e.Errno)
	}
	return errs
}

// errnoName is the symbolic name of common errnos, for messages.
func errnoName(e syscall.Errno) string {
	switch e {
	case syscall.ENOENT:
		return "ENOENT"
	case syscall.EEXIST:
		return "EEXIST"
	case syscall.EBUSY:
		return "EBUSY"
	case syscall.ENOTEMPTY:
		return "ENOTEMPTY"
	case syscall.EACCES:
		return "EACCES"
	case syscall.EPERM:
		return "EPERM"
	case syscall.EINVAL:
		return "EINVAL"
	case syscall.EROFS:
		return "EROFS"
	case syscall.ENOSPC:
		return "ENOSPC"
	case syscall.EDQUOT:
		return "EDQUOT"
	case syscall.ETIMEDOUT:
		return "ETIMEDOUT"
	case syscall.ESHUTDOWN:
		return "ESHUTDOWN (blocklisted?)"
	case syscall.EIO:
		return "EIO"
	case syscall.ENOTSUP:
		return "EOPNOTSUPP"
	case syscall.ENOSYS:
		return "ENOSYS"
	case syscall.ERANGE:
		return "ERANGE"
	}
	return e.Error()
}

// kindOf is the default kind for an errno; callers override it where the
// operation knows better (ENOTEMPTY means "has snapshots" for a remove).
func kindOf(e syscall.Errno) error {
	switch e {
	case syscall.ENOENT:
		return ErrNotFound
	case syscall.EEXIST:
		return ErrExists
	case syscall.EBUSY:
		return ErrBusy
	case syscall.EACCES, syscall.EPERM:
		return ErrPermission
	case syscall.ETIMEDOUT:
		return ErrUnreachable
	case syscall.EROFS:
		return ErrReadOnly
	case syscall.EINVAL, syscall.EDOM, syscall.ERANGE:
		return ErrInvalid
	}
	return nil
}

// cephErrno extracts the errno from a go-ceph error (its typed errors
// carry ErrorCode()) or from a syscall.Errno. ok is false for errors that
// carry none (go-ceph's argument checks, for example).
func cephErrno(err error) (syscall.Errno, bool) {
	var coded interface{ ErrorCode() int }
	if errors.As(err, &coded) {
		c := coded.ErrorCode()
		if c < 0 {
			c = -c
		}
		return syscall.Errno(c), true
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e, true
	}
	return 0, false
}

// wrap turns a go-ceph error into an *Error for op on object, made by
// the C function fn. Kind defaults from the errno. A nil err gives nil.
func wrap(err error, op, object, fn string) *Error {
	if err == nil {
		return nil
	}
	e := &Error{Op: op, Object: object, Func: fn}
	if code, ok := cephErrno(err); ok {
		e.Errno = code
		e.Kind = kindOf(code)
	} else {
		e.Kind = ErrInvalid
		e.Hint = err.Error()
	}
	return e
}

// errnoErr makes an *Error from a negative return code of a C call.
func errnoErr(ret int, op, object, fn string) *Error {
	if ret < 0 {
		ret = -ret
	}
	code := syscall.Errno(ret)
	return &Error{Op: op, Object: object, Func: fn, Errno: code, Kind: kindOf(code)}
}

// with sets the kind and hint and returns e, for one-line returns.
func (e *Error) with(kind error, hint string) *Error {
	if kind != nil {
		e.Kind = kind
	}
	if hint != "" {
		e.Hint = hint
	}
	return e
}
