package graph

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Filesystem formats, mounts and grows the filesystem inside layer
// images. NewFilesystem returns the real one (mkfs, mount(2), resize2fs
// or xfs_growfs); there is no fake, tests that need it run as root on
// loop devices.
type Filesystem interface {
	// Type is the filesystem type ("ext4" or "xfs").
	Type() string
	// Format makes a new filesystem on the device.
	Format(ctx context.Context, device string) error
	// Mount mounts the device on dir.
	Mount(ctx context.Context, device, dir string, readOnly bool) error
	// Unmount unmounts dir, retrying while it is busy for a short time.
	Unmount(ctx context.Context, dir string) error
	// Abandon detaches the mount on dir lazily (MNT_DETACH), for mounts
	// left by an earlier run whose device may be gone: a plain unmount
	// could wait for its IO forever. Not a mount point is no error.
	Abandon(dir string) error
	// Grow grows the filesystem on device, which is not mounted, to fill
	// the device; dir is an empty directory it may mount it on meanwhile.
	Grow(ctx context.Context, device, dir string) error
	// Freeze makes the filesystem mounted on dir consistent on disk and
	// blocks writes until thaw is called, so a snapshot taken meanwhile
	// is clean.
	Freeze(ctx context.Context, dir string) (thaw func() error, err error)
	// Sync writes the filesystem mounted on dir to its device and
	// flushes the device (syncfs(2)), as an unmount would.
	Sync(ctx context.Context, dir string) error
}

// FilesystemConfig chooses the filesystem and its options.
type FilesystemConfig struct {
	Type         string   // "ext4" or "xfs"
	MkfsArgs     []string // extra mkfs arguments (rbd.mkfsarg)
	MountOptions []string // extra mount options (rbd.mountopt)
}

type execFilesystem struct {
	cfg  FilesystemConfig
	mkfs string
}

// NewFilesystem returns the Filesystem for cfg after checking its tools
// are installed.
func NewFilesystem(cfg FilesystemConfig) (Filesystem, error) {
	var mkfs, grow, pkg string
	switch cfg.Type {
	case "ext4":
		mkfs, grow, pkg = "mkfs.ext4", "resize2fs", "e2fsprogs"
	case "xfs":
		mkfs, grow, pkg = "mkfs.xfs", "xfs_growfs", "xfsprogs"
	default:
		return nil, fmt.Errorf("%w: rbd.fs=%q: use ext4 or xfs", ErrInvalidOption, cfg.Type)
	}
	for _, tool := range []string{mkfs, grow} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("rbd.fs=%s needs %s: install the Debian package %s: %w", cfg.Type, tool, pkg, err)
		}
	}
	return &execFilesystem{cfg: cfg, mkfs: mkfs}, nil
}

func (f *execFilesystem) Type() string { return f.cfg.Type }

func (f *execFilesystem) Format(ctx context.Context, device string) error {
	var args []string
	switch f.cfg.Type {
	case "ext4":
		// nodiscard: the image is new, so it is all zeroes already.
		// lazy_*_init=0: initialise inode tables and journal now, in
		// the base image, rather than have ext4lazyinit write them later
		// into every clone that happens to be mounted.
		args = []string{"-F", "-q", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0"}
	case "xfs":
		args = []string{"-f", "-q", "-K"} // -K: no discard, as above
	}
	args = append(args, f.cfg.MkfsArgs...)
	args = append(args, device)
	return run(ctx, f.mkfs, args...)
}

// mountArgs are mount(2)'s flags and data for a layer: rbd.mountopt's VFS
// options (nodev, noatime, ...) become flags, the rest filesystem data.
func (f *execFilesystem) mountArgs(readOnly bool) (uintptr, string, error) {
	flags, data, err := splitMountOptions(f.cfg.MountOptions)
	if err != nil {
		return 0, "", fmt.Errorf("%w: rbd.mountopt: %v", ErrInvalidOption, err)
	}
	if readOnly {
		flags |= unix.MS_RDONLY
	}
	if f.cfg.Type == "xfs" {
		// Every clone carries its parent's filesystem UUID; xfs refuses
		// a second mount of the same UUID without nouuid.
		data = append(data, "nouuid")
	}
	return flags, strings.Join(data, ","), nil
}

func (f *execFilesystem) Mount(ctx context.Context, device, dir string, readOnly bool) error {
	flags, data, err := f.mountArgs(readOnly)
	if err != nil {
		return err
	}
	if err := unix.Mount(device, dir, f.cfg.Type, flags, data); err != nil {
		return &os.PathError{Op: fmt.Sprintf("mount -t %s (flags %#x, data %q) %s", f.cfg.Type, flags, data, device), Path: dir, Err: err}
	}
	return nil
}

func (f *execFilesystem) Unmount(ctx context.Context, dir string) error {
	return unmount(ctx, dir)
}

func (f *execFilesystem) Abandon(dir string) error {
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return &os.PathError{Op: "umount -l", Path: dir, Err: err}
	}
	return nil
}

