package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// span is a unit of the backend suite's ranges: larger than a page and
// than the file backend's hole granularity, so writes, discards and
// zeroes cross those boundaries.
const span = 64 << 10

// backendSuite checks the behaviour every writable Backend here must
// have, against an in-test model of the expected contents. size must be
// at least 1 MiB and the backend must start zeroed.
func backendSuite(t *testing.T, b Backend) {
	t.Helper()
	size := b.Size()
	model := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	check := func(t *testing.T, what string) {
		t.Helper()
		got := make([]byte, size)
		if n, err := b.ReadAt(got, 0); n != len(got) || (err != nil && err != io.EOF) {
			t.Fatalf("%s: ReadAt whole = %d, %v", what, n, err)
		}
		if !bytes.Equal(got, model) {
			i := 0
			for got[i] == model[i] {
				i++
			}
			t.Fatalf("%s: contents differ from the model first at byte %d: got %#x want %#x", what, i, got[i], model[i])
		}
	}
	write := func(t *testing.T, off int64, n int) {
		t.Helper()
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(rng.Uint32()) | 1
		}
		if k, err := b.WriteAt(p, off); k != n || err != nil {
			t.Fatalf("WriteAt(%d, %d) = %d, %v", off, n, k, err)
		}
		copy(model[off:], p)
	}

	t.Run("starts zero", func(t *testing.T) { check(t, "fresh") })
	t.Run("unaligned writes across chunks", func(t *testing.T) {
		write(t, 0, 1)
		write(t, 4095, 2)
		write(t, span-3, 10)
		write(t, 3*span+100, 2*span+77)
		write(t, size-5, 5)
		check(t, "after writes")
	})
	t.Run("read past end", func(t *testing.T) {
		p := make([]byte, 10)
		n, err := b.ReadAt(p, size-4)
		if n != 4 || err != io.EOF || !bytes.Equal(p[:4], model[size-4:]) {
			t.Fatalf("ReadAt across the end = %d, %v", n, err)
		}
		if n, err := b.ReadAt(p, size); n != 0 || err != io.EOF {
			t.Fatalf("ReadAt at the end = %d, %v, want 0, EOF", n, err)
		}
	})
	if f, ok := b.(FUAWriter); ok {
		t.Run("fua write", func(t *testing.T) {
			p := bytes.Repeat([]byte{0xfa}, 8192)
			if n, err := f.WriteAtFUA(p, 4096+512); n != len(p) || err != nil {
				t.Fatalf("WriteAtFUA = %d, %v", n, err)
			}
			copy(model[4096+512:], p)
			check(t, "after FUA write")
		})
	}
	t.Run("flush", func(t *testing.T) {
		if err := b.Flush(); err != nil {
			t.Fatal(err)
		}
	})
	if d, ok := b.(Discarder); ok {
		t.Run("discard", func(t *testing.T) {
			write(t, 0, 4*span)
			// TRIM may keep data or zero it; these backends zero it.
			if err := d.Discard(512, 2*span); err != nil {
				t.Fatal(err)
			}
			clear(model[512 : 512+2*span])
			check(t, "after discard")
		})
	}
	if z, ok := b.(ZeroWriter); ok {
		for _, unmap := range []bool{true, false} {
			t.Run("write zeroes unmap="+map[bool]string{true: "yes", false: "no"}[unmap], func(t *testing.T) {
				write(t, 0, 4*span)
				if err := z.WriteZeroes(100, span+4000, unmap); err != nil {
					t.Fatal(err)
				}
				clear(model[100 : 100+span+4000])
				if err := z.WriteZeroes(2*span, 2*span, unmap); err != nil {
					t.Fatal(err)
				}
				clear(model[2*span : 4*span])
				check(t, "after write zeroes")
			})
		}
	}
	t.Run("concurrent disjoint writes", func(t *testing.T) {
		const workers, per = 8, 32
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(w), 9))
				p := make([]byte, 4096)
				for i := range per {
					off := int64((i*workers + w) * 4096 % int(size-4096))
					for j := range p {
						p[j] = byte(r.Uint32())
					}
					if _, err := b.WriteAt(p, off); err != nil {
						t.Error(err)
						return
					}
					got := make([]byte, 4096)
					if _, err := b.ReadAt(got, off); err != nil && err != io.EOF {
						t.Error(err)
						return
					}
					if !bytes.Equal(got, p) {
						t.Errorf("read back at %d differs", off)
						return
					}
				}
			})
		}
		wg.Wait()
	})
}

