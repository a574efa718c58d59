package metrics

import "github.com/espep/espep/internal/ctable"

// FromTable makes the Prometheus families of a table, in the table's
// order, read from the snapshots snap returns (a Stats struct; snap may
// cache).
func FromTable(prefix string, defs []ctable.Def, snap func() any) []Counter {
	var fams [][]ctable.Def
	at := map[string]int{}
	for _, d := range defs {
		i, ok := at[d.Family]
		if !ok {
			i = len(fams)
			at[d.Family] = i
			fams = append(fams, nil)
		}
		fams[i] = append(fams[i], d)
	}
	out := make([]Counter, 0, len(fams))
	for _, rows := range fams {
		first := rows[0]
		c := Counter{Name: prefix + first.Family, Help: first.Help, Gauge: first.Gauge}
		if first.LabelName != "" {
			c.Labels = []string{first.LabelName}
		}
		c.Read = func() []Sample {
			v := snap()
			s := make([]Sample, 0, len(rows))
			for _, d := range rows {
				var labels []string
				if d.LabelName != "" {
					labels = []string{d.Label}
				}
				s = append(s, Sample{Value: ctable.Field(v, d.Field), Labels: labels})
			}
			return s
		}
		out = append(out, c)
	}
	return out
}
