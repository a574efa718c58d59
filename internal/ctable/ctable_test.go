package ctable

import (
	"strings"
	"testing"
)

type stats struct {
	A, B uint64
	N    int
	Name string // not a counter
}

// TestCheckTable: a field without a row, a row without a field and a row
// given twice are each reported; a whole table is not.
func TestCheckTable(t *testing.T) {
	whole := []Def{{Field: "A", Name: "a", Family: "a_total", Help: "A."}, {Field: "B", Name: "b", Family: "x_total", LabelName: "k", Label: "b", Help: "B or N."},
		{Field: "N", Name: "n", Family: "x_total", LabelName: "k", Label: "n"}}
	if err := CheckTable(whole, stats{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		defs []Def
		want string
	}{
		{whole[:2], "field N: no row"},
		{append(whole[:3:3], Def{Field: "C", Name: "c", Family: "c_total", Help: "C."}), "row C: no such counter field"},
		{append(whole[:3:3], Def{Field: "A", Name: "a2", Family: "a2_total", Help: "A."}), "row A: given twice"},
		{append(whole[:3:3], Def{Field: "Name", Name: "name", Family: "name_total", Help: "?"}), "row Name: no such counter field"},
	} {
		if err := CheckTable(tc.defs, stats{}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.defs, err, tc.want)
		}
	}
	if got := Line(whole, stats{A: 1, B: 2, N: 3}); got != "a 1 b 2 n 3" {
		t.Fatalf("Line: %q", got)
	}
}
