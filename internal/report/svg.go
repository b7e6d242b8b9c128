package report

import (
	"fmt"
	"html"
	"math"
	"strconv"
	"strings"
)

// svg writes one SVG document: plain elements, no script, no external
// resources, so the HTML report stays one self-contained file. Every text
// is escaped: VMI names and guest strings come from the cluster and from
// guest memory.
type svg struct {
	b    strings.Builder
	w, h float64
}

func newSVG(kind, title string, w, h float64) *svg {
	s := &svg{w: w, h: h}
	fmt.Fprintf(&s.b, `<svg xmlns="http://www.w3.org/2000/svg" class="plot" data-plot="%s" width="%g" height="%g" viewBox="0 0 %g %g" role="img" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">`,
		esc(kind), w, h, w, h)
	fmt.Fprintf(&s.b, `<title>%s</title><rect class="background" x="0" y="0" width="%g" height="%g" fill="#ffffff"/>`, esc(title), w, h)
	return s
}

func (s *svg) String() string { return s.b.String() + "</svg>" }

func esc(v string) string { return html.EscapeString(v) }

func num(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }

// attrs renders optional attributes given as name, value pairs.
func attrs(kv []string) string {
	var b strings.Builder
	for i := 0; i+1 < len(kv); i += 2 {
		fmt.Fprintf(&b, ` %s="%s"`, kv[i], esc(kv[i+1]))
	}
	return b.String()
}

func (s *svg) text(x, y float64, anchor, fill string, size float64, v string, kv ...string) {
	fmt.Fprintf(&s.b, `<text x="%s" y="%s" text-anchor="%s" fill="%s" font-size="%g"%s>%s</text>`, num(x), num(y), anchor, fill, size, attrs(kv), esc(v))
}

func (s *svg) line(x1, y1, x2, y2 float64, stroke string, width float64, dash string, kv ...string) {
	d := ""
	if dash != "" {
		d = fmt.Sprintf(` stroke-dasharray="%s"`, dash)
	}
	fmt.Fprintf(&s.b, `<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s" stroke-width="%g"%s%s/>`, num(x1), num(y1), num(x2), num(y2), stroke, width, d, attrs(kv))
}

func (s *svg) rect(x, y, w, h float64, fill string, opacity float64, kv ...string) {
	fmt.Fprintf(&s.b, `<rect x="%s" y="%s" width="%s" height="%s" fill="%s" fill-opacity="%g"%s/>`, num(x), num(y), num(math.Max(w, 0)), num(math.Max(h, 0)), fill, opacity, attrs(kv))
}

func (s *svg) circle(x, y, r float64, stroke, fill string, kv ...string) {
	fmt.Fprintf(&s.b, `<circle cx="%s" cy="%s" r="%g" stroke="%s" stroke-width="2" fill="%s"%s/>`, num(x), num(y), r, stroke, fill, attrs(kv))
}

// polyline draws connected points; data-points records how many, for tests
// and for readers of the SVG source.
func (s *svg) polyline(xs, ys []float64, stroke string, width float64, kv ...string) {
	var p strings.Builder
	for i := range xs {
		if i > 0 {
			p.WriteByte(' ')
		}
		p.WriteString(num(xs[i]))
		p.WriteByte(',')
		p.WriteString(num(ys[i]))
	}
	fmt.Fprintf(&s.b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="%g" stroke-linejoin="round" data-points="%d"%s/>`, p.String(), stroke, width, len(xs), attrs(kv))
}

// polygon fills the area under points down to base.
func (s *svg) area(xs, ys []float64, base float64, fill string, opacity float64) {
	if len(xs) == 0 {
		return
	}
	var p strings.Builder
	fmt.Fprintf(&p, "%s,%s", num(xs[0]), num(base))
	for i := range xs {
		fmt.Fprintf(&p, " %s,%s", num(xs[i]), num(ys[i]))
	}
	fmt.Fprintf(&p, " %s,%s", num(xs[len(xs)-1]), num(base))
	fmt.Fprintf(&s.b, `<polygon points="%s" fill="%s" fill-opacity="%g" stroke="none"/>`, p.String(), fill, opacity)
}

func (s *svg) group(kv ...string) { fmt.Fprintf(&s.b, `<g%s>`, attrs(kv)) }
func (s *svg) end()               { s.b.WriteString(`</g>`) }

// frame maps data coordinates into a rectangle of the canvas.
type frame struct {
	x, y, w, h             float64 // pixels
	xmin, xmax, ymin, ymax float64 // data
}

func (f frame) X(v float64) float64 {
	if f.xmax == f.xmin {
		return f.x
	}
	return f.x + (v-f.xmin)/(f.xmax-f.xmin)*f.w
}

func (f frame) Y(v float64) float64 {
	if f.ymax == f.ymin {
		return f.y + f.h
	}
	return f.y + f.h - (v-f.ymin)/(f.ymax-f.ymin)*f.h
}

// ticks returns about n round values covering [lo, hi].
func ticks(lo, hi float64, n int) []float64 {
	if !(hi > lo) || math.IsInf(hi-lo, 0) || n < 1 {
		return []float64{lo}
	}
	raw := (hi - lo) / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	var out []float64
	for v := math.Ceil(lo/step) * step; v <= hi+step*1e-9 && len(out) < 50; v += step {
		out = append(out, v)
	}
	return out
}

// axes draws the frame's box, grid lines and tick labels.
func (s *svg) axes(f frame, xticks, yticks []float64, xfmt, yfmt func(float64) string, xlabel, ylabel string) {
	s.rect(f.x, f.y, f.w, f.h, "#fafafa", 1, "class", "frame")
	for _, v := range yticks {
		y := f.Y(v)
		s.line(f.x, y, f.x+f.w, y, "#e0e0e0", 1, "")
		s.text(f.x-6, y+4, "end", "#555", 11, yfmt(v))
	}
	for _, v := range xticks {
		x := f.X(v)
		s.line(x, f.y, x, f.y+f.h, "#e0e0e0", 1, "")
		if xfmt != nil {
			s.text(x, f.y+f.h+15, "middle", "#555", 11, xfmt(v))
		}
	}
	s.line(f.x, f.y+f.h, f.x+f.w, f.y+f.h, "#888", 1, "")
	s.line(f.x, f.y, f.x, f.y+f.h, "#888", 1, "")
	if xlabel != "" {
		s.text(f.x+f.w/2, f.y+f.h+32, "middle", "#333", 12, xlabel)
	}
	if ylabel != "" {
		fmt.Fprintf(&s.b, `<text x="%s" y="%s" text-anchor="middle" fill="#333" font-size="12" transform="rotate(-90 %s %s)">%s</text>`,
			num(f.x-48), num(f.y+f.h/2), num(f.x-48), num(f.y+f.h/2), esc(ylabel))
	}
}

// compact formats a count for an axis: 1.2k, 35M.
func compact(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 1e9:
		return trimZero(v/1e9) + "G"
	case a >= 1e6:
		return trimZero(v/1e6) + "M"
	case a >= 1e3:
		return trimZero(v/1e3) + "k"
	}
	return trimZero(v)
}

func trimZero(v float64) string {
	s := strconv.FormatFloat(v, 'f', 1, 64)
	return strings.TrimSuffix(s, ".0")
}

// palette colours the victim blue and the suspects in warm colours.
var palette = []string{"#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"}

const victimColour = "#1f77b4"
