package rbdio

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"

	"github.com/ceph/go-ceph/rados"
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

// SetMetadataDirect sets every key of kv on image in one write to the
// image's header object (cls_rbd's metadata_set, as rbd_metadata_set
// does inside librbd), without opening the image: no image context, no
// exclusive lock to take and give back, no header-update notification.
// An open by rbd_metadata_set costs several round trips more than the
// write itself and waits for a lock another client may hold; the
// driver writes a layer's state record on every create and remove
// (docs/2026-12-06-create-round-trips.md). All keys are set at once or
// none. For an application's own keys: librbd's configuration keys
// (conf_*) are refused (ErrInvalid), since an open image would not
// re-read them. An image without a v2 id object (format 1) goes
// through SetMetadata, key by key.
//
// Wraps rados_read (rbd_id.NAME) and rados_write_op_exec (rbd
// metadata_set on rbd_header.ID).
func (c *Conn) SetMetadataDirect(ctx context.Context, image string, kv map[string]string) error {
	spec := c.spec(image, "")
	if err := c.check(ctx, "set metadata", spec); err != nil {
		return err
	}
	if err := validName("image", image); err != nil {
		return err
	}
	if len(kv) == 0 {
		return nil
	}
	keys := make([]string, 0, len(kv))
	for k := range kv {
		if k == "" || strings.HasPrefix(k, "conf_") {
			return &Error{Op: "set metadata", Object: spec, Kind: ErrInvalid,
				Hint: fmt.Sprintf("key %q: empty, or one of librbd's configuration keys (use SetMetadata)", k)}
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	id, err := c.imageID(image)
	if errors.Is(err, ErrNotFound) {
		// No v2 id object: a format 1 image, or none at all; librbd
		// tells which.
		for _, k := range keys {
			if err := c.SetMetadata(ctx, image, k, kv[k]); err != nil {
				return err
			}
		}
		return nil
	}
	if err != nil {
		return err
	}
	op := rados.CreateWriteOp()
	defer op.Release()
	op.AssertExists()
	op.Exec("rbd", "metadata_set", encodeStringMap(keys, kv))
	if err := op.Operate(c.ioctx, "rbd_header."+id, rados.OperationNoFlag); err != nil {
		e := wrap(err, "set metadata "+strings.Join(keys, ",")+" on", spec, "rados_write_op_exec(rbd.metadata_set)")
		if e.Errno == syscall.ENOENT {
			e.Hint = fmt.Sprintf("image %s was removed meanwhile (rbd ls)", spec)
		}
		return e
	}
	return nil
}

// imageID reads a v2 image's id from its rbd_id.NAME object (a Ceph
// encoded string: a little-endian 32-bit length, then the bytes).
// ErrNotFound when there is no such object.
func (c *Conn) imageID(image string) (string, error) {
	spec := c.spec(image, "")
	buf := make([]byte, 128)
	n, err := c.ioctx.Read("rbd_id."+image, buf, 0)
	if err != nil {
		e := wrap(err, "read the id of", spec, "rados_read(rbd_id)")
		if e.Errno == syscall.ENOENT {
			e.Hint = fmt.Sprintf("image %s does not exist as a format 2 image (rbd ls)", spec)
		}
		return "", e
	}
	var l int
	if n >= 4 {
		l = int(binary.LittleEndian.Uint32(buf))
	}
	if l == 0 || l > n-4 {
		return "", &Error{Op: "read the id of", Object: spec, Kind: ErrInvalid, Func: "rados_read(rbd_id)",
			Hint: fmt.Sprintf("rbd_id.%s holds %d bytes that are not an image id", image, n)}
	}
	return string(buf[4 : 4+l]), nil
}

// encodeStringMap encodes keys and their values of kv as Ceph encodes a
// map<string, bufferlist>: the count, then each key and value as a
// 32-bit little-endian length and its bytes.
func encodeStringMap(keys []string, kv map[string]string) []byte {
	out := binary.LittleEndian.AppendUint32(nil, uint32(len(keys)))
	for _, k := range keys {
		out = binary.LittleEndian.AppendUint32(out, uint32(len(k)))
		out = append(out, k...)
		out = binary.LittleEndian.AppendUint32(out, uint32(len(kv[k])))
		out = append(out, kv[k]...)
	}
	return out
}
