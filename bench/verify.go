package bench

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
)

// The verify pattern is laid out per 512-byte sector so that it does not
// depend on the block size: word 0 is the sector's byte offset (a
// misdirected write shows where it came from), word 1 the run nonce (data
// left by an earlier run does not pass), the other 62 words a mix of
// both.
const sectorSize = 512

// VerifyError reports data that did not match what this run wrote.
type VerifyError struct {
	Off       int64  // byte offset of the first bad sector
	Kind      string // "zeroes", "misdirected", "stale" or "corrupt"
	GotOff    uint64 // the offset stamp found in the sector
	WordIndex int    // first differing 8-byte word in the sector
}

func (e *VerifyError) Error() string {
	switch e.Kind {
	case "zeroes":
		return fmt.Sprintf("verify: sector at byte %d reads as zeroes after it was written (lost write)", e.Off)
	case "misdirected":
		return fmt.Sprintf("verify: sector at byte %d holds this run's data for offset %d (misdirected write or read)", e.Off, e.GotOff)
	case "stale":
		return fmt.Sprintf("verify: sector at byte %d holds data this run did not write (stale or lost write)", e.Off)
	}
	return fmt.Sprintf("verify: sector at byte %d differs from the written pattern at word %d (corrupt data)", e.Off, e.WordIndex)
}

// classify says what kind of wrong the sector s (at byte off) is.
func classify(s []byte, off int64, nonce uint64, word int) *VerifyError {
	e := &VerifyError{Off: off, GotOff: binary.LittleEndian.Uint64(s), WordIndex: word}
	allZero := true
	for _, c := range s {
		if c != 0 {
			allZero = false
			break
		}
	}
	switch {
	case allZero:
		e.Kind = "zeroes"
	case binary.LittleEndian.Uint64(s[8:]) != nonce:
		e.Kind = "stale"
	case e.GotOff != uint64(off):
		e.Kind = "misdirected"
	default:
		e.Kind = "corrupt"
	}
	return e
}

func mix64(x uint64) uint64 { // splitmix64's finaliser
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

func patternWord(nonce uint64, off int64, i int) uint64 {
	switch i {
	case 0:
		return uint64(off)
	case 1:
		return nonce
	}
	return mix64(nonce ^ uint64(off)*0x9e3779b97f4a7c15 + uint64(i))
}

// fillPattern writes the pattern for the byte range [off, off+len(p)).
// off and len(p) are multiples of 512.
func fillPattern(p []byte, off int64, nonce uint64) {
	for s := 0; s+sectorSize <= len(p); s += sectorSize {
		so := off + int64(s)
		for i := 0; i < sectorSize/8; i++ {
			binary.LittleEndian.PutUint64(p[s+8*i:], patternWord(nonce, so, i))
		}
	}
}

// checkPattern returns a *VerifyError for the first sector of p that
// does not hold the pattern for its offset.
func checkPattern(p []byte, off int64, nonce uint64) error {
	for s := 0; s+sectorSize <= len(p); s += sectorSize {
		so := off + int64(s)
		for i := 0; i < sectorSize/8; i++ {
			if binary.LittleEndian.Uint64(p[s+8*i:]) != patternWord(nonce, so, i) {
				return classify(p[s:s+sectorSize], so, nonce, i)
			}
		}
	}
	return nil
}

// verifier remembers which blocks this run has written, so that reads of
// blocks never written (whose content is whatever was there) are not
// checked. Safe for concurrent use; one bit per block.
type verifier struct {
	nonce   uint64
	offset  int64
	bs      int64
	written []atomic.Uint64
	checked atomic.Uint64 // reads compared against the pattern
}

func newVerifier(w Workload, nonce uint64) *verifier {
	n := (w.Blocks() + 63) / 64
	return &verifier{nonce: nonce, offset: w.Offset, bs: int64(w.BlockSize), written: make([]atomic.Uint64, n)}
}

func (v *verifier) block(off int64) int64 { return (off - v.offset) / v.bs }

func (v *verifier) markWritten(off int64) {
	b := v.block(off)
	v.written[b/64].Or(1 << uint(b%64))
}

func (v *verifier) isWritten(off int64) bool {
	b := v.block(off)
	return v.written[b/64].Load()&(1<<uint(b%64)) != 0
}

func (v *verifier) markAll(blocks int64) {
	for b := int64(0); b < blocks; b++ {
		v.written[b/64].Or(1 << uint(b%64))
	}
}
