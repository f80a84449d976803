package nbd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// File is a Backend over a regular file or a block device: pread and
// pwrite on the descriptor (through the page cache), fdatasync for Flush,
// fallocate for Discard (punch a hole) and WriteZeroes (punch a hole, or
// zero-range without unmapping). It is safe for concurrent use.
type File struct {
	f        *os.File
	fd       int
	size     int64
	readOnly bool
	// Set once the file system refuses a fallocate mode, so later calls
	// go straight to the fallback instead of failing a syscall each time.
	noPunch     atomic.Bool
	noZeroRange atomic.Bool
	noDsync     atomic.Bool
	// inMemory: the file lives on tmpfs or ramfs, whose IO never waits
	// on a device.
	inMemory bool
}

// OpenFile opens an existing regular file or block device as a backend.
// Its size is fixed when opened. readOnly opens it O_RDONLY; writes then
// fail with EROFS (an EPERM reply).
func OpenFile(path string, readOnly bool) (*File, error) {
	flags := os.O_RDWR
	if readOnly {
		flags = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open file backend: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open file backend: %w", err)
	}
	if !st.Mode().IsRegular() && st.Mode()&os.ModeDevice == 0 {
		f.Close()
		return nil, fmt.Errorf("open file backend %s: %s is neither a regular file nor a block device", path, st.Mode().Type())
	}
	// Seek works for both regular files and block devices (whose Stat
	// size is 0).
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open file backend %s: size: %w", path, err)
	}
	// Fd switches the descriptor to blocking mode, which is what pread
	// and pwrite on a regular file or a block device want anyway.
	b := &File{f: f, fd: int(f.Fd()), size: size, readOnly: readOnly}
	var fs unix.Statfs_t
	if st.Mode().IsRegular() && unix.Fstatfs(b.fd, &fs) == nil {
		b.inMemory = fs.Type == unix.TMPFS_MAGIC || fs.Type == unix.RAMFS_MAGIC
	}
	return b, nil
}

// NonBlocking reports whether the file is on tmpfs or ramfs: pread and
// pwrite there are memory copies that never wait on a disk, so the IO
// loop may serve them on its reading goroutine. Files on disks say no,
// as a page-cache miss would stall the connection.
func (b *File) NonBlocking() bool { return b.inMemory }

// Close closes the file. Requests must not be in flight.
func (b *File) Close() error { return b.f.Close() }

// Size is the size the file had when opened.
func (b *File) Size() int64 { return b.size }

func (b *File) String() string { return "file:" + b.f.Name() }

// ReadAt reads with pread(2) until p is full or the file ends.
func (b *File) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		k, err := unix.Pread(b.fd, p[n:], off+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if k == 0 {
			return n, io.EOF
		}
		n += k
	}
	return n, nil
}

