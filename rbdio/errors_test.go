package rbdio

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/ceph/go-ceph/rbd"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

func TestErrorMessageNamesObjectFunctionAndFix(t *testing.T) {
	e := &Error{Op: "open image", Object: "rbd/base", Func: "rbd_open", Errno: syscall.ENOENT,
		Kind: ErrNotFound, Hint: "create it first"}
	want := "rbdio: open image rbd/base: not found (rbd_open: ENOENT, errno 2); create it first"
	if got := e.Error(); got != want {
		t.Fatalf("Error() = %q\nwant      %q", got, want)
	}
}

func TestErrorMatchesKindAndErrno(t *testing.T) {
	var err error = fmt.Errorf("layer x: %w", &Error{Op: "remove image", Object: "rbd/x",
		Func: "rbd_remove", Errno: syscall.EBUSY, Kind: ErrHasChildren})
	if !errors.Is(err, ErrHasChildren) {
		t.Error("errors.Is(err, ErrHasChildren) = false")
	}
	if !errors.Is(err, syscall.EBUSY) {
		t.Error("errors.Is(err, EBUSY) = false")
	}
	if errors.Is(err, ErrNotFound) {
		t.Error("errors.Is(err, ErrNotFound) = true")
	}
	var e *Error
	if !errors.As(err, &e) || e.Func != "rbd_remove" {
		t.Errorf("errors.As(*Error) = %v, %+v", errors.As(err, &e), e)
	}
}

// A data-path error unwraps to the errno Ceph returned, and nbd.Errno
// alone chooses what the NBD client is told.
func TestIOErrorsMapToNBDReplies(t *testing.T) {
	for _, tc := range []struct {
		ceph syscall.Errno
		nbd  uint32
	}{
		{syscall.EROFS, nbd.EPERM},
		{syscall.EPERM, nbd.EPERM},
		{syscall.ENOSPC, nbd.ENOSPC},
		{syscall.EDQUOT, nbd.ENOSPC},
		{syscall.EINVAL, nbd.EINVAL},
		{syscall.ESHUTDOWN, nbd.ESHUTDOWN},
		{syscall.ETIMEDOUT, nbd.EIO},
		{syscall.ENOENT, nbd.EIO},
		{syscall.Errno(108), nbd.ESHUTDOWN}, // EBLOCKLISTED is ESHUTDOWN
	} {
		im := &Image{spec: "rbd/img"}
		err := im.ioError("rbd_aio_write", -int64(tc.ceph), 4096, 512)
		if !errors.Is(err, tc.ceph) {
			t.Errorf("ceph %v: errors.Is(err, %v) = false: the raw errno is lost; err = %v", tc.ceph, tc.ceph, err)
		}
		if got := nbd.Errno(err); got != tc.nbd {
			t.Errorf("ceph %v: nbd.Errno = %d, want %d", tc.ceph, got, tc.nbd)
		}
		if !strings.Contains(err.Error(), "rbd_aio_write") || !strings.Contains(err.Error(), "offset 4096") {
			t.Errorf("message lacks function or offset: %v", err)
		}
	}
}

func TestReadOnlyWriteIsEROFS(t *testing.T) {
	im := &Image{spec: "rbd/img@s1", snap: "s1", readOnly: true}
	_, err := im.WriteAt(make([]byte, 512), 0)
	if !errors.Is(err, ErrReadOnly) || !errors.Is(err, syscall.EROFS) {
		t.Fatalf("WriteAt on a snapshot: %v; want ErrReadOnly and EROFS", err)
	}
	if nbd.Errno(err) != nbd.EPERM {
		t.Errorf("nbd.Errno = %d, want EPERM (NBD's value for a read-only export)", nbd.Errno(err))
	}
	for name, err := range map[string]error{
		"Discard":     im.Discard(0, 4096),
		"WriteZeroes": im.WriteZeroes(0, 4096, true),
	} {
		if !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s: %v, want EROFS", name, err)
		}
	}
}

// go-ceph's typed errors carry the errno; wrap finds it and picks the kind.
func TestWrapGoCephErrors(t *testing.T) {
	e := wrap(rbd.ErrNotFound, "open image", "rbd/x", "rbd_open")
	if e.Errno != syscall.ENOENT || !errors.Is(e, ErrNotFound) || !errors.Is(e, syscall.ENOENT) {
		t.Errorf("wrap(rbd.ErrNotFound) = %+v", e)
	}
	e = wrap(rbd.ErrExist, "create image", "rbd/x", "rbd_create4")
	if e.Errno != syscall.EEXIST || !errors.Is(e, ErrExists) {
		t.Errorf("wrap(rbd.ErrExist) = %+v", e)
	}
	// go-ceph's own argument checks carry no errno.
	e = wrap(rbd.ErrNoName, "open image", "rbd/", "rbd_open")
	if e.Errno != 0 || !errors.Is(e, ErrInvalid) {
		t.Errorf("wrap(rbd.ErrNoName) = %+v", e)
	}
	if wrap(nil, "x", "y", "z") != nil {
		t.Error("wrap(nil) != nil")
	}
}

func TestFeatures(t *testing.T) {
	f, err := ParseFeatures("layering, exclusive-lock,object-map")
	if err != nil || f != FeatureLayering|FeatureExclusiveLock|FeatureObjectMap {
		t.Fatalf("ParseFeatures = %v, %v", f, err)
	}
	if s := DefaultFeatures.String(); s != "layering,exclusive-lock,object-map,fast-diff,deep-flatten" {
		t.Errorf("DefaultFeatures.String() = %q", s)
	}
	if _, err := ParseFeatures("layering,journaling"); !errors.Is(err, ErrInvalid) {
		t.Errorf("ParseFeatures(journaling) = %v, want ErrInvalid", err)
	}
	if err := (FeatureLayering | FeatureObjectMap).check(); !errors.Is(err, ErrInvalid) {
		t.Errorf("object-map without exclusive-lock: %v, want ErrInvalid", err)
	}
	if err := (FeatureExclusiveLock | FeatureFastDiff).check(); !errors.Is(err, ErrInvalid) {
		t.Errorf("fast-diff without object-map: %v, want ErrInvalid", err)
	}
}

func TestConfigDefaults(t *testing.T) {
	c := Config{}.withDefaults()
	if c.ID != "admin" || c.Cluster != "ceph" || c.Pool != "rbd" || c.ConnectTimeout != DefaultConnectTimeout {
		t.Errorf("defaults = %+v", c)
	}
	c = Config{ID: "u", Cluster: "c", Pool: "p", ConnectTimeout: 1}.withDefaults()
	if c.ID != "u" || c.Cluster != "c" || c.Pool != "p" || c.ConnectTimeout != 1 {
		t.Errorf("explicit values overwritten: %+v", c)
	}
}

func TestValidName(t *testing.T) {
	for _, bad := range []string{"", "a/b", "a@b", "a\nb"} {
		if err := validName("image", bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("validName(%q) = %v", bad, err)
		}
	}
	if err := validName("image", "layer-1_x.y"); err != nil {
		t.Errorf("validName(ok) = %v", err)
	}
}
