package testkit

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// UniqueName is prefix, the test's name (lower case, at most 40 of
// [a-z0-9.-]) and 8 random hex digits: a name no other test or run on
// the same cluster uses, that still says which test made it.
func UniqueName(t testing.TB, prefix string) string {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	name := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '.', r == '-':
			return r
		case r >= 'A' && r <= 'Z':
			return r - 'A' + 'a'
		}
		return '-'
	}, t.Name())
	if len(name) > 40 {
		name = name[:40]
	}
	return prefix + name + "-" + hex.EncodeToString(b[:])
}

// RandomBytes is n bytes from a generator seeded with seed: random
// enough to defeat compression and dedup, and the same on every run.
func RandomBytes(n int, seed uint64) []byte {
	data := make([]byte, n)
	rng := mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i < len(data); i += 8 {
		v := rng.Uint64()
		for j := 0; j < 8 && i+j < len(data); j++ {
			data[i+j] = byte(v >> (8 * j))
		}
	}
	return data
}

// RandomFile writes RandomBytes(size, seed) to a new file in dir and
// returns its path and contents.
func RandomFile(t testing.TB, dir string, size int, seed uint64) (string, []byte) {
	t.Helper()
	data := RandomBytes(size, seed)
	p := filepath.Join(dir, fmt.Sprintf("random-%d.bin", seed))
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p, data
}
