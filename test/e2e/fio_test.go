//go:build vmtest

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// fioVerify writes size bytes of the device at random with crc32c
// checksums (direct IO through libaio) and reads everything back.
func fioVerify(t *testing.T, dev, size string, extra ...string) string {
	t.Helper()
	args := []string{"--name=verify", "--filename=" + dev, "--ioengine=libaio", "--direct=1",
		"--rw=randwrite", "--bsrange=4k-64k", "--iodepth=16", "--size=" + size,
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--randrepeat=0"}
	out := testkit.Must(t, 10*time.Minute, "fio", append(args, extra...)...)
	if !strings.Contains(out, "err= 0") {
		t.Fatalf("fio reported an error:\n%s", out)
	}
	return out
}

// fio with verification on the device, with one and with four
// connections per device.
func TestFioVerify(t *testing.T) {
	testkit.RequireTools(t, "fio")
	for _, conns := range []int{1, 4} {
		t.Run(fmt.Sprintf("%d connections", conns), func(t *testing.T) {
			image := newImage(t, 128, "")
			dev := mapDevice(t, image, "--connections", fmt.Sprint(conns))
			fioVerify(t, dev, "48M")
			unmap(t, dev)
		})
	}
}
