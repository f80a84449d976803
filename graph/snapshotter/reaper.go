// The reaper deletes, in the background and in the order Remove queued
// them, the layers and released shared images of snapshots whose records
// Remove has already dropped.
//
// Why not inside Remove: containerd's metadata GC calls Remove and then
// Cleanup while it holds its lock on this snapshotter, and containerd 1.6's
// GC scheduler drops every mutation event stamped before the pass ends
// (gc/scheduler: `lastCollection.After(e.ts)`). A `ctr snapshots rm` or an
// image removal made while the pass deleted RBD layers (seconds under
// load) was therefore never collected until some later deletion: seen in
// the VM as a committed snapshot that stayed after `ctr snapshots rm`.
// With the deletions here the pass takes a bolt transaction per snapshot.
// A deletion that fails leaves an orphan layer for Cleanup, which retries
// (removeOrphans), as containerd's overlayfs snapshotter leaves its
// directories.

package snapshotter

import (
	"context"
	"errors"
	"sync"
)

// reapJob is one removed snapshot's leftovers: its layer, or the shared
// image whose use it dropped.
type reapJob struct {
	layer  string
	shared string
}

type reaper struct {
	mu    sync.Mutex
	queue []reapJob
	// busy holds the layers queued or being deleted: Cleanup leaves them
	// to the reaper.
	busy    map[string]bool
	running bool // a job is being done
	idle    *sync.Cond
	wake    chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

func newReaper() *reaper {
	r := &reaper{busy: map[string]bool{}, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	r.idle = sync.NewCond(&r.mu)
	return r
}

func (r *reaper) add(j reapJob) {
	r.mu.Lock()
	r.queue = append(r.queue, j)
	if j.layer != "" {
		r.busy[j.layer] = true
	}
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *reaper) isBusy(layer string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.busy[layer]
}

// next takes the next job, waiting for one; false once stopped with the
// queue empty (a stop still lets the queue drain).
func (r *reaper) next() (reapJob, bool) {
	for {
		r.mu.Lock()
		if len(r.queue) > 0 {
			j := r.queue[0]
			r.queue = r.queue[1:]
			r.running = true
			r.mu.Unlock()
			return j, true
		}
		r.idle.Broadcast()
		r.mu.Unlock()
		select {
		case <-r.wake:
		case <-r.stop:
			r.mu.Lock()
			empty := len(r.queue) == 0
			r.mu.Unlock()
			if empty {
				return reapJob{}, false
			}
		}
	}
}

func (r *reaper) finished(j reapJob) {
	r.mu.Lock()
	delete(r.busy, j.layer)
	r.running = false
	if len(r.queue) == 0 {
		r.idle.Broadcast()
	}
	r.mu.Unlock()
}

// reap runs the jobs until the reaper is stopped and its queue empty.
func (s *Snapshotter) reap(ctx context.Context) {
	defer close(s.r.done)
	for {
		j, ok := s.r.next()
		if !ok {
			return
		}
		if j.layer != "" {
			if err := errors.Join(s.d.DetachDevice(ctx, j.layer), s.d.Remove(ctx, j.layer)); err != nil {
				s.log.Warn("could not delete a removed snapshot's layer: Cleanup retries", "layer", j.layer, "err", mapErr(err))
			} else {
				s.log.Debug("deleted a removed snapshot's layer", "layer", j.layer)
			}
		}
		if j.shared != "" {
			// Layers removed before were clones of the shared image:
			// its snapshot can go once the store has deleted them.
			err := s.d.WaitRemovals(ctx)
			if err == nil {
				err = s.releaseShared(ctx, j.shared)
			}
			if err != nil {
				s.log.Warn("could not delete an unused shared layer", "image", j.shared, "err", err)
			}
		}
		s.r.finished(j)
	}
}

// WaitRemovals waits until the deletions queued by Remove so far are
// done (or have failed, leaving orphans for Cleanup), the layer store's
// included, or ctx ends.
func (s *Snapshotter) WaitRemovals(ctx context.Context) error {
	if err := s.waitQueue(ctx); err != nil {
		return err
	}
	return s.d.WaitRemovals(ctx)
}

func (s *Snapshotter) waitQueue(ctx context.Context) error {
	idle := make(chan struct{})
	go func() {
		s.r.mu.Lock()
		for len(s.r.queue) > 0 || s.r.running {
			s.r.idle.Wait()
		}
		s.r.mu.Unlock()
		close(idle)
	}()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		// The waiter goroutine ends with the next job done.
		return ctx.Err()
	}
}

// stopReaper lets the queue drain and waits for the reaper to end.
func (s *Snapshotter) stopReaper() {
	s.r.mu.Lock()
	select {
	case <-s.r.stop:
	default:
		close(s.r.stop)
	}
	s.r.mu.Unlock()
	<-s.r.done
}
