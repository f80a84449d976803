package graphtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"golang.org/x/sys/unix"
)

// FileStore is a graph.ImageStore on local files: each image and each
// snapshot is a sparse file, and the catalogue (sizes, parents,
// snapshots, protection, metadata) is a JSON file rewritten atomically on
// every change, so a second FileStore on the same directory sees what
// the first left (restart tests).
//
// It follows RBD's rules where the driver depends on them: a snapshot
// must be protected to be cloned and cannot be unprotected while it has
// clones, an image with snapshots or in use (attached through
// LoopAttacher) cannot be removed. A clone is a full copy of the
// snapshot's data (sparse), not copy-on-write: FileStore is for tests of
// the driver's logic on hosts without Ceph; the RBD store is tested
// against a real cluster.
type FileStore struct {
	dir string
	// CrashHook, when set, is called (without the store's lock held)
	// between the two steps of CreateSnapshot (made, then protected) and
	// of RemoveSnapshot (unprotected, then removed), which are saved
	// separately as RBD makes them, so crash tests can stop in between.
	CrashHook graph.CrashHook

	mu    sync.Mutex
	cat   catalogue
	inUse map[string]int // image or image@snap -> open devices
}

type catalogue struct {
	Images map[string]*fileImage `json:"images"`
}

type fileImage struct {
	Size      int64             `json:"size"`
	Parent    graph.ImageRef    `json:"parent"`
	Snapshots map[string]bool   `json:"snapshots"` // name -> protected
	Metadata  map[string]string `json:"metadata"`
}

var _ graph.ImageStore = (*FileStore)(nil)

// OpenFileStore opens (creating if needed) the store in dir.
func OpenFileStore(dir string) (*FileStore, error) {
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err != nil {
		return nil, err
	}
	s := &FileStore{dir: dir, cat: catalogue{Images: map[string]*fileImage{}}, inUse: map[string]int{}}
	b, err := os.ReadFile(s.catPath())
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		if err := json.Unmarshal(b, &s.cat); err != nil {
			return nil, fmt.Errorf("filestore %s: %w", s.catPath(), err)
		}
	}
	return s, nil
}

// Dir is the store's directory.
func (s *FileStore) Dir() string { return s.dir }

func (s *FileStore) catPath() string { return filepath.Join(s.dir, "catalogue.json") }

// DataPath is the file holding an image's or a snapshot's data.
func (s *FileStore) DataPath(ref graph.ImageRef) string {
	return filepath.Join(s.dir, "data", ref.String()+".img")
}

// refFromDataPath reverses DataPath.
func (s *FileStore) refFromDataPath(p string) (graph.ImageRef, bool) {
	rel, ok := strings.CutPrefix(p, filepath.Join(s.dir, "data")+"/")
	if !ok {
		return graph.ImageRef{}, false
	}
	name, ok := strings.CutSuffix(rel, ".img")
	if !ok || strings.Contains(name, "/") {
		return graph.ImageRef{}, false
	}
	image, snap, _ := strings.Cut(name, "@")
	return graph.ImageRef{Image: image, Snapshot: snap}, true
}

// save writes the catalogue atomically (temp file, fsync, rename).
func (s *FileStore) save() error {
	b, err := json.MarshalIndent(s.cat, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.catPath() + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, s.catPath())
	}
	return err
}

func (s *FileStore) image(name string) (*fileImage, error) {
	im := s.cat.Images[name]
	if im == nil {
		return nil, fmt.Errorf("filestore: %s: %w", name, graph.ErrImageNotFound)
	}
	return im, nil
}