func TestMemoryBackend(t *testing.T) {
	backendSuite(t, NewMemory(8<<20+123))
}

func TestMemoryIsSparse(t *testing.T) {
	const hole = 1 << 39
	m := NewMemory(1 << 40) // 1 TiB costs address space, not memory
	if a := uintptr(unsafe.Pointer(unsafe.SliceData(m.data))); a%hugePageSize != 0 {
		t.Fatalf("mapping starts at %#x, not on a %d-byte boundary: no huge pages", a, hugePageSize)
	}
	own := func(off, length int64) int { return ownedPages(t, m, off, length) }
	p := make([]byte, 4096)
	if _, err := m.ReadAt(p, hole); err != nil {
		t.Fatal(err)
	}
	// The read maps the huge zero page on most kernels; some (6.18 seen)
	// fault in a real huge page for a read of an advised region. Either
	// way a read costs at most the one huge page it touched, never its
	// neighbours.
	if kb := anonymousKB(t, m); kb > hugePageSize>>10 {
		t.Fatalf("after a read: %d kB of anonymous memory in the mapping, want at most one huge page", kb)
	}
	if n := own(hole-hugePageSize, hugePageSize) + own(hole+hugePageSize, hugePageSize); n != 0 {
		t.Fatalf("after a read: %d pages of memory next to the page read, want 0", n)
	}
	p[0] = 1
	m.WriteAt(p, hole)
	m.WriteAt(p, hole+span)
	// With huge pages a write takes its whole 2 MiB page, without them
	// just its own pages; never the neighbouring huge pages.
	if n := own(hole, hugePageSize); n < 2 {
		t.Fatalf("after two writes: %d pages of memory, want at least 2", n)
	}
	if n := own(hole-hugePageSize, hugePageSize) + own(hole+hugePageSize, hugePageSize); n != 0 {
		t.Fatalf("after two writes: %d pages of memory outside their huge page", n)
	}
	if err := m.Discard(hole, hugePageSize); err != nil {
		t.Fatal(err)
	}
	if n := own(hole, hugePageSize); n != 0 {
		t.Fatalf("after discard: %d pages of memory, want 0", n)
	}
	if _, err := m.ReadAt(p, hole); err != nil || p[0] != 0 {
		t.Fatalf("after discard: read %#x, %v; want zeroes", p[0], err)
	}
	if err := m.WriteZeroes(0, 2*span, false); err != nil {
		t.Fatal(err)
	}
	if n, want := own(0, 2*span), 2*span/os.Getpagesize(); n != want {
		t.Fatalf("after NO_HOLE write zeroes: %d pages of memory, want %d (no hole)", n, want)
	}
}

// ownedPages counts the pages of m's mapping in [off, off+length) backed
// by memory of their own, from /proc/self/pagemap: present and mapped
// only here (a never-written page read maps the shared zero page).
func ownedPages(t *testing.T, m *Memory, off, length int64) int {
	t.Helper()
	const (
		present   = 1 << 63
		exclusive = 1 << 56 // PM_MMAP_EXCLUSIVE, Linux 4.2 and later
	)
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Fatalf("counting the pages of the mapping needs /proc/self/pagemap: %v", err)
	}
	defer f.Close()
	page := int64(os.Getpagesize())
	addr := int64(uintptr(unsafe.Pointer(unsafe.SliceData(m.data)))) + off
	buf := make([]byte, (length+page-1)/page*8)
	if _, err := f.ReadAt(buf, addr/page*8); err != nil {
		t.Fatalf("read pagemap: %v", err)
	}
	n := 0
	for i := 0; i < len(buf); i += 8 {
		if e := binary.LittleEndian.Uint64(buf[i:]); e&present != 0 && e&exclusive != 0 {
			n++
		}
	}
	return n
}

