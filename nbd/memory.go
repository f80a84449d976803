package nbd

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// hugePageSize is the size of a PMD-level transparent huge page on
// x86-64 and on arm64 with 4 KiB pages. The mapping starts on such a
// boundary so the kernel can back all of it with huge pages.
const hugePageSize = 2 << 20

// Memory is a sparse in-memory Backend: one private anonymous mapping of
// the export's size, outside the Go heap. The kernel gives it memory on
// first write; reads of never-written ranges see the shared zero page
// and cost nothing. Discard and WriteZeroes give whole pages back
// (MADV_DONTNEED).
//
// Why a mapping rather than chunks on the Go heap: random 4 KiB writes
// over an export larger than the CPU caches touch a new page almost
// every time. Advised MADV_HUGEPAGE, the mapping is backed by 2 MiB
// pages, so a 512 MiB export needs 256 TLB entries instead of 131072 (in
// a VM every miss is a two-dimensional page walk), and no chunk table,
// lock or allocation sits on the path (doc.go has the figures). The
// price: the first write into a 2 MiB region allocates all of it, so an
// export written sparsely at random costs up to 2 MiB per region it
// touches. The memory backend is for tests, demos and benchmarks of
// exports that fit in RAM.
//
// It is safe for concurrent use; overlapping concurrent writes land in
// some order, possibly interleaved, as on a disk without atomic writes.
// The mapping is unmapped once the Memory is unreachable.
type Memory struct {
	size int64
	data []byte // the mapping: len(data) == size
	// written has a bit per memPage of the export, set by a write and
	// cleared when Discard or WriteZeroes gives the page back: Extents
	// reports the set ones as allocated. The kernel cannot tell this
	// (mincore counts a page that was only read, which maps the shared
	// zero page, as resident), and it costs one load per page written
	// once the bit is set.
	written []atomic.Uint64
}

// memPage is the granularity of Memory's allocation map.
const memPage = 4096

// NewMemory returns an empty (all-zero) memory backend of size bytes.
// It panics where MapMemory fails, as a heap allocation of that size
// would: it is for tests and sizes known to fit.
func NewMemory(size int64) *Memory {
	m, err := MapMemory(size)
	if err != nil {
		panic(err)
	}
	return m
}

// MapMemory returns an empty (all-zero) memory backend of size bytes, or
// an error if it cannot be mapped: the whole size is mapped up front, so
// it must fit in the address space (and, under vm.overcommit_memory=2,
// which ignores MAP_NORESERVE, in the commit limit) even though memory
// is used only as it is written.
func MapMemory(size int64) (*Memory, error) {
	m := &Memory{size: max(size, 0)}
	if m.size == 0 {
		return m, nil
	}
	data, err := mapMemory(m.size)
	if err != nil {
		return nil, fmt.Errorf("nbd: memory backend of %d bytes: cannot map it: %w", m.size, err)
	}
	m.data = data
	m.written = make([]atomic.Uint64, (m.size+64*memPage-1)/(64*memPage))
	// The cleanup gets the mapping, not the Memory, so it does not keep
	// the Memory reachable. Every method keeps m alive while it uses
	// m.data (runtime.KeepAlive), so nothing touches an unmapped range.
	runtime.AddCleanup(m, unmapMemory, data)
	return m, nil
}

// mapMemory maps size bytes (rounded up to a page) of zeroed anonymous
// memory starting on a huge page boundary, advised for huge pages.
// MAP_NORESERVE: a sparse export must not reserve its whole size in
// swap up front. (unix.MmapPtr, not unix.Mmap: the latter records every
// mapping in a table of its own, which would keep an entry per Memory.)
func mapMemory(size int64) ([]byte, error) {
	if uint64(size) > uint64(^uint(0)>>1)-hugePageSize {
		return nil, syscall.ENOMEM
	}
	page := uintptr(unix.Getpagesize())
	used := (uintptr(size) + page - 1) &^ (page - 1)
	// Map one huge page more and trim both ends, so the start is aligned.
	raw, err := unix.MmapPtr(-1, 0, nil, used+hugePageSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, err
	}
	skip := (hugePageSize - uintptr(raw)%hugePageSize) % hugePageSize
	base := unsafe.Add(raw, skip)
	if skip > 0 {
		unix.MunmapPtr(raw, skip)
	}
	if tail := hugePageSize - skip; tail > 0 {
		unix.MunmapPtr(unsafe.Add(base, used), tail)
	}
	// Without transparent huge pages (disabled, or not on this
	// architecture) small pages work the same, only slower.
	data := unsafe.Slice((*byte)(base), used)
	unix.Madvise(data, unix.MADV_HUGEPAGE)
	return data[:size], nil
}

