package clients

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// mapEntry is one line of `nbdinfo --map --json`.
type mapEntry struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
	Type   int   `json:"type"`
}

// sparseSource writes 1 MiB of random data at 4 MiB into a 16 MiB
// sparse file and returns its path and contents.
func sparseSource(t *testing.T, dir string) (string, []byte) {
	t.Helper()
	const size, at, n = 16 << 20, 4 << 20, 1 << 20
	rnd, data := testkit.RandomFile(t, dir, n, 13)
	all := make([]byte, size)
	copy(all[at:], data)
	p := sparseFile(t, dir, "sparse-src.img", size)
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, at); err != nil {
		t.Fatal(err)
	}
	os.Remove(rnd)
	return p, all
}

// allocated is the space a file takes on disk.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestBlockStatusSparseCopy: with base:allocation, nbdinfo --map and
// qemu-img map show the export's holes, and nbdcopy with its own zero
// detection off (-S 0) copies only the data: the copy's allocated
// blocks are the 1 MiB written, not the 16 MiB export. Before block
// status, the map was one data extent and the copy fully allocated.
func TestBlockStatusSparseCopy(t *testing.T) {
	dir := t.TempDir()
	src, data := sparseSource(t, dir)
	backing := sparseFile(t, dir, "backing.img", int64(len(data)))
	want := []mapEntry{{0, 4 << 20, 3}, {4 << 20, 1 << 20, 0}, {5 << 20, 11 << 20, 3}}
	for _, target := range []string{fmt.Sprintf("mem:%d", len(data)), "file:" + backing} {
		t.Run(strings.SplitN(target, ":", 2)[0], func(t *testing.T) {
			uri := export(t, target)
			// --target-is-zero: only the data is written, the export's
			// holes stay holes.
			runTool(t, "nbdcopy", "--target-is-zero", src, uri)
			var got []mapEntry
			out := runTool(t, "nbdinfo", "--map", "--json", uri)
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("nbdinfo --map --json: %v\n%s", err, out)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("nbdinfo --map: %+v\nwant %+v", got, want)
			}
			var qmap []struct {
				Start, Length int64
				Data          bool
			}
			out = runTool(t, "qemu-img", "map", "--output=json", "-f", "raw", uri)
			if err := json.Unmarshal([]byte(out), &qmap); err != nil {
				t.Fatalf("qemu-img map: %v\n%s", err, out)
			}
			if len(qmap) != 3 || qmap[0].Data || !qmap[1].Data || qmap[1].Start != 4<<20 || qmap[1].Length != 1<<20 || qmap[2].Data {
				t.Fatalf("qemu-img map: %+v, want data only at 4 MiB for 1 MiB", qmap)
			}

			copyPath := filepath.Join(t.TempDir(), "copy.img")
			runTool(t, "nbdcopy", "-S", "0", uri, copyPath)
			got2, err := os.ReadFile(copyPath)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got2, data) {
				t.Fatal("the sparse copy differs from the source")
			}
			if a := allocated(t, copyPath); a < 1<<20 || a > 2<<20 {
				t.Fatalf("the copy of a 16 MiB export with 1 MiB of data takes %d bytes on disk, want about 1 MiB", a)
			}
		})
	}
}
