package seqnum

import "testing"

func TestWrap(t *testing.T) {
	a, b := Value(0xfffffff0), Value(0x10)
	if !a.LessThan(b) || b.LessThan(a) || !a.LessThanEq(a) {
		t.Fatal("comparison across the wrap")
	}
	if a.Add(0x20) != b || a.Size(b) != 0x20 {
		t.Fatal("add/size across the wrap")
	}
	if !Value(5).InRange(a, b) || Value(0x10).InRange(a, b) || !a.InWindow(a, 1) || Value(0x20).InWindow(a, 0x20) {
		t.Fatal("ranges across the wrap")
	}
	if Max(a, b) != b || Max(b, a) != b {
		t.Fatal("max")
	}
}
