package clients

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd-graph/rbd-nbd-graph/internal/testkit"
)

// tlsDir writes a throw-away CA and a server and a client certificate it
// signed, named as libnbd (tls-certificates=DIR) and qemu's
// tls-creds-x509 (dir=DIR, endpoint=client) look for them, and returns
// the directory.
func tlsDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	key := func(name string) *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		write(name, "PRIVATE KEY", der)
		return k
	}
	now := time.Now()
	caKey := key("ca-key.pem")
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "rbd-nbd-graph test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	write("ca-cert.pem", "CERTIFICATE", caDER)
	for i, who := range []string{"server", "client"} {
		k := key(who + "-key.pem")
		c := &x509.Certificate{
			SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: "localhost"},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
			KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		}
		if who == "server" {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		} else {
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		}
		der, err := x509.CreateCertificate(rand.Reader, c, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		write(who+"-cert.pem", "CERTIFICATE", der)
	}
	return dir
}

// --tls require with client certificates: libnbd (nbdinfo, nbdcopy over
// an nbds+unix URI) and qemu-img (a tls-creds-x509 object) get the
// export over TLS and move data through it intact; a plain client is
// refused.
func TestExportTLS(t *testing.T) {
	testkit.Tool(t, "nbdinfo")
	certs := tlsDir(t)
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	p := startWrapped(t, nil, "--socket", sock, "--tls", "require",
		"--tls-cert", filepath.Join(certs, "server-cert.pem"), "--tls-key", filepath.Join(certs, "server-key.pem"),
		"--tls-ca", filepath.Join(certs, "ca-cert.pem"), "mem:4M")
	if !strings.HasPrefix(p.uri, "nbds+unix://") {
		t.Fatalf("export printed %q, want an nbds+unix:// URI", p.uri)
	}
	q := url.Values{"socket": {sock}, "tls-certificates": {certs}}
	uri := "nbds+unix:///?" + q.Encode()

	if out := runTool(t, "nbdinfo", "--size", uri); strings.TrimSpace(out) != "4194304" {
		t.Errorf("nbdinfo --size over TLS = %q, want 4194304", out)
	}
	// Without TLS: refused.
	plain := "nbd+unix:///?" + url.Values{"socket": {sock}}.Encode()
	if out, err := tool(t, "nbdinfo", "--size", plain); err == nil {
		t.Errorf("nbdinfo without TLS succeeded on a --tls require export: %s", out)
	} else if !strings.Contains(strings.ToLower(out), "tls") {
		t.Errorf("nbdinfo without TLS failed without naming TLS: %s", out)
	}

	// Data through TLS both ways.
	dir := t.TempDir()
	src, data := testkit.RandomFile(t, dir, 4<<20, 13)
	runTool(t, "nbdcopy", src, uri)
	back := filepath.Join(dir, "back.raw")
	runTool(t, "nbdcopy", uri, back)
	got, err := os.ReadFile(back)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("data copied out over TLS differs from what was copied in")
	}

	testkit.Tool(t, "qemu-img")
	out := runTool(t, "qemu-img", "compare",
		"--object", "tls-creds-x509,id=tls0,dir="+certs+",endpoint=client",
		"--image-opts", "driver=raw,file.driver=file,file.filename="+src,
		"driver=raw,file.driver=nbd,file.server.type=unix,file.server.path="+sock+",file.tls-creds=tls0,file.tls-hostname=localhost")
	if !strings.Contains(out, "Images are identical") {
		t.Errorf("qemu-img compare over TLS: %s", out)
	}
}

// With --tls-ca a client without a certificate the CA signed is refused;
// with --tls on (no CA) TLS is offered and plain clients still served.
func TestExportTLSClientCertAndOptional(t *testing.T) {
	testkit.Tool(t, "nbdinfo")
	certs := tlsDir(t)
	serverFlags := []string{"--tls-cert", filepath.Join(certs, "server-cert.pem"), "--tls-key", filepath.Join(certs, "server-key.pem")}

	// A client holding only the CA certificate (no client certificate).
	anon := t.TempDir()
	ca, err := os.ReadFile(filepath.Join(certs, "ca-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(anon, "ca-cert.pem"), ca, 0o600); err != nil {
		t.Fatal(err)
	}

	sock := filepath.Join(t.TempDir(), "nbd.sock")
	startWrapped(t, nil, append(append([]string{"--socket", sock, "--tls", "require"}, serverFlags...),
		"--tls-ca", filepath.Join(certs, "ca-cert.pem"), "mem:1M")...)
	noCert := "nbds+unix:///?" + url.Values{"socket": {sock}, "tls-certificates": {anon}}.Encode()
	if out, err := tool(t, "nbdinfo", "--size", noCert); err == nil {
		t.Errorf("a client without a certificate was served despite --tls-ca: %s", out)
	}

	sock2 := filepath.Join(t.TempDir(), "nbd.sock")
	p := startWrapped(t, nil, append(append([]string{"--socket", sock2, "--tls", "on"}, serverFlags...), "mem:1M")...)
	if !strings.HasPrefix(p.uri, "nbd+unix://") {
		t.Errorf("--tls on printed %q, want the plain nbd+unix:// URI (TLS is optional)", p.uri)
	}
	for _, u := range []string{
		"nbd+unix:///?" + url.Values{"socket": {sock2}}.Encode(),
		"nbds+unix:///?" + url.Values{"socket": {sock2}, "tls-certificates": {anon}}.Encode(),
	} {
		if out := runTool(t, "nbdinfo", "--size", u); strings.TrimSpace(out) != "1048576" {
			t.Errorf("nbdinfo --size %s = %q, want 1048576", u, out)
		}
	}
}
