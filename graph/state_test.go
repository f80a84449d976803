package graph

import "testing"

// A record counts as an image's own only when it was written on that
// image: librbd's clone copies the parent's image-meta, so a clone whose
// own record was never written carries its parent's.
func TestParseRecordTellsInheritedRecords(t *testing.T) {
	n := naming{prefix: "p-"}
	for _, tc := range []struct {
		name, image, parent, value string
		wantOwn                    bool
		wantState                  State
	}{
		{"own", "p-layer-c", "p-layer-b", `{"state":"ready","image":"p-layer-c","parent":"b"}`, true, StateReady},
		{"inherited", "p-layer-c", "p-layer-b", `{"state":"ready","image":"p-layer-b","parent":"a"}`, false, ""},
		{"inherited from a published layer", "p-layer-c", "shared-x", `{"state":"ready","image":"q-layer-x"}`, false, ""},
		{"base's own", "p-base", "", `{"state":"ready","image":"p-base","owner":"h:/home"}`, true, StateReady},
		// Records from before the image field:
		{"old own", "p-layer-c", "p-layer-b", `{"state":"ready","parent":"b"}`, true, StateReady},
		{"old own, child of the base", "p-layer-c", "p-base", `{"state":"removing"}`, true, StateRemoving},
		{"old own, flattened", "p-layer-c", "", `{"state":"ready","parent":"b"}`, true, StateReady},
		{"old, the parent's", "p-layer-c", "p-layer-b", `{"state":"ready","parent":"a"}`, false, ""},
		{"old, the base's", "p-layer-c", "p-base", `{"state":"ready","owner":"h:/home"}`, false, ""},
		{"old, a base child's", "p-layer-c", "p-base", `{"state":"ready","parent":"b"}`, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec, own, err := n.parseRecord(tc.image, tc.parent, map[string]string{metaRecord: tc.value})
			if err != nil {
				t.Fatal(err)
			}
			if own != tc.wantOwn || rec.State != tc.wantState {
				t.Fatalf("parseRecord(%s, parent %q, %s) = %+v, own %t; want own %t, state %q",
					tc.image, tc.parent, tc.value, rec, own, tc.wantOwn, tc.wantState)
			}
		})
	}
	if _, own, err := n.parseRecord("p-layer-c", "p-layer-b", map[string]string{}); own || err != nil {
		t.Fatalf("no record: own %t, err %v; want neither", own, err)
	}
	if _, _, err := n.parseRecord("p-layer-c", "", map[string]string{metaRecord: "v9:ready"}); err == nil {
		t.Fatal("an unreadable record gave no error")
	}
}
