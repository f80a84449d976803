package nbd

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"testing"
	"time"
)

// selfSigned is a throw-away server certificate.
func selfSigned(t testing.TB) tls.Certificate {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

// With TLS required, every option before STARTTLS is refused with
// NBD_REP_ERR_TLS_REQD; after STARTTLS the handshake and transmission go
// on over TLS, and a second STARTTLS is invalid.
func TestStartTLSRequired(t *testing.T) {
	log, _ := testLogger(t)
	m := NewMemory(1 << 20)
	m.WriteAt([]byte("over tls"), 4096)
	s, err := NewServer([]Export{{Name: "m", Backend: m}}, ServerOptions{Logger: log,
		TLS: &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}, TLSRequired: true})
	if err != nil {
		t.Fatal(err)
	}
	h, _ := startHandshake(t, s, clientFlagFixedNewstyle|clientFlagNoZeroes)
	h.option(OptList, nil)
	h.expectReply(OptList, RepErrTLSReqd)
	h.option(OptGo, encodeInfoRequest("m", nil))
	h.expectReply(OptGo, RepErrTLSReqd)
	h.option(OptStartTLS, nil)
	h.expectReply(OptStartTLS, RepAck)
	tc := tls.Client(h.c, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	ht := rawHandshake{t, tc}
	ht.option(OptStartTLS, nil)
	ht.expectReply(OptStartTLS, RepErrInvalid)
	ht.option(OptGo, encodeInfoRequest("m", nil))
	for r := ht.reply(); r.typ != RepAck; r = ht.reply() {
		if r.typ != RepInfo {
			t.Fatalf("NBD_OPT_GO over TLS: %s %q", ReplyTypeName(r.typ), r.data)
		}
	}
	var req [RequestSize]byte
	(&Request{Type: CmdRead, Cookie: 7, Offset: 4096, Length: 8}).Encode(req[:])
	if _, err := tc.Write(req[:]); err != nil {
		t.Fatal(err)
	}
	rep := make([]byte, SimpleReplySize+8)
	if _, err := io.ReadFull(tc, rep); err != nil {
		t.Fatal(err)
	}
	var sr SimpleReply
	if err := DecodeSimpleReply(rep[:SimpleReplySize], &sr); err != nil || sr.Errno != 0 || sr.Cookie != 7 || string(rep[SimpleReplySize:]) != "over tls" {
		t.Fatalf("READ over TLS: %+v %q, %v", sr, rep[SimpleReplySize:], err)
	}
}

// NBD_OPT_EXPORT_NAME has no error reply: before STARTTLS on a server
// requiring TLS it ends the session.
func TestStartTLSRequiredExportNameCloses(t *testing.T) {
	log, _ := testLogger(t)
	s, err := NewServer([]Export{{Backend: NewMemory(1 << 20)}}, ServerOptions{Logger: log,
		TLS: &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}, TLSRequired: true})
	if err != nil {
		t.Fatal(err)
	}
	h, done := startHandshake(t, s, clientFlagFixedNewstyle|clientFlagNoZeroes)
	h.option(OptExportName, nil)
	h.expectClosed()
	if err := waitErr(t, done); err == nil {
		t.Fatal("ServeConn returned nil after EXPORT_NAME before STARTTLS")
	}
}
