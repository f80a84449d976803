package rbdstore

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/graph"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
	"github.com/rbd-nbd-graph/rbd-nbd-graph/rbdio"
)

// Environment of the child process TestRBDStoreCrashChild runs in.
const (
	crashOpEnv    = "RBD_NBD_GRAPH_TEST_CRASH_OP"    // create or remove (a snapshot)
	crashImageEnv = "RBD_NBD_GRAPH_TEST_CRASH_IMAGE" // the image
)

// TestRBDStoreCrashChild is not a test of its own: TestRBDStoreCrashWindows
// runs the test binary with it and RBD_NBD_GRAPH_CRASH_AT set, and the
// store kills the process (SIGKILL) at that step.
func TestRBDStoreCrashChild(t *testing.T) {
	op, image := os.Getenv(crashOpEnv), os.Getenv(crashImageEnv)
	if op == "" {
		t.Skip("run by TestRBDStoreCrashWindows")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := rbdio.Connect(ctx, rbdio.Config{ConfFile: os.Getenv("CEPH_CONF")})
	if err != nil {
		t.Fatal(err)
	}
	store := New(ctx, conn, DefaultOptions(), nil)
	if op == "create" {
		err = store.CreateSnapshot(ctx, image, snapForCrash)
	} else {
		err = store.RemoveSnapshot(ctx, image, snapForCrash)
	}
	// Reaching here means the step was not reached: the parent fails.
	t.Fatalf("%s snapshot returned (%v) without crashing at %s", op, err, os.Getenv(graph.CrashEnv))
}

const snapForCrash = "layer"

// A process killed (SIGKILL) between the two steps of the RBD store's
// snapshot+protect and unprotect+remove leaves a snapshot the next
// process can protect (what the driver's ensureSnapshot does for a
// layer loaded at start-up) and clone, and remove along with the image.
func TestRBDStoreCrashWindows(t *testing.T) {
	conf := testkit.CephConf(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel) // after the parallel subtests
	conn, err := rbdio.Connect(ctx, rbdio.Config{ConfFile: conf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	store := New(ctx, conn, DefaultOptions(), nil)
	for _, tc := range []struct{ op, step string }{
		{"create", graph.StepSnapshotCreated},
		{"create", graph.StepSnapshotProtected},
		{"remove", graph.StepSnapshotUnprotected},
		{"remove", graph.StepSnapshotRemoved},
	} {
		t.Run(tc.step, func(t *testing.T) {
			t.Parallel() // each waits for the dead child's lock and watch
			image := testkit.UniqueName(t, "crash")
			clone := image + "-kid"
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				defer cancel()
				store.RemoveImage(ctx, clone)
				store.RemoveSnapshot(ctx, image, snapForCrash)
				store.RemoveImage(ctx, image)
			})
			if err := store.CreateImage(ctx, image, 8<<20); err != nil {
				t.Fatal(err)
			}
			if tc.op == "remove" {
				if err := store.CreateSnapshot(ctx, image, snapForCrash); err != nil {
					t.Fatal(err)
				}
			}

			child := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestRBDStoreCrashChild$", "-test.v")
			child.Env = append(os.Environ(), graph.CrashEnv+"="+tc.step, crashOpEnv+"="+tc.op, crashImageEnv+"="+image, "CEPH_CONF="+conf)
			out, err := child.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("child: %v, want it killed by SIGKILL at %s:\n%s", err, tc.step, out)
			}
			snaps, err := conn.Snapshots(ctx, image)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("after a crash at %s: snapshots %+v", tc.step, snaps)
			// The windows are real on RBD: the snapshot is there,
			// unprotected, which the driver must not take for done.
			if tc.step == graph.StepSnapshotCreated || tc.step == graph.StepSnapshotUnprotected {
				if len(snaps) != 1 || snaps[0].Protected {
					t.Fatalf("after a crash at %s: snapshots %+v, want one unprotected", tc.step, snaps)
				}
			}

			// The restarted driver's first child of this layer protects
			// the snapshot (again), then clones it.
			start := time.Now()
			if err := store.CreateSnapshot(ctx, image, snapForCrash); err != nil {
				t.Fatalf("snapshot+protect after the crash: %v", err)
			}
			t.Logf("snapshot+protect after the crash took %v (the dead client's lock)", time.Since(start).Round(time.Millisecond))
			if err := store.CloneImage(ctx, image, snapForCrash, clone); err != nil {
				t.Fatalf("clone after the crash: %v", err)
			}
			if err := store.RemoveImage(ctx, clone); err != nil {
				t.Fatal(err)
			}
			if err := store.RemoveSnapshot(ctx, image, snapForCrash); err != nil {
				t.Fatalf("unprotect+remove after the crash: %v", err)
			}
			if err := store.RemoveImage(ctx, image); err != nil {
				t.Fatalf("remove the image after the crash: %v", err)
			}
		})
	}
}
