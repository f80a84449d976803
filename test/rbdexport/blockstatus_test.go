package rbdexport

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

// TestBlockStatusMap: an rbd: export answers base:allocation from
// librbd's diff iteration, so `nbdinfo --map` of an image with a
// little data shows the rest as holes, and nbdcopy without its own
// zero detection (-S 0) copies only that data. The image has the
// default features (object map, fast-diff): extents are whole 4 MiB
// objects. Before block status, nbdinfo --map failed (no
// base:allocation context).
func TestBlockStatusMap(t *testing.T) {
	testkit.Tool(t, "nbdinfo")
	testkit.Tool(t, "nbdcopy")
	c := cluster(t)
	const size = 64 << 20
	img := newImage(t, c, size)
	im, err := c.OpenImage(testContext(t), img, rbdio.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 64<<10)
	for i := range data {
		data[i] = byte(i%251 + 1)
	}
	// 64 KiB inside object 3, and 64 KiB straddling objects 9 and 10.
	for _, off := range []int64{13 << 20, 40<<20 - 32<<10} {
		if _, err := im.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := im.Close(); err != nil {
		t.Fatal(err)
	}

	exp := export(t, "--read-only", "rbd:rbd/"+img)
	var got []struct {
		Offset, Length int64
		Type           int
	}
	out := runTool(t, "nbdinfo", "--map", "--json", exp.uri)
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("nbdinfo --map --json: %v\n%s", err, out)
	}
	type ext struct{ off, len int64 }
	var dataExt []ext
	var end int64
	for _, e := range got {
		if e.Offset != end {
			t.Fatalf("map not contiguous at %d: %+v", end, got)
		}
		end += e.Length
		if e.Type == 0 {
			dataExt = append(dataExt, ext{e.Offset, e.Length})
		} else if e.Type != 3 {
			t.Fatalf("extent type %d: %+v", e.Type, got)
		}
	}
	want := []ext{{12 << 20, 4 << 20}, {36 << 20, 8 << 20}}
	if end != size || !slices.Equal(dataExt, want) {
		t.Fatalf("nbdinfo --map: %+v\ndata extents %v, want %v over %d bytes", got, dataExt, want, size)
	}

	copyPath := filepath.Join(t.TempDir(), "copy.img")
	runTool(t, "nbdcopy", "-S", "0", exp.uri, copyPath)
	exp.stop(t)
	copied, err := os.ReadFile(copyPath)
	if err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(copied, readImage(t, c, img, rbdio.OpenOptions{})); i >= 0 {
		t.Fatalf("the sparse copy differs from the image at offset %d", i)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(copyPath, &st); err != nil {
		t.Fatal(err)
	}
	if a := st.Blocks * 512; a > 12<<20 {
		t.Fatalf("the copy of a 64 MiB image with 12 MiB of objects allocated takes %d bytes", a)
	}
}
