package gateway

import "testing"

// TestLRU: a full table forgets the entry used least recently — touching
// an entry keeps it — and reuses the freed node.
func TestLRU(t *testing.T) {
	l := newLRU[int, string](3)
	for i := range 3 {
		if l.put(i, "x") {
			t.Fatal("evicted before full")
		}
	}
	l.get(0) // 0 is now the most recent; 1 the least
	if !l.put(3, "y") {
		t.Fatal("no eviction when full")
	}
	if _, ok := l.peek(1); ok {
		t.Fatal("evicted the wrong entry: 1 was idle longest")
	}
	for _, k := range []int{0, 2, 3} {
		if _, ok := l.peek(k); !ok {
			t.Fatalf("entry %d lost", k)
		}
	}
	l.delete(2)
	l.put(4, "z")
	if len(l.m) != 3 {
		t.Fatalf("%d entries", len(l.m))
	}
	if v, _ := l.get(4); *v != "z" {
		t.Fatal("value")
	}
	allocs := testing.AllocsPerRun(100, func() { l.get(0); l.get(3) })
	if allocs != 0 {
		t.Fatalf("%v allocations to touch an entry", allocs)
	}
}
