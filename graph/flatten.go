package graph

import (
	"context"
	"errors"
	"sync"
	"time"
)

// flattener flattens, one at a time and in the order they were created,
// the layers whose clone chain grew past Options.MaxCloneDepth. It does
// not hold layer locks while it works (a flatten can take long and the
// image stays usable meanwhile); Remove cancels a running flatten.
type flattener struct {
	d      *Driver
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	queue   []string
	wake    chan struct{}
	running string // layer ID being flattened
}

// flattenJob is the flatten running on a layer.
type flattenJob struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func startFlattener(d *Driver) *flattener {
	ctx, cancel := context.WithCancel(context.Background())
	f := &flattener{d: d, ctx: ctx, cancel: cancel, done: make(chan struct{}), wake: make(chan struct{}, 1)}
	go f.loop()
	return f
}

func (f *flattener) enqueue(id string) {
	f.mu.Lock()
	f.queue = append(f.queue, id)
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// pending is the number of layers queued or being flattened.
func (f *flattener) pending() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.queue)
	if f.running != "" {
		n++
	}
	return n
}

func (f *flattener) stop() {
	f.cancel()
	<-f.done
}

func (f *flattener) loop() {
	defer close(f.done)
	for {
		f.mu.Lock()
		var id string
		if len(f.queue) > 0 {
			id, f.queue = f.queue[0], f.queue[1:]
		}
		f.running = id
		f.mu.Unlock()
		if id == "" {
			select {
			case <-f.ctx.Done():
				return
			case <-f.wake:
				continue
			}
		}
		f.flatten(id)
		f.mu.Lock()
		f.running = ""
		f.mu.Unlock()
		if f.ctx.Err() != nil {
			return
		}
	}
}

// flatten flattens layer id if it is still ready and still too deep
// (flattening an ancestor meanwhile may have made it shallow enough).
func (f *flattener) flatten(id string) {
	d := f.d
	d.mu.Lock()
	l := d.layers[id]
	if l == nil || l.state != StateReady || l.flatten != nil || d.depthLocked(l) <= d.opts.MaxCloneDepth {
		d.mu.Unlock()
		return
	}
	ctx, cancel := context.WithCancel(f.ctx)
	job := &flattenJob{cancel: cancel, done: make(chan struct{})}
	l.flatten = job
	depth := d.depthLocked(l)
	d.mu.Unlock()

	d.log.Debug("flattening layer", "layer", id, "depth", depth)
	start := time.Now()
	err := d.store.FlattenImage(ctx, l.image)
	cancel()
	if !errors.Is(err, context.Canceled) {
		d.observe(OpFlatten, start, &err) // a cancelled one was the caller's choice
	}
	if err == nil {
		d.step(StepFlattenDone)
	}
	d.mu.Lock()
	l.flatten = nil
	if err == nil {
		l.cloneOf = ImageRef{}
	}
	d.mu.Unlock()
	close(job.done)
	switch {
	case err == nil:
		d.log.Info("flattened layer", "layer", id, "depth was", depth)
	case errors.Is(err, context.Canceled):
		d.log.Debug("flatten cancelled", "layer", id)
	default:
		d.log.Warn("flatten failed; the layer still reads through its parents", "layer", id, "err", err)
	}
}

// cancelFlatten stops a flatten running on l and waits for it to end.
func (d *Driver) cancelFlatten(l *layer) {
	d.mu.Lock()
	job := l.flatten
	d.mu.Unlock()
	if job != nil {
		job.cancel()
		<-job.done
	}
}
