package sizes

import "testing"

// Table is the grammar (cmd/rbd-nbd-graph's TestOneSizeGrammar runs the
// same inputs through the three places that read sizes).
var Table = []struct {
	In   string
	Want int64 // -1: refused
}{
	{"4096", 4096},
	{"0", 0},
	{"4k", 4096},
	{"4K", 4096},
	{"4KiB", 4096},
	{"4kb", 4096},
	{"512M", 512 << 20},
	{"1.5G", 3 << 29},
	{"1.5g", 3 << 29},
	{"1 GiB", 1 << 30},
	{"2T", 2 << 40},
	{"1P", 1 << 50},
	{"1.5k", 1536},
	{"", -1},
	{"G", -1},
	{"-1G", -1},
	{"1x", -1},
	{"1GiBs", -1},
	{"1.2.3G", -1},
	{"99999999999p", -1},
}

func TestParse(t *testing.T) {
	for _, tc := range Table {
		got, err := Parse(tc.In)
		if tc.Want < 0 {
			if err == nil {
				t.Errorf("Parse(%q) = %d, want an error", tc.In, got)
			}
			continue
		}
		if err != nil || got != tc.Want {
			t.Errorf("Parse(%q) = %d, %v; want %d", tc.In, got, err, tc.Want)
		}
	}
}
