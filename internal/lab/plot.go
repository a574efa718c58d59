package lab

import (
	"fmt"
	"html"
	"io"
	"slices"
	"strings"
	"time"
)

// Marks are what a picture shows besides its lines.
type Marks struct {
	Fade     [2]time.Duration // a span shaded, labelled "radio down" (none when empty)
	Handoffs []time.Duration  // instants the mobile moved, each a vertical line
	// Floor is a goodput (Mbit/s) drawn as a dashed line with its label
	// (none when 0): half the radio's limit, which a handoff's second
	// must stay above.
	Floor      float64
	FloorLabel string
}

// Plot writes an SVG picture of goodput over time for the rows given (one
// line each, e.g. e2e, snoop and split of one scenario), with the marks.
// Each line is a moving average over three bins (300 ms): the receiver
// reads in bursts when a hole is filled, and single bins would spike past
// the link's rate.
func Plot(w io.Writer, title string, rows []Row, m Marks) error {
	fadeFrom, fadeTo := m.Fade[0], m.Fade[1]
	rows = slices.Clone(rows)
	for i := range rows {
		rows[i].Series = smooth(rows[i].Series)
	}
	const (
		width, height        = 720, 360
		left, right, top, bo = 60, 110, 40, 45
	)
	pw, ph := float64(width-left-right), float64(height-top-bo)
	bins, top1 := 0, 1.0
	for _, r := range rows {
		bins = max(bins, len(r.Series))
		for _, v := range r.Series {
			top1 = max(top1, v)
		}
	}
	if bins < 2 {
		return fmt.Errorf("lab: plot: no series to draw")
	}
	ymax := niceCeil(top1 * 1.1)
	tmax := float64(bins) * SampleEvery.Seconds()
	x := func(t float64) float64 { return float64(left) + t/tmax*pw }
	y := func(v float64) float64 { return float64(top) + ph - v/ymax*ph }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", width, height)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="14">%s</text>`+"\n", left, html.EscapeString(title))
	if fadeTo > fadeFrom {
		x0, x1 := x(fadeFrom.Seconds()), x(fadeTo.Seconds())
		fmt.Fprintf(&b, `<rect x="%.1f" y="%d" width="%.1f" height="%.1f" fill="#e8e8e8"/>`+"\n", x0, top, x1-x0, ph)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" fill="#666">radio down</text>`+"\n", x0+4, top+14)
	}
	for i, at := range m.Handoffs {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%.1f" stroke="#555" stroke-dasharray="4 3"/>`+"\n", x(at.Seconds()), top, x(at.Seconds()), float64(top)+ph)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" fill="#555">handoff %d</text>`+"\n", x(at.Seconds())+4, top+14, i+1)
	}
	if m.Floor > 0 {
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#2ca02c" stroke-dasharray="6 4"/>`+"\n", left, y(m.Floor), float64(left)+pw, y(m.Floor))
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" fill="#2ca02c" text-anchor="end">%s</text>`+"\n", float64(left)+pw-4, y(m.Floor)-4, html.EscapeString(m.FloorLabel))
	}
	// Axes and grid.
	for i := 0; i <= 4; i++ {
		v := ymax * float64(i) / 4
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, y(v), float64(left)+pw, y(v))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%g</text>`+"\n", left-6, y(v)+4, v)
	}
	for t := 0.0; t <= tmax+1e-9; t += tickStep(tmax) {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%g</text>`+"\n", x(t), float64(top)+ph+16, t)
	}
	fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", left, float64(top)+ph, float64(left)+pw, float64(top)+ph)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%.1f" stroke="black"/>`+"\n", left, top, left, float64(top)+ph)
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">seconds</text>`+"\n", float64(left)+pw/2, height-8)
	fmt.Fprintf(&b, `<text x="16" y="%.1f" transform="rotate(-90 16 %.1f)" text-anchor="middle">goodput, Mbit/s</text>`+"\n", float64(top)+ph/2, float64(top)+ph/2)
	colors := map[Mode]string{ModeE2E: "#d62728", ModeSnoop: "#ff7f0e", ModeSplit: "#1f77b4"}
	for i, r := range rows {
		var pts []string
		for k, v := range r.Series {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x((float64(k)+0.5)*SampleEvery.Seconds()), y(v)))
		}
		c := colors[r.Mode]
		if c == "" {
			c = "black"
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", c, strings.Join(pts, " "))
		ly := top + 10 + 18*i
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s" stroke-width="2"/>`+"\n", float64(left)+pw+10, ly, float64(left)+pw+30, ly, c)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d">%s</text>`+"\n", float64(left)+pw+36, ly+4, html.EscapeString(string(r.Mode)))
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// smooth is the moving average of v over three bins.
func smooth(v []float64) []float64 {
	out := make([]float64, len(v))
	for k := range v {
		sum, n := 0.0, 0
		for j := max(0, k-1); j <= min(len(v)-1, k+1); j++ {
			sum += v[j]
			n++
		}
		out[k] = sum / float64(n)
	}
	return out
}

// niceCeil rounds v up to a round number: 1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8
// times a power of ten.
func niceCeil(v float64) float64 {
	p := 1.0
	for p*10 <= v {
		p *= 10
	}
	for p > v && p > 1e-9 {
		p /= 10
	}
	for _, m := range []float64{1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

// tickStep is a step for about five to ten time ticks.
func tickStep(tmax float64) float64 {
	for _, s := range []float64{0.5, 1, 2, 5, 10, 20, 30, 60} {
		if tmax/s <= 10 {
			return s
		}
	}
	return 120
}