// WriteAt writes with pwrite(2) until all of p is written.
func (b *File) WriteAt(p []byte, off int64) (int, error) {
	if b.readOnly {
		return 0, syscall.EROFS
	}
	n := 0
	for n < len(p) {
		k, err := unix.Pwrite(b.fd, p[n:], off+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		n += k
	}
	return n, nil
}

// WriteAtFUA writes with pwritev2(RWF_DSYNC), which makes just this
// range durable; kernels or file systems without it get pwrite and
// fdatasync.
func (b *File) WriteAtFUA(p []byte, off int64) (int, error) {
	if b.readOnly {
		return 0, syscall.EROFS
	}
	if !b.noDsync.Load() {
		iov := [][]byte{p}
		n := 0
		for n < len(p) {
			iov[0] = p[n:]
			k, err := unix.Pwritev2(b.fd, iov, off+int64(n), unix.RWF_DSYNC)
			if err == unix.EINTR {
				continue
			}
			if err == unix.ENOSYS || err == unix.EOPNOTSUPP || (err == unix.EINVAL && n == 0) {
				b.noDsync.Store(true)
				break
			}
			if err != nil {
				return n, err
			}
			n += k
		}
		if n == len(p) {
			return n, nil
		}
	}
	n, err := b.WriteAt(p, off)
	if err == nil {
		err = b.Flush()
	}
	return n, err
}

// Flush makes completed writes durable with fdatasync(2).
func (b *File) Flush() error {
	if b.readOnly {
		return nil
	}
	for {
		err := unix.Fdatasync(b.fd)
		if err != unix.EINTR {
			return err
		}
	}
}

// Discard punches a hole (fallocate PUNCH_HOLE|KEEP_SIZE). Where the file
// system cannot, the range is left as it is: TRIM is only a hint.
func (b *File) Discard(off, length int64) error {
	if b.readOnly {
		return syscall.EROFS
	}
	err := b.punch(off, length)
	if errors.Is(err, unix.EOPNOTSUPP) {
		return nil
	}
	return err
}

// WriteZeroes makes the range read as zeroes: with mayUnmap by punching a
// hole, without it (NO_HOLE) by fallocate ZERO_RANGE, falling back to
// punching and re-allocating the range, and finally to writing zeroes.
func (b *File) WriteZeroes(off, length int64, mayUnmap bool) error {
	if b.readOnly {
		return syscall.EROFS
	}
	if mayUnmap {
		if err := b.punch(off, length); !errors.Is(err, unix.EOPNOTSUPP) {
			return err
		}
	}
	if !b.noZeroRange.Load() {
		err := b.fallocate(unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if !errors.Is(err, unix.EOPNOTSUPP) {
			return err
		}
		b.noZeroRange.Store(true)
	}
	// tmpfs, for one, has no ZERO_RANGE but punches holes and allocates.
	if err := b.punch(off, length); err == nil {
		err = b.fallocate(unix.FALLOC_FL_KEEP_SIZE, off, length)
		if !errors.Is(err, unix.EOPNOTSUPP) {
			return err
		}
	} else if !errors.Is(err, unix.EOPNOTSUPP) {
		return err
	}
	return writeZeroes(b, off, length)
}

func (b *File) punch(off, length int64) error {
	if b.noPunch.Load() {
		return unix.EOPNOTSUPP
	}
	err := b.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if errors.Is(err, unix.EOPNOTSUPP) {
		b.noPunch.Store(true)
	}
	return err
}

func (b *File) fallocate(mode uint32, off, length int64) error {
	for {
		err := unix.Fallocate(b.fd, mode, off, length)
		if err != unix.EINTR {
			return err
		}
	}
}

// zeroBuf is a read-only source of zeroes for backends that can only
// write them.
var zeroBuf [128 << 10]byte

// writeZeroes writes length zero bytes at off with plain WriteAt calls.
func writeZeroes(b Backend, off, length int64) error {
	for length > 0 {
		k := min(length, int64(len(zeroBuf)))
		if _, err := b.WriteAt(zeroBuf[:k], off); err != nil {
			return err
		}
		off += k
		length -= k
	}
	return nil
}

// Extents reports the file's data as allocated and its holes as holes,
// from lseek SEEK_DATA and SEEK_HOLE (see Extenter). A file system
// without them (or a block device) reports everything as data, which is
// what lseek does for them too.
func (b *File) Extents(ctx context.Context, off, length int64, limit int) ([]Extent, error) {
	if off < 0 || length < 0 || off > b.size || length > b.size-off {
		return nil, syscall.EINVAL
	}
	var ext []Extent
	end := off + length
	for cur := off; cur < end && len(ext) < limit; {
		// lseek moves the shared file offset, which nothing else uses:
		// IO goes through pread and pwrite.
		data, err := unix.Seek(b.fd, cur, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break // no data after cur
		}
		if err != nil {
			if err == unix.EINVAL || err == unix.EOPNOTSUPP {
				return append(ext, Extent{Offset: cur, Length: end - cur}), nil
			}
			return nil, fmt.Errorf("file backend %s: SEEK_DATA at %d: %w", b.f.Name(), cur, err)
		}
		if data >= end {
			break
		}
		hole, err := unix.Seek(b.fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("file backend %s: SEEK_HOLE at %d: %w", b.f.Name(), data, err)
		}
		hole = min(hole, end)
		ext = append(ext, Extent{Offset: data, Length: hole - data})
		cur = hole
	}
	return ext, nil
}
