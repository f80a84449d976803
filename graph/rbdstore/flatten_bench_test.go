package rbdstore

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

// What bounding the clone chain costs and buys, on a real cluster
// (CEPH_CONF), to choose rbd.flatten and rbd.maxclonedepth:
//
//	BenchmarkFlatten/clone         Create's RBD work in background mode
//	BenchmarkFlatten/clone+flatten Create's RBD work in create mode, for a
//	                               parent holding 64 MiB of data
//	BenchmarkChainRead/depth=N     4k random reads of the bottom layer's data
//	                               through a chain of N clones
//	BenchmarkChainOpen/depth=N     opening the top of such a chain (librbd
//	                               opens every parent too): part of each Get
//
// go test -tags pacific -run '^$' -bench 'Flatten|Chain' ./graph/rbdstore

const benchData = 64 << 20

type benchChain struct {
	store  *Store
	prefix string
	images []string // bottom first
}

// newBenchChain makes a 1 GiB image with benchData bytes written and a
// chain of depth clones above it (each a clone of the previous one's
// snapshot "layer", as the driver makes them).
func newBenchChain(b *testing.B, depth int) *benchChain {
	ctx, c := newBenchBase(b, "flatbench", 10*time.Minute)
	base := c.images[0]
	be, closeImg, err := c.store.OpenImage(ctx, graph.ImageRef{Image: base}, false)
	if err != nil {
		b.Fatal(err)
	}
	buf := testkit.RandomBytes(1<<20, 1)
	for off := int64(0); off < benchData; off += int64(len(buf)) {
		if _, err := be.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := closeImg(); err != nil {
		b.Fatal(err)
	}
	for i := 1; i <= depth; i++ {
		parent := c.images[len(c.images)-1]
		if err := c.store.CreateSnapshot(ctx, parent, "layer"); err != nil {
			b.Fatal(err)
		}
		child := fmt.Sprintf("%s%d", c.prefix, i)
		if err := c.store.CloneImage(ctx, parent, "layer", child); err != nil {
			b.Fatal(err)
		}
		c.images = append(c.images, child)
	}
	return c
}

// newBenchBase connects to CEPH_CONF's cluster and makes the chain's
// bottom: a 1 GiB image, removed with everything added to the chain when
// the benchmark ends (or after timeout).
func newBenchBase(b *testing.B, name string, timeout time.Duration) (context.Context, *benchChain) {
	conf := testkit.CephConf(b)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	b.Cleanup(cancel)
	conn, err := rbdio.Connect(ctx, rbdio.Config{ConfFile: conf})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	c := &benchChain{store: New(ctx, conn, DefaultOptions(), nil), prefix: testkit.UniqueName(b, name) + "-"}
	b.Cleanup(c.removeAll)
	base := c.prefix + "0"
	if err := c.store.CreateImage(ctx, base, 1<<30); err != nil {
		b.Fatal(err)
	}
	c.images = append(c.images, base)
	return ctx, c
}

func (c *benchChain) removeAll() {
	ctx := context.Background()
	for i := len(c.images) - 1; i >= 0; i-- {
		c.store.RemoveSnapshot(ctx, c.images[i], "layer")
		c.store.RemoveImage(ctx, c.images[i])
	}
}

func BenchmarkFlatten(b *testing.B) {
	for _, flatten := range []bool{false, true} {
		name := "clone"
		if flatten {
			name = "clone+flatten"
		}
		b.Run(name, func(b *testing.B) {
			c := newBenchChain(b, 0)
			ctx := context.Background()
			parent := c.images[0]
			if err := c.store.CreateSnapshot(ctx, parent, "layer"); err != nil {
				b.Fatal(err)
			}
			i := 0
			for b.Loop() {
				child := fmt.Sprintf("%sc%d", c.prefix, i)
				i++
				if err := c.store.CloneImage(ctx, parent, "layer", child); err != nil {
					b.Fatal(err)
				}
				if flatten {
					if err := c.store.FlattenImage(ctx, child); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				if err := c.store.RemoveImage(ctx, child); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

func BenchmarkChainRead(b *testing.B) {
	for _, depth := range []int{0, 1, 4, 8, 16, 32} {
		b.Run(fmt.Sprintf("depth=%d", depth), func(b *testing.B) {
			c := newBenchChain(b, depth)
			top := c.images[len(c.images)-1]
			be, closeImg, err := c.store.OpenImage(context.Background(), graph.ImageRef{Image: top}, true)
			if err != nil {
				b.Fatal(err)
			}
			defer closeImg()
			buf := make([]byte, 4096)
			rng := mrand.New(mrand.NewPCG(1, 2))
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			for b.Loop() {
				off := rng.Int64N(benchData/4096) * 4096
				if _, err := be.ReadAt(buf, off); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkChainOpen(b *testing.B) {
	for _, depth := range []int{0, 1, 4, 8, 16, 32} {
		b.Run(fmt.Sprintf("depth=%d", depth), func(b *testing.B) {
			c := newBenchChain(b, depth)
			top := c.images[len(c.images)-1]
			ctx := context.Background()
			for b.Loop() {
				_, closeImg, err := c.store.OpenImage(ctx, graph.ImageRef{Image: top}, false)
				if err != nil {
					b.Fatal(err)
				}
				if err := closeImg(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
