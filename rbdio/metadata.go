package rbdio

import (
	"context"
	"syscall"

	"github.com/ceph/go-ceph/rbd"
)

// Image metadata: small key/value strings stored in the image header
// (rbd image-meta), for example what a layer is for.

// SetMetadata sets key to value on image (rbd_metadata_set).
func (c *Conn) SetMetadata(ctx context.Context, image, key, value string) error {
	if key == "" {
		return &Error{Op: "set metadata", Object: c.spec(image, ""), Kind: ErrInvalid, Hint: "empty key"}
	}
	return c.withImage(ctx, "set metadata", image, "", false, func(img *rbd.Image) error {
		if err := img.SetMetadata(key, value); err != nil {
			return wrap(err, "set metadata "+key+" on", c.spec(image, ""), "rbd_metadata_set")
		}
		return nil
	})
}

// GetMetadata returns the value of key on image (rbd_metadata_get);
// ErrNotFound if the key is not set.
func (c *Conn) GetMetadata(ctx context.Context, image, key string) (string, error) {
	var value string
	err := c.withImage(ctx, "get metadata", image, "", true, func(img *rbd.Image) error {
		v, err := img.GetMetadata(key)
		if err != nil {
			e := wrap(err, "get metadata "+key+" of", c.spec(image, ""), "rbd_metadata_get")
			if e.Errno == syscall.ENOENT {
				e.Hint = "the key is not set (rbd image-meta list " + c.spec(image, "") + ")"
			}
			return e
		}
		value = v
		return nil
	})
	return value, err
}

// RemoveMetadata deletes key from image (rbd_metadata_remove); removing a
// key that is not set does nothing.
func (c *Conn) RemoveMetadata(ctx context.Context, image, key string) error {
	return c.withImage(ctx, "remove metadata", image, "", false, func(img *rbd.Image) error {
		if err := img.RemoveMetadata(key); err != nil {
			e := wrap(err, "remove metadata "+key+" of", c.spec(image, ""), "rbd_metadata_remove")
			if e.Errno == syscall.ENOENT {
				return nil
			}
			return e
		}
		return nil
	})
}

// Metadata returns every key/value pair of image (rbd_metadata_list).
func (c *Conn) Metadata(ctx context.Context, image string) (map[string]string, error) {
	var out map[string]string
	err := c.withImage(ctx, "list metadata", image, "", true, func(img *rbd.Image) error {
		m, err := img.ListMetadata()
		if err != nil {
			return wrap(err, "list metadata of", c.spec(image, ""), "rbd_metadata_list")
		}
		out = m
		return nil
	})
	return out, err
}
