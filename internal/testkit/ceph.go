package testkit

import (
	"regexp"
	"testing"
	"time"
)

// Ceph runs the ceph command against the test cluster (CephConf),
// bounded, and fails the test if it fails.
func Ceph(t testing.TB, args ...string) string {
	t.Helper()
	all := append([]string{"--conf", CephConf(t), "--connect-timeout", "30"}, args...)
	return Must(t, 60*time.Second, Tool(t, "ceph"), all...)
}

var watcherRE = regexp.MustCompile(`watcher=(\S+)`)

// BlocklistWatcher blocklists the client that watches pool/image (`rbd
// status` names its address) until the test ends, and returns the
// address: the fault a fenced client meets, produced for real.
func BlocklistWatcher(t testing.TB, image string) string {
	t.Helper()
	out := Must(t, 30*time.Second, Tool(t, "rbd"), "--conf", CephConf(t), "status", image)
	m := watcherRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no watcher in rbd status of %s:\n%s", image, out)
	}
	Ceph(t, "osd", "blocklist", "add", m[1])
	t.Cleanup(func() { Ceph(t, "osd", "blocklist", "rm", m[1]) })
	return m[1]
}
