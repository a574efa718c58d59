package gateway

import (
	"fmt"
	"strings"
	"testing"

	"github.com/espep/espep/internal/ctable"
	"github.com/espep/espep/internal/engine"
	"github.com/espep/espep/internal/metrics"
)

// TestCounterTable: every counter of the gateway and of its engine is in
// its table, and reaches all three views — Stats, the Prometheus
// families, the CLI's summary — with the value counted: each gateway
// counter is set to a value of its own, in several stripes, and must be
// read back the same in each view.
func TestCounterTable(t *testing.T) {
	if err := ctable.CheckTable(CounterTable(), Stats{}); err != nil {
		t.Fatal(err)
	}
	if err := ctable.CheckTable(engine.CounterTable, engine.Stats{}); err != nil {
		t.Fatal(err)
	}
	g, err := New(Config{Engine: engine.Config{Shards: 3}}, nil, func(engine.Side, []byte) {})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	want := map[counter]uint64{}
	for c := range numCounters {
		n := 100 + uint64(c)
		for i := range n {
			g.c[int(i)%len(g.c)].add(c)
		}
		want[c] = n
	}
	st := g.Stats()
	line := " " + st.Summary() + " "
	samples := map[string]float64{}
	for _, m := range g.Counters("x_") {
		for _, s := range m.Read() {
			samples[strings.Join(append([]string{m.Name}, s.Labels...), " ")] = s.Value
		}
	}
	for c, d := range counterTable {
		n := want[counter(c)]
		if v := ctable.Field(st, d.Field); v != float64(n) {
			t.Errorf("%s: Stats has %v, counted %d", d.Field, v, n)
		}
		if !strings.Contains(line, fmt.Sprintf(" %s %d ", d.Name, n)) {
			t.Errorf("%s: not in the summary as %q %d: %s", d.Field, d.Name, n, line)
		}
		key := strings.TrimSpace("x_" + d.Family + " " + d.Label)
		if v, ok := samples[key]; !ok || v != float64(n) {
			t.Errorf("%s: metric %q = %v (present %v), counted %d", d.Field, key, v, ok, n)
		}
	}
	eline := " " + st.Engine.Summary() + " "
	for _, d := range engine.CounterTable {
		key := strings.TrimSpace("x_engine_" + d.Family + " " + d.Label)
		if _, ok := samples[key]; !ok {
			t.Errorf("engine %s: no metric %q", d.Field, key)
		}
		if !strings.Contains(eline, " "+d.Name+" ") {
			t.Errorf("engine %s: not in the summary: %s", d.Field, eline)
		}
	}
	if _, err := metrics.Registry(g.Counters("x_")); err != nil {
		t.Fatalf("the families do not register: %v", err)
	}
}
