// Deleting removed layers in the background.
//
// Why: deleting an RBD image is most of what Remove costs (in the VM, a
// `docker run --rm` spent 5.35 of its 17.22 s in Remove, 3.40 s of it in
// image deletion; docs/2026-12-06-whole-containers.md), and nobody waits
// for the space. Remove returns once the layer's record durably says
// removing and the layer is out of the tables; the reaper then deletes
// its snapshot and image. A crash or restart before it is done leaves a
// removing layer, which start-up finishes (cleanUnfinished), children
// first.
//
// Order: a layer's snapshot cannot go while clones of it exist, and a
// parent is only removed once its children are (Remove refuses a layer
// with children in the tables), so its job is queued after theirs: the
// reaper works in queue order, one job at a time.

package graph

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// The reaper's retries: a deletion that fails (a busy image, a slow
// cluster) is tried again, ahead of the rest of the queue, after a pause
// that doubles, and after reapAttempts tries left to the next start.
const (
	reapAttempts   = 6
	reapFirstPause = time.Second
	// reapDrainTimeout bounds how long Close finishes the queue and
	// Close or Release wait for a deletion in flight.
	reapDrainTimeout = 30 * time.Second
)

type reapJob struct {
	l         *layer
	attempts  int
	notBefore time.Time
	done      chan struct{} // closed when the images are deleted or given up
}

type reaper struct {
	d      *Driver
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	queue   []*reapJob
	byImage map[string]*reapJob // queued or being deleted
	wake    chan struct{}
	running bool
	idle    chan struct{} // closed and replaced when the queue empties
}

func startReaper(d *Driver) *reaper {
	ctx, cancel := context.WithCancel(context.Background())
	r := &reaper{d: d, ctx: ctx, cancel: cancel, done: make(chan struct{}),
		byImage: map[string]*reapJob{}, wake: make(chan struct{}, 1), idle: make(chan struct{})}
	close(r.idle)
	go r.loop()
	return r
}

func (r *reaper) enqueue(l *layer) {
	r.mu.Lock()
	j := &reapJob{l: l, done: make(chan struct{})}
	r.queue = append(r.queue, j)
	r.byImage[l.image] = j
	r.busyLocked()
	r.mu.Unlock()
	r.poke()
}

func (r *reaper) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// busyLocked notes work to do: waiters on idle wait for the new work.
func (r *reaper) busyLocked() {
	select {
	case <-r.idle:
		r.idle = make(chan struct{})
	default:
	}
}

// pending is the number of layers queued for or being deleted.
func (r *reaper) pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.byImage)
}

// waitImage waits until image, if it is queued, is deleted (or given
// up), so a new layer can take its name.
func (r *reaper) waitImage(ctx context.Context, image string) error {
	r.mu.Lock()
	j := r.byImage[image]
	r.mu.Unlock()
	if j == nil {
		return nil
	}
	select {
	case <-j.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for the deletion of the removed layer's image %s: %w", image, ctx.Err())
	}
}

// wait waits until the queue is empty and no job runs, or ctx ends, or
// the reaper is stopped with work left.
func (r *reaper) wait(ctx context.Context) error {
	r.mu.Lock()
	idle := r.idle
	r.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-r.done:
		select {
		case <-idle:
			return nil
		default:
			return fmt.Errorf("%w: the removed layers not deleted yet are left to the next start", ErrClosed)
		}
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stop ends the reaper after the job it is doing, waiting for that
// until ctx ends (a paused cluster may never answer; the process is
// leaving); what is still queued stays removing, for the next start.
func (r *reaper) stop(ctx context.Context) {
	r.cancel()
	select {
	case <-r.done:
	case <-ctx.Done():
		r.d.log.Warn("stopped waiting for a layer deletion in flight; the next start finishes it", "err", ctx.Err())
	}
}

func (r *reaper) loop() {
	defer close(r.done)
	var timer *time.Timer
	for {
		j, pause := r.next()
		if j == nil {
			var later <-chan time.Time
			if pause > 0 {
				if timer == nil {
					timer = time.NewTimer(pause)
				} else {
					timer.Reset(pause)
				}
				later = timer.C
			}
			select {
			case <-r.ctx.Done():
				return
			case <-r.wake:
			case <-later:
			}
			continue
		}
		err := r.d.deleteLayerImages(r.ctx, j.l)
		r.finish(j, err)
		if r.ctx.Err() != nil {
			return
		}
	}
}

// next takes the first job due, or says how long until one is.
func (r *reaper) next() (*reapJob, time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.queue) == 0 {
		if !r.running {
			select {
			case <-r.idle:
			default:
				close(r.idle)
			}
		}
		return nil, 0
	}
	// Queue order is dependency order, so a job waits for the ones
	// ahead of it even when it is due.
	j := r.queue[0]
	if wait := time.Until(j.notBefore); wait > 0 {
		return nil, wait
	}
	r.queue = r.queue[1:]
	r.running = true
	return j, 0
}

func (r *reaper) finish(j *reapJob, err error) {
	d := r.d
	r.mu.Lock()
	defer r.mu.Unlock()
	r.running = false
	switch {
	case err == nil:
		d.log.Debug("deleted a removed layer's images", "layer", j.l.id, "image", j.l.image)
	case r.ctx.Err() != nil:
		d.log.Info("stopped deleting a removed layer's images; the next start finishes it", "layer", j.l.id, "err", err)
	case j.attempts+1 < reapAttempts:
		j.attempts++
		pause := reapFirstPause << (j.attempts - 1)
		j.notBefore = time.Now().Add(pause)
		d.log.Warn("could not delete a removed layer's images; trying again", "layer", j.l.id, "in", pause, "err", err)
		// First again: the jobs behind it may be its parents.
		r.queue = append([]*reapJob{j}, r.queue...)
		return
	default:
		d.log.Error("could not delete a removed layer's images; the next start tries again", "layer", j.l.id, "attempts", reapAttempts, "err", err)
	}
	delete(r.byImage, j.l.image)
	close(j.done)
}

// deleteLayerImages deletes removing layer l's snapshot, if it has one,
// and image: the second half of Remove.
func (d *Driver) deleteLayerImages(ctx context.Context, l *layer) (err error) {
	defer d.observe(OpDelete, time.Now(), &err)
	ph := newPhases()
	if l.snapshot {
		if err := d.removeSnapshot(ctx, l); err != nil {
			return fmt.Errorf("delete layer %s: %w", l.id, err)
		}
		ph.done("remove_snapshot")
		d.step(StepRemoveSnapshot)
	}
	if err := d.dels.RemoveImage(ctx, l.image); err != nil && !errors.Is(err, ErrImageNotFound) {
		return fmt.Errorf("delete layer %s: %w", l.id, err)
	}
	ph.done("remove_image")
	d.step(StepRemoveImage)
	if err := os.Remove(filepath.Join(d.mnt, l.id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		d.log.Warn("could not remove mount point", "layer", l.id, "err", err)
	}
	d.log.Debug("layer images deleted", append([]any{"layer", l.id}, ph.attrs...)...)
	return nil
}

// WaitRemovals waits until the layers removed so far are deleted from
// the store (or their deletion failed and was left to the next start),
// or ctx ends. Remove returns before that; this is for callers that
// need the space, or the pool empty.
func (d *Driver) WaitRemovals(ctx context.Context) error {
	return d.reap.wait(ctx)
}