func unmapMemory(data []byte) {
	unix.MunmapPtr(unsafe.Pointer(unsafe.SliceData(data)), uintptr(cap(data)))
}

// Size is the export size in bytes.
func (m *Memory) Size() int64 { return m.size }

// Flush does nothing: memory has no volatile cache.
func (m *Memory) Flush() error { return nil }

// NonBlocking reports true: memory never waits, so the IO loop serves
// it on the reading goroutine.
func (m *Memory) NonBlocking() bool { return true }

func (m *Memory) String() string { return fmt.Sprintf("mem:%d", m.size) }

// ReadAt copies from the export; unwritten ranges read as zeroes.
func (m *Memory) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, syscall.EINVAL
	}
	if off >= m.size {
		return 0, io.EOF
	}
	n := copy(p, m.data[off:])
	runtime.KeepAlive(m)
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt copies into the export. A write past the end stores what fits
// and fails with ENOSPC.
func (m *Memory) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, syscall.EINVAL
	}
	if off >= m.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, syscall.ENOSPC
	}
	n := copy(m.data[off:], p)
	runtime.KeepAlive(m)
	m.mark(off, int64(n), true)
	if n < len(p) {
		return n, syscall.ENOSPC
	}
	return n, nil
}

// Discard zeroes the range, giving the pages it covers entirely back to
// the kernel.
func (m *Memory) Discard(off, length int64) error {
	return m.zero(off, length, true)
}

// WriteZeroes zeroes the range. With mayUnmap the pages it covers
// entirely are given back; without it (NBD_CMD_FLAG_NO_HOLE) they are
// cleared in place and stay allocated.
func (m *Memory) WriteZeroes(off, length int64, mayUnmap bool) error {
	return m.zero(off, length, mayUnmap)
}

func (m *Memory) zero(off, length int64, unmap bool) error {
	if off < 0 || length < 0 || off > m.size || length > m.size-off {
		return syscall.EINVAL
	}
	defer runtime.KeepAlive(m)
	end := off + length
	page := int64(unix.Getpagesize())
	first := (off + page - 1) &^ (page - 1)
	last := end &^ (page - 1)
	if !unmap || first >= last {
		clear(m.data[off:end])
		if !unmap {
			m.mark(off, length, true) // NO_HOLE: allocated afterwards
		}
		return nil
	}
	// Pages partly zeroed keep their state; whole ones become holes.
	m.mark(first, last-first, false)
	clear(m.data[off:first])
	clear(m.data[last:end])
	// A private anonymous page given back reads as zeroes afterwards;
	// if the kernel refuses, clearing in place is still correct.
	if err := unix.Madvise(m.data[first:last], unix.MADV_DONTNEED); err != nil {
		clear(m.data[first:last])
	}
	return nil
}

// mark sets (or clears) the written bits of the memPages that
// [off, off+length) touches; clearing only those it covers entirely.
func (m *Memory) mark(off, length int64, set bool) {
	if length <= 0 {
		return
	}
	first, last := off/memPage, (off+length-1)/memPage
	if !set {
		first, last = (off+memPage-1)/memPage, (off+length)/memPage-1
	}
	for p := first; p <= last; {
		w := &m.written[p/64]
		// Bits p%64 up to last (or the word's end).
		hi := min(last-p/64*64, 63)
		mask := ^uint64(0) >> (63 - hi) &^ (1<<(p%64) - 1)
		if set {
			if w.Load()&mask != mask {
				w.Or(mask)
			}
		} else {
			w.And(^mask)
		}
		p = p/64*64 + 64
	}
}

// Extents reports the pages written (and not discarded since) as
// allocated, merged into runs; see Extenter.
func (m *Memory) Extents(ctx context.Context, off, length int64, limit int) ([]Extent, error) {
	if off < 0 || length < 0 || off > m.size || length > m.size-off {
		return nil, syscall.EINVAL
	}
	var ext []Extent
	end := off + length
	for p := off / memPage; p*memPage < end && len(ext) <= limit; p++ {
		w := m.written[p/64].Load()
		if w == 0 && p%64 == 0 {
			p += 63 // a whole word of holes
			continue
		}
		if w&(1<<(p%64)) == 0 {
			continue
		}
		a, b := max(p*memPage, off), min((p+1)*memPage, end)
		if n := len(ext); n > 0 && ext[n-1].Offset+ext[n-1].Length == a {
			ext[n-1].Length += b - a
			continue
		}
		if len(ext) == limit {
			break
		}
		ext = append(ext, Extent{Offset: a, Length: b - a})
	}
	return ext, nil
}
