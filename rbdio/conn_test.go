package rbdio

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rbd"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

func TestConnectListsImages(t *testing.T) {
	c := testConn(t)
	name := createImage(t, c, 1<<20)
	names, err := c.ListImages(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, n := range names {
		found = found || n == name
	}
	if !found {
		t.Errorf("ListImages = %v, missing %s", names, name)
	}
	if id, err := c.FSID(); err != nil || len(id) != 36 {
		t.Errorf("FSID = %q, %v", id, err)
	}
}

// Every Config field is used: a wrong value of each fails in its own way.
func TestConnectErrors(t *testing.T) {
	conf := testkit.CephConf(t)
	dir := t.TempDir()
	ctx := testContext(t)

	t.Run("missing conf file", func(t *testing.T) {
		_, err := Connect(ctx, Config{ConfFile: filepath.Join(dir, "nope.conf")})
		t.Log(err)
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "nope.conf") {
			t.Fatalf("err = %v, want ErrNotFound naming the file", err)
		}
	})
	t.Run("missing keyring file", func(t *testing.T) {
		_, err := Connect(ctx, Config{ConfFile: conf, Keyring: filepath.Join(dir, "nope.keyring")})
		t.Log(err)
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "nope.keyring") {
			t.Fatalf("err = %v, want ErrNotFound naming the keyring", err)
		}
	})
	t.Run("wrong key", func(t *testing.T) {
		authtool := testkit.Tool(t, "ceph-authtool")
		kr := filepath.Join(dir, "wrong.keyring")
		if out, err := exec.Command(authtool, "--create-keyring", kr, "--gen-key", "-n", "client.admin").CombinedOutput(); err != nil {
			t.Fatalf("ceph-authtool: %v: %s", err, out)
		}
		_, err := Connect(ctx, Config{ConfFile: conf, Keyring: kr, ConnectTimeout: 10 * time.Second})
		t.Log(err)
		if !errors.Is(err, ErrPermission) || !strings.Contains(err.Error(), "client.admin") {
			t.Fatalf("err = %v, want ErrPermission naming client.admin", err)
		}
	})
	t.Run("unknown id", func(t *testing.T) {
		_, err := Connect(ctx, Config{ConfFile: conf, ID: "nobody", ConnectTimeout: 10 * time.Second})
		t.Log(err)
		if err == nil || !strings.Contains(err.Error(), "client.nobody") {
			t.Fatalf("err = %v, want an error naming client.nobody", err)
		}
		if !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrPermission) {
			t.Errorf("err = %v, want ErrNotFound or ErrPermission", err)
		}
	})
	t.Run("unknown cluster name", func(t *testing.T) {
		// The cluster name picks default conf and keyring paths; with
		// an explicit conf it still names the client's cluster.
		c, err := Connect(ctx, Config{ConfFile: conf, Cluster: "ceph", ConnectTimeout: 10 * time.Second})
		if err != nil {
			t.Fatalf("cluster ceph: %v", err)
		}
		c.Close()
		t.Setenv("CEPH_CONF", "")
		_, err = Connect(ctx, Config{Cluster: "nosuchcluster", ConnectTimeout: 5 * time.Second})
		t.Log(err)
		if err == nil {
			t.Fatal("cluster nosuchcluster with no conf: connected")
		}
	})
	t.Run("cache policy", func(t *testing.T) {
		_, err := Connect(ctx, Config{ConfFile: conf, CachePolicy: "off"})
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "writethrough") {
			t.Fatalf("policy off: %v, want ErrInvalid naming the policies", err)
		}
		// The default turns librbd's cache off; a chosen policy keeps
		// it on with that policy.
		for cfgPolicy, want := range map[CachePolicy][2]string{
			"": {"false", ""}, CacheWriteback: {"true", "writeback"}, CacheWritethrough: {"true", "writethrough"},
		} {
			c, err := Connect(ctx, Config{ConfFile: conf, CachePolicy: cfgPolicy})
			if err != nil {
				t.Fatal(err)
			}
			cache, err1 := c.rados.GetConfigOption("rbd_cache")
			policy, err2 := c.rados.GetConfigOption("rbd_cache_policy")
			c.Close()
			if err1 != nil || err2 != nil || cache != want[0] || (want[1] != "" && policy != want[1]) {
				t.Errorf("policy %q: rbd_cache = %q, rbd_cache_policy = %q (%v, %v), want %q", cfgPolicy, cache, policy, err1, err2, want)
			}
		}
	})
	t.Run("missing pool", func(t *testing.T) {
		_, err := Connect(ctx, Config{ConfFile: conf, Pool: "no-such-pool"})
		t.Log(err)
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "no-such-pool") ||
			!strings.Contains(err.Error(), "ceph osd pool create") {
			t.Fatalf("err = %v, want ErrNotFound naming the pool and the fix", err)
		}
	})
	t.Run("missing namespace", func(t *testing.T) {
		_, err := Connect(ctx, Config{ConfFile: conf, Namespace: "no-such-ns"})
		t.Log(err)
		if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "rbd namespace create rbd/no-such-ns") {
			t.Fatalf("err = %v, want ErrNotFound with the fix", err)
		}
	})
	t.Run("no cluster", func(t *testing.T) {
		dead := writeDeadConf(t, conf, dir)
		start := time.Now()
		_, err := Connect(ctx, Config{ConfFile: dead, ConnectTimeout: 2 * time.Second})
		t.Log(err)
		if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "is the cluster running") {
			t.Fatalf("err = %v, want ErrUnreachable with a hint", err)
		}
		// It names the monitors tried, the ceph.conf they came from, and
		// what to check.
		for _, want := range []string{"127.0.0.1:9", "ceph.conf " + dead, "mon host", "ceph -s --conf " + dead} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("err = %v, want it to mention %q", err, want)
			}
		}
		if d := time.Since(start); d > 15*time.Second {
			t.Errorf("took %v with ConnectTimeout 2s", d)
		}
	})
	t.Run("cancelled while connecting", func(t *testing.T) {
		dead := writeDeadConf(t, conf, dir)
		cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := Connect(cctx, Config{ConfFile: dead, ConnectTimeout: 30 * time.Second})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want context.DeadlineExceeded", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("returned after %v", d)
		}
	})
}

