package rbdio

import (
	"errors"
	"maps"
	"testing"
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