// unmount retries EBUSY for up to about two seconds: a process that was
// just killed, or a page-cache writeback, can hold the mount briefly.
func unmount(ctx context.Context, dir string) error {
	var err error
	for i := 0; i < 40; i++ {
		err = unix.Unmount(dir, 0)
		// EINVAL: dir is not a mount point (any more); ENOENT: no dir.
		if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) {
			break
		}
		select {
		case <-ctx.Done():
			return errors.Join(&os.PathError{Op: "umount", Path: dir, Err: err}, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return &os.PathError{Op: "umount", Path: dir, Err: err}
}

func (f *execFilesystem) Grow(ctx context.Context, device, dir string) (err error) {
	if f.cfg.Type == "ext4" && !haveCapability(unix.CAP_SYS_RESOURCE) {
		// Online ext4 resize (EXT4_IOC_RESIZE_FS) needs
		// CAP_SYS_RESOURCE; without it grow offline, which resize2fs
		// allows only right after a forced check.
		if err := run(ctx, "e2fsck", "-f", "-y", device); err != nil {
			var exit *exec.ExitError
			// Exit status 1: errors were corrected, the filesystem is fine.
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				return err
			}
		}
		return run(ctx, "resize2fs", device)
	}
	// Both grow online, which needs no check first.
	if err := f.Mount(ctx, device, dir, false); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, f.Unmount(context.WithoutCancel(ctx), dir)) }()
	if f.cfg.Type == "xfs" {
		return run(ctx, "xfs_growfs", "-d", dir)
	}
	return run(ctx, "resize2fs", device)
}

// haveCapability reports whether the process has capability c in its
// effective set.
func haveCapability(c int) bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[c/32].Effective&(1<<(c%32)) != 0
}

// FIFREEZE and FITHAW are _IOWR('X', 119, int) and _IOWR('X', 120, int)
// in the generic ioctl encoding (amd64, arm64); x/sys/unix lacks them.
const (
	ioctlFIFREEZE = 0xC0045877
	ioctlFITHAW   = 0xC0045878
)

func (f *execFilesystem) Freeze(ctx context.Context, dir string) (func() error, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	if err := unix.IoctlSetInt(fd, ioctlFIFREEZE, 0); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "FIFREEZE", Path: dir, Err: err}
	}
	return func() error {
		defer unix.Close(fd)
		if err := unix.IoctlSetInt(fd, ioctlFITHAW, 0); err != nil {
			return &os.PathError{Op: "FITHAW", Path: dir, Err: err}
		}
		return nil
	}, nil
}

func (f *execFilesystem) Sync(ctx context.Context, dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return &os.PathError{Op: "syncfs", Path: dir, Err: err}
	}
	return nil
}

// run executes a tool and returns its output in the error when it fails.
func run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out.Bytes()))
	}
	return nil
}