func (s *FileStore) CreateImage(ctx context.Context, name string, size int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cat.Images[name] != nil {
		return fmt.Errorf("filestore: %s: %w", name, graph.ErrImageExists)
	}
	f, err := os.OpenFile(s.DataPath(graph.ImageRef{Image: name}), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	s.cat.Images[name] = &fileImage{Size: size, Snapshots: map[string]bool{}, Metadata: map[string]string{}}
	return s.save()
}

func (s *FileStore) CloneImage(ctx context.Context, parent, snap, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, err := s.image(parent)
	if err != nil {
		return err
	}
	protected, ok := p.Snapshots[snap]
	if !ok {
		return fmt.Errorf("filestore: %s@%s: %w", parent, snap, graph.ErrImageNotFound)
	}
	if !protected {
		return fmt.Errorf("filestore: clone of %s@%s: snapshot is not protected", parent, snap)
	}
	if s.cat.Images[name] != nil {
		return fmt.Errorf("filestore: %s: %w", name, graph.ErrImageExists)
	}
	from := graph.ImageRef{Image: parent, Snapshot: snap}
	if err := sparseCopy(ctx, s.DataPath(graph.ImageRef{Image: name}), s.DataPath(from)); err != nil {
		return err
	}
	// As librbd's clone (its CloneRequest copies image-meta), the clone
	// starts with the parent's metadata.
	md := maps.Clone(p.Metadata)
	if md == nil {
		md = map[string]string{}
	}
	s.cat.Images[name] = &fileImage{Size: p.Size, Parent: from, Snapshots: map[string]bool{}, Metadata: md}
	return s.save()
}

func (s *FileStore) RemoveImage(ctx context.Context, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	im, err := s.image(name)
	if err != nil {
		return err
	}
	if len(im.Snapshots) > 0 {
		return fmt.Errorf("filestore: remove %s: it has snapshots: %w", name, graph.ErrImageBusy)
	}
	if s.inUse[name] > 0 {
		return fmt.Errorf("filestore: remove %s: it is attached: %w", name, graph.ErrImageBusy)
	}
	if err := os.Remove(s.DataPath(graph.ImageRef{Image: name})); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	delete(s.cat.Images, name)
	return s.save()
}

func (s *FileStore) ResizeImage(ctx context.Context, name string, size int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	im, err := s.image(name)
	if err != nil {
		return err
	}
	if err := os.Truncate(s.DataPath(graph.ImageRef{Image: name}), size); err != nil {
		return err
	}
	im.Size = size
	return s.save()
}

// FlattenImage only drops the parent link: a FileStore clone already has
// its own copy of the data.
func (s *FileStore) FlattenImage(ctx context.Context, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	im, err := s.image(name)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	im.Parent = graph.ImageRef{}
	return s.save()
}

// CreateSnapshot makes image@snap, unprotected, then protects it (an
// existing snapshot is only protected), in two saves as RBD does.
func (s *FileStore) CreateSnapshot(ctx context.Context, image, snap string) error {
	if err := s.createSnapshot(ctx, image, snap); err != nil {
		return err
	}
	s.crashHook(graph.StepSnapshotCreated)
	if err := s.protect(image, snap); err != nil {
		return err
	}
	s.crashHook(graph.StepSnapshotProtected)
	return nil
}

func (s *FileStore) protect(image, snap string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	im, err := s.image(image)
	if err != nil {
		return err
	}
	im.Snapshots[snap] = true
	return s.save()
}

func (s *FileStore) createSnapshot(ctx context.Context, image, snap string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	im, err := s.image(image)
	if err != nil {
		return err
	}
	if _, ok := im.Snapshots[snap]; ok {
		return nil
	}
	ref := graph.ImageRef{Image: image, Snapshot: snap}
	// The image file is quiescent or frozen by the caller: copying it is
	// the snapshot.
	if err := sparseCopy(ctx, s.DataPath(ref), s.DataPath(graph.ImageRef{Image: image})); err != nil {
		return err
	}
	im.Snapshots[snap] = false
	return s.save()
}

// crashHook calls CrashHook, if set; never with s.mu held, so a hook
// that stops its goroutine for good leaves the store usable.
func (s *FileStore) crashHook(step string) {
	if s.CrashHook != nil {
		s.CrashHook(step)
	}
}

func (s *FileStore) RemoveSnapshot(ctx context.Context, image, snap string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	im, err := s.image(image)
	if err != nil {
		return err
	}
	if _, ok := im.Snapshots[snap]; !ok {
		return nil
	}
	ref := graph.ImageRef{Image: image, Snapshot: snap}
	if kids := s.children(ref); len(kids) > 0 {
		return fmt.Errorf("filestore: unprotect %s: it has clones %v: %w", ref, kids, graph.ErrImageBusy)
	}
	if s.inUse[ref.String()] > 0 {
		return fmt.Errorf("filestore: remove %s: it is attached: %w", ref, graph.ErrImageBusy)
	}
	// Unprotect, then remove, in two saves as RBD does.
	if im.Snapshots[snap] {
		im.Snapshots[snap] = false
		if err := s.save(); err != nil {
			return err
		}
		s.mu.Unlock()
		s.crashHook(graph.StepSnapshotUnprotected)
		s.mu.Lock()
		if im, err = s.image(image); err != nil {
			return err
		}
		if _, ok := im.Snapshots[snap]; !ok {
			return nil
		}
	}
	if err := os.Remove(s.DataPath(ref)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	delete(im.Snapshots, snap)
	if err := s.save(); err != nil {
		return err
	}
	s.mu.Unlock()
	s.crashHook(graph.StepSnapshotRemoved)
	s.mu.Lock()
	return nil
}

func (s *FileStore) Children(ctx context.Context, image, snap string) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.image(image); err != nil {
		return nil, err
	}
	return s.children(graph.ImageRef{Image: image, Snapshot: snap}), nil
}

func (s *FileStore) children(ref graph.ImageRef) []string {
	var out []string
	for name, im := range s.cat.Images {
		if im.Parent == ref {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

func (s *FileStore) ListImages(ctx context.Context, prefix string) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for name := range s.cat.Images {
		if strings.HasPrefix(name, prefix) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out, nil
}

func (s *FileStore) StatImage(ctx context.Context, name string) (graph.ImageInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	im, err := s.image(name)
	if err != nil {
		return graph.ImageInfo{}, err
	}
	info := graph.ImageInfo{Size: im.Size, Parent: im.Parent, Metadata: map[string]string{}}
	for snap := range im.Snapshots {
		info.Snapshots = append(info.Snapshots, snap)
	}
	sort.Strings(info.Snapshots)
	for k, v := range im.Metadata {
		info.Metadata[k] = v
	}
	return info, nil
}

func (s *FileStore) SetMetadata(ctx context.Context, name string, kv map[string]string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	im, err := s.image(name)
	if err != nil {
		return err
	}
	for k, v := range kv {
		if v == "" {
			delete(im.Metadata, k)
		} else {
			im.Metadata[k] = v
		}
	}
	return s.save()
}

// Location names the store for Status.
func (s *FileStore) Location() string { return "filestore " + s.dir }

// Qualify returns the image name unchanged.
func (s *FileStore) Qualify(image string) string { return image }

// InUse reports how many devices have ref open.
func (s *FileStore) InUse(ref graph.ImageRef) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inUse[ref.String()]
}

// open marks ref in use by a device and returns its data file; a
// snapshot must exist.
func (s *FileStore) open(ref graph.ImageRef) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	im, err := s.image(ref.Image)
	if err != nil {
		return "", err
	}
	if _, ok := im.Snapshots[ref.Snapshot]; ref.Snapshot != "" && !ok {
		return "", fmt.Errorf("filestore: %s: %w", ref, graph.ErrImageNotFound)
	}
	s.inUse[ref.String()]++
	return s.DataPath(ref), nil
}

func (s *FileStore) close(ref graph.ImageRef) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inUse[ref.String()]--; s.inUse[ref.String()] <= 0 {
		delete(s.inUse, ref.String())
	}
}

// sparseCopy copies src to a new file dst, skipping holes (SEEK_DATA /
// SEEK_HOLE) so sparse images stay sparse and copies stay quick.
func sparseCopy(ctx context.Context, dst, src string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	if err := out.Truncate(st.Size()); err != nil {
		return err
	}
	fd := int(in.Fd())
	for off := int64(0); off < st.Size(); {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return fmt.Errorf("seek data in %s: %w", src, err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole in %s: %w", src, err)
		}
		if _, err := io.Copy(io.NewOffsetWriter(out, data), io.NewSectionReader(in, data, hole-data)); err != nil {
			return err
		}
		off = hole
	}
	return out.Sync()
}