// writeDeadConf copies the cluster's ceph.conf with the monitor moved
// to a port nothing listens on.
func writeDeadConf(t *testing.T, conf, dir string) string {
	t.Helper()
	data, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^mon host = .*$`)
	if !re.Match(data) {
		t.Fatalf("%s has no 'mon host = ' line", conf)
	}
	dead := filepath.Join(dir, "dead.conf")
	data = re.ReplaceAll(data, []byte("mon host = [v2:127.0.0.1:9,v1:127.0.0.1:10]"))
	if err := os.WriteFile(dead, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return dead
}

func TestNamespace(t *testing.T) {
	c := testConn(t)
	ns := "rbdio-test-ns"
	if err := namespaceCreate(c, ns); err != nil {
		t.Fatal(err)
	}
	nc, err := Connect(testContext(t), Config{ConfFile: testkit.CephConf(t), Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	name := createImage(t, nc, 1<<20)
	inNS, err := nc.ListImages(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	outside, err := c.ListImages(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	if !contains(inNS, name) || contains(outside, name) {
		t.Errorf("image %s: in namespace list %v; in default namespace list: %v", name, contains(inNS, name), contains(outside, name))
	}
	im := openImage(t, nc, name, OpenOptions{})
	if !strings.Contains(im.String(), "rbd/"+ns+"/"+name) {
		t.Errorf("spec %q lacks the namespace", im.String())
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// namespaceCreate makes RADOS namespace ns in c's pool if it is missing.
func namespaceCreate(c *Conn, ns string) error {
	exists, err := rbd.NamespaceExists(c.ioctx, ns)
	if err != nil || exists {
		return err
	}
	return rbd.NamespaceCreate(c.ioctx, ns)
}
