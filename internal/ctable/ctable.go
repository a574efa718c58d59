// Package ctable is the form of a component's counter table: one row per
// counter, naming its Stats field, its word in the CLI's summary line and
// its Prometheus family. Stats, the metrics (metrics.FromTable) and the
// summary (Line) are generated from the one table, and CheckTable, called
// by each component's tests, fails when a Stats field has no row. It
// holds no counters itself: the components keep theirs as they need
// (atomic, striped, under a lock).
package ctable

import (
	"fmt"
	"reflect"
	"strings"
)

// Def is one row of a component's counter table: the one place a counter
// is named. Its Stats field, its word in the CLI's summary line, and its
// Prometheus family are all generated from it (FromTable, Line), so a
// counter cannot reach one view and miss another.
type Def struct {
	// Field is the counter's field in the component's Stats struct
	// (uint64 or int).
	Field string
	// Name is its word in the CLI's summary ("icv-failures").
	Name string
	// Family is its Prometheus family without prefix ("sealed_total"),
	// shared by several rows when they differ by Label.
	Family string
	// LabelName and Label: the family's label and this row's value of it
	// (empty: a family of one).
	LabelName, Label string
	// Help is the family's help text (the first row of a family gives it).
	Help string
	// Gauge: a level, not a count.
	Gauge bool
}

// Field returns the value of field name of the struct v (a Stats).
func Field(v any, name string) float64 {
	f := reflect.ValueOf(v).FieldByName(name)
	switch f.Kind() {
	case reflect.Uint64, reflect.Uint32, reflect.Uint:
		return float64(f.Uint())
	case reflect.Int, reflect.Int64:
		return float64(f.Int())
	}
	panic(fmt.Sprintf("ctable: no counter field %q in %T", name, v)) // a table bug, caught by the table tests
}

// Fill sets each row's field of the struct stats points to from value(i),
// i the row's index: a component keeps its counters as it needs (atomic,
// striped) and makes its Stats through its table.
func Fill(defs []Def, stats any, value func(i int) uint64) {
	v := reflect.ValueOf(stats).Elem()
	for i, d := range defs {
		v.FieldByName(d.Field).SetUint(value(i))
	}
}

// Line is the CLI summary of v under the table: "name value name value …"
// in the table's order.
func Line(defs []Def, v any) string {
	var b strings.Builder
	for i, d := range defs {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s %d", d.Name, int64(Field(v, d.Field)))
	}
	return b.String()
}

// CheckTable reports how a table and its Stats type disagree: a
// numeric field with no row, a row with no field, a name or a family row
// given twice. Each component's test calls it.
func CheckTable(defs []Def, stats any, skip ...string) error {
	t := reflect.TypeOf(stats)
	rows, names, famLabel := map[string]bool{}, map[string]bool{}, map[string]bool{}
	var errs []string
	for _, d := range defs {
		if f, ok := t.FieldByName(d.Field); !ok || !numeric(f.Type.Kind()) {
			errs = append(errs, "row "+d.Field+": no such counter field")
		}
		if rows[d.Field] || names[d.Name] || famLabel[d.Family+"\x00"+d.Label] {
			errs = append(errs, "row "+d.Field+": given twice (field, name or family and label)")
		}
		rows[d.Field], names[d.Name], famLabel[d.Family+"\x00"+d.Label] = true, true, true
		if d.Name == "" || d.Family == "" || d.Help == "" && !famLabel[d.Family+"\x00help"] {
			errs = append(errs, "row "+d.Field+": name, family or help missing")
		}
		if d.Help != "" {
			famLabel[d.Family+"\x00help"] = true
		}
	}
	skipped := map[string]bool{}
	for _, s := range skip {
		skipped[s] = true
	}
	for i := range t.NumField() {
		f := t.Field(i)
		if numeric(f.Type.Kind()) && !rows[f.Name] && !skipped[f.Name] {
			errs = append(errs, "field "+f.Name+": no row in the table")
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("counter table of %v: %s", t, strings.Join(errs, "; "))
	}
	return nil
}

func numeric(k reflect.Kind) bool {
	switch k {
	case reflect.Uint64, reflect.Uint32, reflect.Uint, reflect.Int, reflect.Int64:
		return true
	}
	return false
}
