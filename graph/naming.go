package graph

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// maxIDLen bounds layer IDs: docker's are 64 hex digits, plus "-init"
// for a container's init layer.
const maxIDLen = 128

// ValidateID checks that a layer ID can become part of an image name and
// a directory name: 1 to 128 characters from [A-Za-z0-9_.-], starting
// with a letter or digit. That rules out "/" and "@" (image and snapshot
// separators in RBD), "..", and hidden names.
func ValidateID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty", ErrInvalidID)
	}
	if len(id) > maxIDLen {
		return fmt.Errorf("%w %.20q...: longer than %d characters", ErrInvalidID, id, maxIDLen)
	}
	if err := validName(id, false); err != nil {
		return fmt.Errorf("%w %q: %v", ErrInvalidID, id, err)
	}
	return nil
}

// validName checks the characters of an ID or an image prefix.
func validName(s string, isPrefix bool) error {
	for i, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case (c == '_' || c == '.' || c == '-') && (i > 0 || isPrefix):
		default:
			return fmt.Errorf("character %q at %d: use letters, digits, '_', '.' and '-' (not first)", c, i)
		}
	}
	return nil
}

// Image names, snapshot names and metadata keys the driver uses. All
// images of one host start with its prefix; nothing else in the pool is
// touched.
const (
	layerInfix = "layer-"
	baseName   = "base"
	// snapName is the one snapshot a layer gets, when its first child
	// is created; every child is a clone of it.
	snapName = "layer"

	// metaRecord is the one metadata key the driver keeps on each of its
	// images: a JSON record (see record), written in one go.
	metaRecord = "rbd-nbd-graph.layer"

	// rootfsDir is the directory inside each filesystem that holds the
	// layer's content, as devicemapper does: lost+found stays outside
	// and the directory carries the (possibly remapped) root owner.
	rootfsDir = "rootfs"
)

type naming struct{ prefix string }

func (n naming) layerImage(id string) string { return n.prefix + layerInfix + id }

func (n naming) baseImage(root Identity) string {
	if root == (Identity{}) {
		return n.prefix + baseName
	}
	return fmt.Sprintf("%s%s-%d-%d", n.prefix, baseName, root.UID, root.GID)
}

func (n naming) isBase(image string) bool {
	rest, ok := strings.CutPrefix(image, n.prefix+baseName)
	return ok && (rest == "" || strings.HasPrefix(rest, "-"))
}

// layerID returns the layer ID of an image name, or false when the image
// is not a layer image of this prefix.
func (n naming) layerID(image string) (string, bool) {
	id, ok := strings.CutPrefix(image, n.prefix+layerInfix)
	if !ok || ValidateID(id) != nil {
		return "", false
	}
	return id, true
}

// Identity is a user and group ID pair: the owner of every layer's root
// directory (the remapped root under dockerd --userns-remap).
type Identity struct{ UID, GID int }

// HostID names this host: its systemd/D-Bus machine ID, or else its host
// name. With the driver's home it makes the default image prefix and the
// owner recorded on the base image.
func HostID() string {
	for _, p := range []string{"/etc/machine-id", "/var/lib/dbus/machine-id"} {
		if b, err := os.ReadFile(p); err == nil {
			if id := strings.TrimSpace(string(b)); id != "" && validName(id, false) == nil {
				return id
			}
		}
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "unknown"
	}
	return h
}

// DefaultPrefix is the image prefix of a driver: "docker-" and 12 hex
// digits of a digest of the host ID and the driver's home directory, so
// two hosts sharing a pool, and two dockerds on one host (each has its own
// data root), never share a prefix.
func DefaultPrefix(hostID, home string) string {
	return "docker-" + identity(hostID, home) + "-"
}

// identity names a driver instance, its host and home, in 12 hex digits.
func identity(hostID, home string) string {
	sum := sha256.Sum256([]byte(hostID + "\x00" + filepath.Clean(home)))
	return hex.EncodeToString(sum[:6])
}

// owner is what the base image records as its owner: the host and the
// driver's home on it.
func owner(hostID, home string) string { return hostID + ":" + filepath.Clean(home) }
