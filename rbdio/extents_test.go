package rbdio

import (
	"slices"
	"testing"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/nbd"
)

// TestImageExtents: only what was written is reported allocated, with
// and without fast-diff (whole objects from the object map, or each
// object up to its size).
func TestImageExtents(t *testing.T) {
	c := testConn(t)
	const size = 64 << 20
	const obj = 4 << 20 // the default object size
	for _, tc := range []struct {
		name     string
		features Features
		// want is the allocation after writing 8 KiB at 9 MiB+4 KiB
		// and 4 KiB at 40 MiB.
		want []nbd.Extent
	}{
		{"fast-diff", DefaultFeatures, []nbd.Extent{{Offset: 2 * obj, Length: obj}, {Offset: 10 * obj, Length: obj}}},
		// Without the map librbd reports each object from its start to
		// the end of its data (what the OSD's object size says).
		{"no-object-map", FeatureLayering, []nbd.Extent{{Offset: 2 * obj, Length: 1<<20 + 12288}, {Offset: 40 << 20, Length: 4096}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.features&FeatureFastDiff == 0 && DefaultFeatures&FeatureFastDiff == 0 {
				t.Skip("DefaultFeatures lack fast-diff")
			}
			name := imageName(t, c)
			if err := c.CreateImage(testContext(t), name, CreateOptions{Size: size, Features: tc.features}); err != nil {
				t.Fatal(err)
			}
			im := openImage(t, c, name, OpenOptions{})
			ext, err := im.Extents(testContext(t), 0, size, 100)
			if err != nil || len(ext) != 0 {
				t.Fatalf("new image: %v, %v; want no extents", ext, err)
			}
			if _, err := im.WriteAt(make([]byte, 8192), 9<<20+4096); err != nil {
				t.Fatal(err)
			}
			if _, err := im.WriteAt(make([]byte, 4096), 40<<20); err != nil {
				t.Fatal(err)
			}
			if err := im.Flush(); err != nil {
				t.Fatal(err)
			}
			ext, err = im.Extents(testContext(t), 0, size, 100)
			if err != nil || !slices.Equal(ext, tc.want) {
				t.Fatalf("after two writes: %v, %v; want %v", ext, err, tc.want)
			}
			// Clipped to the range asked, and cut at limit.
			ext, err = im.Extents(testContext(t), 9<<20+8192, 31<<20, 100)
			want := []nbd.Extent{{Offset: 9<<20 + 8192, Length: 4096}, {Offset: 40 << 20, Length: 4096}}
			if tc.features&FeatureFastDiff != 0 {
				want = []nbd.Extent{{Offset: 9<<20 + 8192, Length: 3*obj - (9<<20 + 8192)}, {Offset: 40 << 20, Length: 8192}}
			}
			if err != nil || !slices.Equal(ext, want) {
				t.Fatalf("sub-range: %v, %v; want %v", ext, err, want)
			}
			if ext, err = im.Extents(testContext(t), 0, size, 1); err != nil || len(ext) != 1 || ext[0].Offset != tc.want[0].Offset {
				t.Fatalf("limit 1: %v, %v", ext, err)
			}
		})
	}
}
