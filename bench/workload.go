package bench

import (
	"fmt"
	"math/bits"
	"math/rand/v2"
	"strings"
	"sync/atomic"
)

// Pattern is the IO mix of a workload, named as in fio's --rw.
type Pattern int

// The patterns. Mixed patterns choose read or write per IO by
// Workload.ReadPercent.
const (
	Read      Pattern = iota // sequential reads
	Write                    // sequential writes
	RandRead                 // random reads
	RandWrite                // random writes
	RandRW                   // random, mixed reads and writes ("mixed", fio's randrw)
	SeqRW                    // sequential, mixed reads and writes (fio's rw / readwrite)
)

var patternNames = []string{"read", "write", "randread", "randwrite", "randrw", "rw"}

func (p Pattern) String() string {
	if p < 0 || int(p) >= len(patternNames) {
		return fmt.Sprintf("Pattern(%d)", int(p))
	}
	return patternNames[p]
}

// ParsePattern accepts fio's names and "mixed" (random mixed).
func ParsePattern(s string) (Pattern, error) {
	switch strings.ToLower(s) {
	case "mixed", "randrw":
		return RandRW, nil
	case "readwrite", "rw":
		return SeqRW, nil
	}
	for i, n := range patternNames {
		if strings.EqualFold(s, n) {
			return Pattern(i), nil
		}
	}
	return 0, &OptionError{Option: "rw", Value: s,
		Reason: "unknown pattern; use read, write, randread, randwrite, mixed (randrw) or rw"}
}

// Random reports whether offsets are random (else sequential).
func (p Pattern) Random() bool { return p == RandRead || p == RandWrite || p == RandRW }

// Mixed reports whether the pattern both reads and writes.
func (p Pattern) Mixed() bool { return p == RandRW || p == SeqRW }

// Writes reports whether the pattern issues any writes.
func (p Pattern) Writes() bool { return p != Read && p != RandRead }

// Reads reports whether the pattern issues any reads.
func (p Pattern) Reads() bool { return p != Write && p != RandWrite }

// Workload is what to issue: which pattern, in which region, how big.
// The region is [Offset, Offset+Size); Size is rounded down to whole
// blocks by Blocks.
type Workload struct {
	Pattern     Pattern
	BlockSize   int   // bytes per IO, a multiple of 512
	ReadPercent int   // mixed patterns: share of reads, 0..100 (fio's rwmixread)
	Offset      int64 // start of the region, a multiple of BlockSize
	Size        int64 // bytes in the region
	Seed        uint64
}

// Blocks is the number of whole blocks in the region.
func (w Workload) Blocks() int64 { return w.Size / int64(w.BlockSize) }

// Check validates the workload on its own, before a target is opened.
// A Size of 0 (the whole target) is checked later by Validate.
func (w Workload) Check() error {
	switch {
	case w.Pattern < Read || w.Pattern > SeqRW:
		return &OptionError{Option: "rw", Value: w.Pattern.String(), Reason: "unknown pattern"}
	case w.BlockSize <= 0 || w.BlockSize%512 != 0:
		return &OptionError{Option: "bs", Value: fmt.Sprint(w.BlockSize),
			Reason: "must be a positive multiple of 512 (direct IO and NBD work in sectors), e.g. 4k"}
	case w.BlockSize > 32<<20:
		return &OptionError{Option: "bs", Value: fmt.Sprint(w.BlockSize),
			Reason: "larger than 32 MiB, the NBD protocol's request limit"}
	case w.ReadPercent < 0 || w.ReadPercent > 100:
		return &OptionError{Option: "rwmix", Value: fmt.Sprint(w.ReadPercent),
			Reason: "must be a percentage of reads between 0 and 100"}
	case w.Offset < 0 || w.Offset%int64(w.BlockSize) != 0:
		return &OptionError{Option: "offset", Value: fmt.Sprint(w.Offset),
			Reason: "must be a non-negative multiple of the block size"}
	case w.Size < 0:
		return &OptionError{Option: "size", Value: fmt.Sprint(w.Size), Reason: "must not be negative (0: the whole target)"}
	case w.Size > 0 && w.Size < int64(w.BlockSize):
		return &OptionError{Option: "size", Value: fmt.Sprint(w.Size),
			Reason: fmt.Sprintf("the region must hold at least one block of %d bytes", w.BlockSize)}
	}
	return nil
}

// Validate checks the workload against a target of backendSize bytes,
// before any IO. Size must be set (Run sets 0 to the rest of the target).
func (w Workload) Validate(backendSize int64) error {
	if err := w.Check(); err != nil {
		return err
	}
	switch {
	case w.Size < int64(w.BlockSize):
		return &OptionError{Option: "size", Value: fmt.Sprint(w.Size),
			Reason: fmt.Sprintf("the region must hold at least one block of %d bytes (the target has %d bytes)", w.BlockSize, backendSize)}
	case w.Offset+w.Size > backendSize:
		return &OptionError{Option: "size", Value: fmt.Sprint(w.Size),
			Reason: fmt.Sprintf("offset+size %d is past the end of the target (%d bytes); use a smaller --size", w.Offset+w.Size, backendSize)}
	}
	return nil
}

// Op is one IO: a read or a write of BlockSize bytes at Off.
type Op struct {
	Write bool
	Off   int64
}

// Cursor is the shared position of sequential patterns, so that all
// workers together walk the region in order (as fio does with one job and
// several IOs in flight) rather than each streaming its own stripe.
type Cursor struct{ next atomic.Uint64 }

// Stream produces the IOs of one worker. Random offsets come from a PCG
// generator seeded with (Workload.Seed, worker index), so a given seed and
// worker always yield the same sequence; the read/write choice of mixed
// patterns comes from the same generator. A Stream is not safe for
// concurrent use; Next does not allocate.
type Stream struct {
	w      Workload
	blocks uint64
	rng    rand.PCG
	cursor *Cursor
}

// NewStream returns worker's stream. Workers of one run share cursor
// (used by sequential patterns only; nil makes a private one).
func (w Workload) NewStream(worker int, cursor *Cursor) *Stream {
	if cursor == nil {
		cursor = new(Cursor)
	}
	s := &Stream{w: w, blocks: uint64(w.Blocks()), cursor: cursor}
	// The stream constant keeps worker streams apart even for seed 0.
	s.rng.Seed(w.Seed, uint64(worker)^0x9e3779b97f4a7c15)
	return s
}

// Next returns the next IO.
func (s *Stream) Next() Op {
	var op Op
	switch s.w.Pattern {
	case Write, RandWrite:
		op.Write = true
	case RandRW, SeqRW:
		op.Write = s.uint64n(100) >= uint64(s.w.ReadPercent)
	}
	var block uint64
	if s.w.Pattern.Random() {
		block = s.uint64n(s.blocks)
	} else {
		block = (s.cursor.next.Add(1) - 1) % s.blocks
	}
	op.Off = s.w.Offset + int64(block)*int64(s.w.BlockSize)
	return op
}

// uint64n is a uniform value in [0, n): Lemire's multiply-and-reject, so
// no block is favoured when n is not a power of two.
func (s *Stream) uint64n(n uint64) uint64 {
	hi, lo := bits.Mul64(s.rng.Uint64(), n)
	if lo < n {
		thresh := -n % n
		for lo < thresh {
			hi, lo = bits.Mul64(s.rng.Uint64(), n)
		}
	}
	return hi
}
