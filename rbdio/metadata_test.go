package rbdio

import (
	"bytes"
	"errors"
	"maps"
	"testing"
	"time"
)

func TestMetadata(t *testing.T) {
	c := testConn(t)
	ctx := testContext(t)
	name := createImage(t, c, 1<<20)
	kv := map[string]string{"layer.id": "abc", "layer.parent": "", "x": "1"}
	for k, v := range kv {
		if err := c.SetMetadata(ctx, name, k, v); err != nil {
			t.Fatal(err)
		}
	}
	got, err := c.Metadata(ctx, name)
	if err != nil || !maps.Equal(got, kv) {
		t.Fatalf("Metadata = %v, %v; want %v", got, err, kv)
	}
	if v, err := c.GetMetadata(ctx, name, "layer.id"); err != nil || v != "abc" {
		t.Errorf("GetMetadata = %q, %v", v, err)
	}
	if err := c.RemoveMetadata(ctx, name, "x"); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveMetadata(ctx, name, "x"); err != nil {
		t.Errorf("removing a removed key: %v", err)
	}
	_, err = c.GetMetadata(ctx, name, "x")
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("GetMetadata of a removed key: %v, want ErrNotFound", err)
	}
	t.Log(err)
	if err := c.SetMetadata(ctx, name, "", "v"); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty key: %v, want ErrInvalid", err)
	}
	if err := c.SetMetadata(ctx, "rbdio-test-no-such-image", "k", "v"); !errors.Is(err, ErrNotFound) {
		t.Errorf("metadata on a missing image: %v, want ErrNotFound", err)
	}
}

// SetMetadataDirect writes what librbd reads back, all keys at once, on
// an image another client holds open with its exclusive lock, and
// without opening the image (its image-context lock, which every open
// takes, is held throughout).
func TestSetMetadataDirect(t *testing.T) {
	c := testConn(t)
	ctx := testContext(t)
	name := createImage(t, c, 1<<20)
	other := testConn(t)
	im := openImage(t, other, name, OpenOptions{})
	mustWrite(t, im, pattern(4096, 3), 0) // takes the exclusive lock

	kv := map[string]string{"layer.record": `{"state":"ready"}`, "b": "2", "a": ""}
	c.imageCtx.Lock()
	done := make(chan error, 1)
	go func() { done <- c.SetMetadataDirect(ctx, name, kv) }()
	select {
	case err := <-done:
		c.imageCtx.Unlock()
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		c.imageCtx.Unlock()
		t.Fatalf("SetMetadataDirect waited for the image-context lock: %v", <-done)
	}
	got, err := c.Metadata(ctx, name)
	if err != nil || !maps.Equal(got, kv) {
		t.Fatalf("Metadata = %v, %v; want %v", got, err, kv)
	}
	if err := c.SetMetadataDirect(ctx, name, map[string]string{"b": "3"}); err != nil {
		t.Fatal(err)
	}
	if v, err := c.GetMetadata(ctx, name, "b"); err != nil || v != "3" {
		t.Errorf("GetMetadata after an overwrite = %q, %v", v, err)
	}
	for _, k := range []string{"", "conf_rbd_cache"} {
		if err := c.SetMetadataDirect(ctx, name, map[string]string{k: "v"}); !errors.Is(err, ErrInvalid) {
			t.Errorf("key %q: %v, want ErrInvalid", k, err)
		}
	}
	err = c.SetMetadataDirect(ctx, "rbdio-test-no-such-image", map[string]string{"k": "v"})
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("metadata on a missing image: %v, want ErrNotFound", err)
	}
	t.Log(err)
}

func TestEncodeStringMap(t *testing.T) {
	got := encodeStringMap([]string{"a", "bc"}, map[string]string{"a": "", "bc": "xyz"})
	want := []byte{2, 0, 0, 0, 1, 0, 0, 0, 'a', 0, 0, 0, 0, 2, 0, 0, 0, 'b', 'c', 3, 0, 0, 0, 'x', 'y', 'z'}
	if !bytes.Equal(got, want) {
		t.Fatalf("encodeStringMap = %v, want %v", got, want)
	}
}
