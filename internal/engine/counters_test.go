package engine

import (
	"testing"

	"github.com/espep/espep/internal/ctable"
)

// TestCounterTable: every numeric field of Stats has its row, once.
func TestCounterTable(t *testing.T) {
	if err := ctable.CheckTable(CounterTable, Stats{}); err != nil {
		t.Fatal(err)
	}
}
