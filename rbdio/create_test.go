package rbdio

import (
	"errors"
	"testing"
)

func TestCreateImageOptions(t *testing.T) {
	c := testConn(t)
	ctx := testContext(t)
	name := imageName(t, c)
	opts := CreateOptions{Size: 3 << 20, Features: FeatureLayering, ObjectSize: 1 << 20}
	if err := c.CreateImage(ctx, name, opts); err != nil {
		t.Fatal(err)
	}
	info, err := c.Stat(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != 3<<20 || info.ObjectSize != 1<<20 || info.Features != FeatureLayering || info.HasParent {
		t.Errorf("Stat = %+v", info)
	}
	err = c.CreateImage(ctx, name, opts)
	if !errors.Is(err, ErrExists) {
		t.Errorf("create twice: %v, want ErrExists", err)
	}
	t.Log(err)

	def := imageName(t, c)
	if err := c.CreateImage(ctx, def, CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if info, err := c.Stat(ctx, def); err != nil || info.Features != DefaultFeatures || info.ObjectSize != DefaultObjectSize {
		t.Errorf("default image: %+v, %v", info, err)
	}

	for what, o := range map[string]CreateOptions{
		"zero size":           {},
		"object size not 2^n": {Size: 1 << 20, ObjectSize: 3 << 20},
		"object size too big": {Size: 1 << 20, ObjectSize: 64 << 20},
		"unknown feature":     {Size: 1 << 20, Features: Features(1 << 40)},
	} {
		n := imageName(t, c)
		if err := c.CreateImage(ctx, n, o); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", what, err)
		}
		if _, err := c.Stat(ctx, n); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: refused create left an image: %v", what, err)
		}
	}

	n := imageName(t, c)
	err = c.CreateImage(ctx, n, CreateOptions{Size: 1 << 20, DataPool: "rbdio-no-such-pool"})
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("missing data pool: %v, want ErrNotFound", err)
	}
	t.Log(err)
}

// The data pool option puts the data objects in another pool.
func TestCreateImageDataPool(t *testing.T) {
	c := testConn(t)
	ctx := testContext(t)
	const pool = "rbdio-test-data"
	if _, err := c.rados.GetPoolByName(pool); err != nil {
		if err := c.rados.MakePool(pool); err != nil {
			t.Fatalf("make pool %s: %v", pool, err)
		}
	}
	name := imageName(t, c)
	if err := c.CreateImage(ctx, name, CreateOptions{Size: 4 << 20, DataPool: pool}); err != nil {
		t.Fatal(err)
	}
	info, err := c.Stat(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if info.Features&Features(1<<7) == 0 { // RBD_FEATURE_DATA_POOL
		t.Errorf("features %v lack data-pool", info.Features)
	}
	im := openImage(t, c, name, OpenOptions{})
	mustWrite(t, im, pattern(4096, 4), 0)
	if err := im.Flush(); err != nil {
		t.Fatal(err)
	}
	im.Close()
	dctx, err := c.rados.OpenIOContext(pool)
	if err != nil {
		t.Fatal(err)
	}
	defer dctx.Destroy()
	iter, err := dctx.Iter()
	if err != nil {
		t.Fatal(err)
	}
	defer iter.Close()
	objects := 0
	for iter.Next() {
		objects++
	}
	if objects == 0 {
		t.Error("no data object in the data pool after a write")
	}
}