// Each Memory reserves its size in address space, so the mapping must go
// when the Memory does: 300 exports of 1 TiB need more than the 128 TiB a
// process has on x86-64, and fit only if the unreachable ones are unmapped.
func TestMemoryIsUnmappedWhenUnreachable(t *testing.T) {
	for i := range 300 {
		var m *Memory
		var err error
		for try := 0; ; try++ {
			if m, err = MapMemory(1 << 40); err == nil {
				break
			}
			if try == 100 {
				t.Fatalf("export %d: %v (the earlier ones were not unmapped)", i, err)
			}
			runtime.GC() // the cleanups run after a collection
			time.Sleep(10 * time.Millisecond)
		}
		if _, err := m.WriteAt([]byte{1}, int64(i)<<20); err != nil {
			t.Fatal(err)
		}
	}
}

func TestMemoryBounds(t *testing.T) {
	m := NewMemory(1000)
	if n, err := m.WriteAt(make([]byte, 10), 995); n != 5 || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("write across the end = %d, %v; want 5, ENOSPC", n, err)
	}
	if _, err := m.ReadAt(make([]byte, 1), -1); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("negative offset: %v", err)
	}
	if err := m.Discard(900, 200); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("discard past the end: %v", err)
	}
}

func newTestFile(t *testing.T, dir string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFileBackend(t *testing.T) {
	dirs := map[string]string{"tempdir": t.TempDir()}
	// tmpfs lacks FALLOC_FL_ZERO_RANGE: the fallback path runs there.
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		d, err := os.MkdirTemp("/dev/shm", "nbd-test-")
		if err == nil {
			t.Cleanup(func() { os.RemoveAll(d) })
			dirs["shm"] = d
		}
	}
	for name, dir := range dirs {
		t.Run(name, func(t *testing.T) {
			f, err := OpenFile(newTestFile(t, dir, 8<<20+123), false)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			backendSuite(t, f)
		})
	}
}

func TestFileBackendReadOnly(t *testing.T) {
	p := newTestFile(t, t.TempDir(), 1<<20)
	f, err := OpenFile(p, true)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{1}, 0); Errno(err) != EPERM {
		t.Fatalf("write to read-only file: %v (errno %d), want EPERM", err, Errno(err))
	}
	if err := f.Discard(0, 4096); Errno(err) != EPERM {
		t.Fatalf("discard on read-only file: %v", err)
	}
	if f.Size() != 1<<20 {
		t.Fatalf("size %d", f.Size())
	}
}

func TestOpenFileErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := OpenFile(filepath.Join(dir, "missing"), false); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v, want ErrNotExist", err)
	}
	if _, err := OpenFile(dir, true); err == nil {
		t.Fatal("a directory opened as a file backend")
	}
}

func TestFileDiscardPunchesHoles(t *testing.T) {
	p := newTestFile(t, t.TempDir(), 4<<20)
	f, err := OpenFile(p, false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := bytes.Repeat([]byte{0xab}, 4<<20)
	f.WriteAt(data, 0)
	f.Flush()
	blocks := func() int64 {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return st.Sys().(*syscall.Stat_t).Blocks
	}
	before := blocks()
	if err := f.Discard(0, 4<<20); err != nil {
		t.Fatal(err)
	}
	if f.noPunch.Load() {
		t.Skip("file system of t.TempDir() cannot punch holes")
	}
	if after := blocks(); after >= before {
		t.Fatalf("discard freed nothing: %d blocks before, %d after", before, after)
	}
}

// anonymousKB is the Anonymous: line of m's mapping in /proc/self/smaps.
func anonymousKB(t *testing.T, m *Memory) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatalf("counting the memory of the mapping needs /proc/self/smaps: %v", err)
	}
	start := fmt.Sprintf("%x-", uintptr(unsafe.Pointer(unsafe.SliceData(m.data))))
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, start) {
			in = true
			continue
		}
		if v, ok := strings.CutPrefix(line, "Anonymous:"); in && ok {
			var kb int
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return kb
		}
	}
	t.Fatalf("no mapping starting at %s in /proc/self/smaps", start)
	return 0
}
