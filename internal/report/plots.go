package report

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/evidence"
)

const (
	plotWidth   = 1100.0
	marginLeft  = 90.0
	marginRight = 30.0
	panelHeight = 105.0
	panelGap    = 34.0
)

// plots draws every figure the snapshot has data for.
func plots(r *Report) []Plot {
	var out []Plot
	trains := trainPanels(r)
	if len(trains) > 0 {
		lo, hi := zoomWindow(r, trains)
		out = append(out, Plot{
			Kind:  "event-trains",
			Title: "Event trains around the onset",
			Caption: fmt.Sprintf("Counter events per millisecond of the victim and every suspect from %s to %s around the onset (red dashed line).", offsetText(lo), offsetText(hi)) +
				trainsLegend(r),
			SVG: drawTrains(r, trains, lo, hi, "event-trains", "Event trains around the onset"),
		})
		flo, fhi := fullWindow(trains)
		if float64(fhi-flo) > 1.5*float64(hi-lo) {
			out = append(out, Plot{
				Kind:    "event-trains-overview",
				Title:   "Event trains over the whole snapshot",
				Caption: fmt.Sprintf("The same counters from %s to %s; each pixel shows the highest value it covers. The shaded band is the zoomed window above.", offsetText(flo), offsetText(fhi)),
				SVG:     drawTrains(r, trains, flo, fhi, "event-trains-overview", "Event trains over the whole snapshot", lo, hi),
			})
		}
	}
	d := r.snapshot.Detector
	if a := d.Autocorrelation; a != nil && len(a.Values) > 1 {
		out = append(out, Plot{
			Kind:  "autocorrelation",
			Title: "Autocorrelation of the conflict-miss train",
			Caption: fmt.Sprintf("Normalised autocorrelation of %s %s by lag; the peak at %s (%.2f) is the channel's period, its multiples are marked. The dashed line is the detector's threshold.",
				a.VMI, a.Event, time.Duration(a.PeakLagNs), a.PeakValue),
			SVG: drawCorrelogram(a, "autocorrelation", "Autocorrelation of "+a.VMI+" "+string(a.Event), true),
		})
	}
	if x := d.CrossCorrelation; x != nil && len(x.Values) > 1 {
		out = append(out, Plot{
			Kind:  "cross-correlation",
			Title: "Cross-correlation of the channel's two ends",
			Caption: fmt.Sprintf("Correlation of the trains of %s by lag; the peak (%.2f at %s) is how far the second end follows the first: a sender and a receiver move together.",
				strings.ReplaceAll(x.VMI, "+", " and "), x.PeakValue, time.Duration(x.PeakLagNs)),
			SVG: drawCorrelogram(x, "cross-correlation", "Cross-correlation of "+strings.ReplaceAll(x.VMI, "+", " and "), false),
		})
	}
	if len(d.Bursts) > 0 {
		out = append(out, Plot{
			Kind:    "burst-periods",
			Title:   "Lock burst periods",
			Caption: "Time between consecutive lock bursts, by when the burst started; the dashed line is the mean period. A covert channel keeps a steady clock; gaps at multiples of it are 0 bits.",
			SVG:     drawBursts(r, d.Bursts),
		})
	}
	if len(d.PhaseCorrelation) > 0 {
		out = append(out, Plot{
			Kind:    "phase-correlation",
			Title:   "Correlation with the victim's sensitive phases",
			Caption: "How each suspect's cache anomalies line up with the phases in which the victim ran its sensitive code (-1..1).",
			SVG:     drawPhaseCorrelation(r, d.PhaseCorrelation),
		})
	}
	if len(r.snapshot.CoScheduling) > 0 {
		out = append(out, Plot{
			Kind:    "co-scheduling",
			Title:   "Co-scheduling overlap",
			Caption: "Share of the window two VMIs ran at the same time on the two hardware threads of one core (SMT siblings) and on CPUs sharing a last-level cache; below, the same over time for the pairs with the victim.",
			SVG:     drawCoScheduling(r),
		})
	}
	return out
}

func trainsLegend(r *Report) string {
	out := ""
	for _, c := range r.snapshot.Detector.PhaseCorrelation {
		if len(c.Phases) > 0 {
			out = " Green bands are the victim's sensitive phases; red marks under a suspect are its anomalies."
			break
		}
	}
	if len(r.snapshot.Detector.Bursts) > 0 {
		out += " Triangles mark the lock bursts the detector found."
	}
	return out
}

// trainPanel is one VMI's series in the event-train plot.
type trainPanel struct {
	party  Party
	series evidence.Series
}

// preferred lists the counters that show an attack of each type, best
// first.
func preferred(t v1alpha1.ThreatType) []v1alpha1.CounterEvent {
	if t == v1alpha1.BusLockCovertChannel {
		return []v1alpha1.CounterEvent{v1alpha1.EventSplitLocks, v1alpha1.EventBusLocks, v1alpha1.EventLLCMisses, v1alpha1.EventLLCReferences}
	}
	return []v1alpha1.CounterEvent{v1alpha1.EventLLCMisses, v1alpha1.EventLLCReferences, v1alpha1.EventL1DMisses, v1alpha1.EventSplitLocks, v1alpha1.EventBusLocks}
}

func trainPanels(r *Report) []trainPanel {
	s := r.snapshot
	var out []trainPanel
	for _, p := range r.Parties {
		var have []evidence.Series
		for _, se := range s.Series {
			if se.VMI == p.Key && len(se.Values) > 0 {
				have = append(have, se)
			}
		}
		if len(have) == 0 {
			continue
		}
		pick := have[0]
		for _, e := range slices.Backward(preferred(r.finding.Spec.Type)) {
			for _, se := range have {
				if se.Event == e {
					pick = se
				}
			}
		}
		out = append(out, trainPanel{party: p, series: pick})
		if len(out) == 8 {
			break
		}
	}
	return out
}

func fullWindow(trains []trainPanel) (lo, hi int64) {
	lo, hi = trains[0].series.StartNs, trains[0].series.End()
	for _, t := range trains {
		lo, hi = min(lo, t.series.StartNs), max(hi, t.series.End())
	}
	return lo, hi
}

// zoomWindow is the span around the onset the trains are drawn over:
// eight periods of the channel when the detector found one (so its rhythm
// shows), else ±250 ms, within the data.
func zoomWindow(r *Report, trains []trainPanel) (lo, hi int64) {
	half := int64(250 * time.Millisecond)
	var period int64
	d := r.snapshot.Detector
	switch {
	case d.Autocorrelation != nil && d.Autocorrelation.PeakLagNs > 0:
		period = d.Autocorrelation.PeakLagNs
	case len(d.Bursts) > 0 && d.Bursts[0].MeanPeriodNs > 0:
		period = d.Bursts[0].MeanPeriodNs
	case r.finding.Spec.Evidence.Period != nil:
		period = int64(r.finding.Spec.Evidence.Period.Duration)
	}
	if period > 0 {
		half = min(max(8*period, int64(100*time.Millisecond)), int64(time.Second))
		half = int64(time.Duration(half).Round(time.Millisecond))
	}
	flo, fhi := fullWindow(trains)
	lo, hi = max(-half, flo), min(half, fhi)
	if hi <= lo { // the onset lies outside the data: show its start
		lo, hi = flo, min(flo+2*half, fhi)
	}
	return lo, hi
}

// points returns the series' values in [lo, hi) as events per millisecond
// at bin centres, keeping at most maxPoints by taking the highest value of
// each run (so short bursts stay visible).
func points(se evidence.Series, lo, hi int64, maxPoints int) (xs, ys []float64) {
	perMs := float64(time.Millisecond) / float64(se.StepNs)
	first := max(0, int((lo-se.StartNs)/se.StepNs))
	last := min(len(se.Values), int((hi-se.StartNs+se.StepNs-1)/se.StepNs))
	n := last - first
	if n <= 0 {
		return nil, nil
	}
	group := max(1, (n+maxPoints-1)/maxPoints)
	for i := first; i < last; i += group {
		top := math.Inf(-1)
		for j := i; j < min(i+group, last); j++ {
			top = math.Max(top, se.Values[j])
		}
		mid := se.StartNs + int64(i)*se.StepNs + int64(min(group, last-i))*se.StepNs/2
		xs = append(xs, float64(mid))
		ys = append(ys, top*perMs)
	}
	return xs, ys
}

func drawTrains(r *Report, trains []trainPanel, lo, hi int64, kind, title string, highlight ...int64) string {
	top := 26.0
	h := top + float64(len(trains))*(panelHeight+panelGap) + 30
	c := newSVG(kind, title, plotWidth, h)
	c.text(marginLeft, 17, "start", "#222", 13, title, "font-weight", "bold")
	w := plotWidth - marginLeft - marginRight
	xt := ticks(float64(lo)/1e6, float64(hi)/1e6, 10)
	var phases []evidence.Interval
	for _, pc := range r.snapshot.Detector.PhaseCorrelation {
		if len(pc.Phases) > len(phases) {
			phases = pc.Phases
		}
	}
	for i, t := range trains {
		y0 := top + float64(i)*(panelHeight+panelGap) + 14
		xs, ys := points(t.series, lo, hi, int(w))
		ymax := 1.0
		for _, v := range ys {
			ymax = math.Max(ymax, v)
		}
		yt := ticks(0, ymax*1.08, 3)
		f := frame{x: marginLeft, y: y0, w: w, h: panelHeight, xmin: float64(lo) / 1e6, xmax: float64(hi) / 1e6, ymin: 0, ymax: math.Max(ymax*1.08, yt[len(yt)-1])}
		xlabel := ""
		var xfmt func(float64) string
		if i == len(trains)-1 {
			xlabel, xfmt = "time from onset (ms)", func(v float64) string { return trimZero(v) }
		}
		c.group("class", "panel", "data-vmi", t.party.Key, "data-event", string(t.series.Event))
		c.axes(f, xt, yt, xfmt, compact, xlabel, "")
		c.text(marginLeft-50, y0+panelHeight/2+4, "middle", "#333", 11, "per ms")
		if len(highlight) == 2 {
			c.rect(f.X(float64(highlight[0])/1e6), y0, f.X(float64(highlight[1])/1e6)-f.X(float64(highlight[0])/1e6), panelHeight, "#ffd54f", 0.25)
		}
		for _, p := range phases {
			a, b := math.Max(float64(p.StartNs), float64(lo)), math.Min(float64(p.EndNs), float64(hi))
			if b > a {
				c.rect(f.X(a/1e6), y0, math.Max(f.X(b/1e6)-f.X(a/1e6), 1), panelHeight, "#2ca02c", 0.18, "class", "phase")
			}
		}
		pxs := make([]float64, len(xs))
		pys := make([]float64, len(ys))
		for j := range xs {
			pxs[j], pys[j] = f.X(xs[j]/1e6), f.Y(ys[j])
		}
		c.area(pxs, pys, y0+panelHeight, t.party.Colour, 0.15)
		c.polyline(pxs, pys, t.party.Colour, 1.2, "class", "train", "data-series", t.party.Key+" "+string(t.series.Event))
		for _, pc := range r.snapshot.Detector.PhaseCorrelation {
			if pc.Suspect != t.party.Key {
				continue
			}
			for _, a := range pc.Anomalies {
				x0, x1 := math.Max(float64(a.StartNs), float64(lo)), math.Min(float64(a.EndNs), float64(hi))
				if x1 > x0 {
					c.rect(f.X(x0/1e6), y0+panelHeight-5, math.Max(f.X(x1/1e6)-f.X(x0/1e6), 2), 5, "#d62728", 0.9, "class", "anomaly")
				}
			}
		}
		for _, b := range r.snapshot.Detector.Bursts {
			if b.VMI != t.party.Key {
				continue
			}
			for _, bt := range b.TimesNs {
				if bt >= lo && bt < hi {
					x := f.X(float64(bt) / 1e6)
					fmt.Fprintf(&c.b, `<polygon class="burst" points="%s,%s %s,%s %s,%s" fill="#333"/>`, num(x-4), num(y0+1), num(x+4), num(y0+1), num(x), num(y0+8))
				}
			}
		}
		if lo <= 0 && hi >= 0 {
			x := f.X(0)
			c.line(x, y0, x, y0+panelHeight, "#d62728", 1.5, "5,3", "class", "onset")
			if i == 0 {
				c.text(x+4, y0+11, "start", "#d62728", 11, "onset")
			}
		}
		label := fmt.Sprintf("%s · %s · %s", t.party.Key, t.party.Role, t.series.Event)
		c.text(marginLeft, y0-4, "start", t.party.Colour, 12, label, "font-weight", "bold")
		c.end()
	}
	return c.String()
}

// drawCorrelogram plots a correlation curve by lag with its peak marked;
// harmonics marks the multiples of the peak lag (an autocorrelation's
// period).
func drawCorrelogram(a *evidence.Correlogram, kind, title string, harmonics bool) string {
	const h = 330.0
	c := newSVG(kind, title, plotWidth, h)
	c.text(marginLeft, 17, "start", "#222", 13, title, "font-weight", "bold")
	lagMs := float64(a.LagStepNs) / 1e6
	xmin := float64(a.FirstLagNs) / 1e6
	xmax := xmin + float64(len(a.Values)-1)*lagMs
	ymin, ymax := -0.2, 1.0
	for _, v := range a.Values {
		ymin = math.Min(ymin, v)
		ymax = math.Max(ymax, v)
	}
	f := frame{x: marginLeft, y: 30, w: plotWidth - marginLeft - marginRight, h: h - 80, xmin: xmin, xmax: xmax, ymin: math.Floor(ymin*10) / 10, ymax: ymax}
	c.axes(f, ticks(xmin, xmax, 12), ticks(f.ymin, f.ymax, 6), trimZero, func(v float64) string { return fmt.Sprintf("%.1f", v) }, "lag (ms)", "correlation")
	c.line(f.x, f.Y(0), f.x+f.w, f.Y(0), "#999", 1, "")
	if peakMs := float64(a.PeakLagNs) / 1e6; harmonics && peakMs > 0 {
		for k := 2.0; k*peakMs <= xmax && k < 200; k++ {
			c.line(f.X(k*peakMs), f.y, f.X(k*peakMs), f.y+f.h, "#ff7f0e", 1, "2,4", "class", "harmonic")
		}
	}
	if a.Threshold != 0 {
		c.line(f.x, f.Y(a.Threshold), f.x+f.w, f.Y(a.Threshold), "#d62728", 1.2, "6,4", "class", "threshold")
		c.text(f.x+f.w-4, f.Y(a.Threshold)-5, "end", "#d62728", 11, fmt.Sprintf("threshold %.2f", a.Threshold))
	}
	xs := make([]float64, len(a.Values))
	ys := make([]float64, len(a.Values))
	for i, v := range a.Values {
		xs[i], ys[i] = f.X(xmin+float64(i)*lagMs), f.Y(v)
	}
	c.polyline(xs, ys, victimColour, 1.6, "class", "curve", "data-series", a.VMI+" "+string(a.Event))
	if a.PeakLagNs != 0 || a.PeakValue != 0 {
		px, py := f.X(float64(a.PeakLagNs)/1e6), f.Y(a.PeakValue)
		c.circle(px, py, 7, "#d62728", "none", "class", "peak", "data-lag-ns", fmt.Sprint(a.PeakLagNs), "data-value", fmt.Sprintf("%.4f", a.PeakValue))
		c.text(px+11, py-8, "start", "#d62728", 12, fmt.Sprintf("peak %.2f at %s", a.PeakValue, time.Duration(a.PeakLagNs)), "font-weight", "bold")
	}
	return c.String()
}

func drawBursts(r *Report, trains []evidence.BurstTrain) string {
	const h = 300.0
	c := newSVG("burst-periods", "Lock burst periods", plotWidth, h)
	c.text(marginLeft, 17, "start", "#222", 13, "Time between lock bursts", "font-weight", "bold")
	var xmin, xmax, ymax float64 = math.Inf(1), math.Inf(-1), 1
	for _, b := range trains {
		for i, p := range b.PeriodsNs {
			if i+1 < len(b.TimesNs) {
				xmin, xmax = math.Min(xmin, float64(b.TimesNs[i+1])/1e6), math.Max(xmax, float64(b.TimesNs[i+1])/1e6)
			}
			ymax = math.Max(ymax, float64(p)/1e6)
		}
	}
	if math.IsInf(xmin, 0) {
		xmin, xmax = 0, 1
	}
	f := frame{x: marginLeft, y: 30, w: plotWidth - marginLeft - marginRight, h: h - 80, xmin: xmin, xmax: math.Max(xmax, xmin+1), ymin: 0, ymax: ymax * 1.15}
	c.axes(f, ticks(f.xmin, f.xmax, 10), ticks(0, f.ymax, 5), trimZero, trimZero, "burst start, time from onset (ms)", "period (ms)")
	for i, b := range trains {
		colour := colourOf(r, b.VMI, i)
		if b.MeanPeriodNs > 0 {
			c.line(f.x, f.Y(float64(b.MeanPeriodNs)/1e6), f.x+f.w, f.Y(float64(b.MeanPeriodNs)/1e6), colour, 1, "6,4", "class", "mean-period")
			c.text(f.x+f.w-4, f.Y(float64(b.MeanPeriodNs)/1e6)-5, "end", colour, 11, fmt.Sprintf("mean %s", time.Duration(b.MeanPeriodNs).Round(10*time.Microsecond)))
		}
		for j, p := range b.PeriodsNs {
			if j+1 < len(b.TimesNs) {
				c.circle(f.X(float64(b.TimesNs[j+1])/1e6), f.Y(float64(p)/1e6), 3, colour, colour, "class", "burst-period")
			}
		}
	}
	return c.String()
}

func drawPhaseCorrelation(r *Report, corrs []evidence.PhaseCorrelation) string {
	rowH := 34.0
	h := 60 + rowH*float64(len(corrs)) + 40
	c := newSVG("phase-correlation", "Correlation with the victim's sensitive phases", plotWidth, h)
	c.text(marginLeft, 17, "start", "#222", 13, "Correlation of suspects' anomalies with the victim's sensitive phases", "font-weight", "bold")
	left := 260.0
	f := frame{x: left, y: 34, w: plotWidth - left - marginRight, h: rowH * float64(len(corrs)), xmin: -1, xmax: 1, ymin: 0, ymax: 1}
	c.axes(f, ticks(-1, 1, 8), nil, func(v float64) string { return fmt.Sprintf("%.2g", v) }, nil, "correlation coefficient", "")
	c.line(f.X(0), f.y, f.X(0), f.y+f.h, "#666", 1, "")
	for i, pc := range corrs {
		y := f.y + float64(i)*rowH + 7
		colour := colourOf(r, pc.Suspect, i)
		x0, x1 := f.X(math.Min(0, pc.Coefficient)), f.X(math.Max(0, pc.Coefficient))
		c.rect(x0, y, math.Max(x1-x0, 1), rowH-14, colour, 0.85, "class", "coefficient", "data-vmi", pc.Suspect, "data-value", fmt.Sprintf("%.4f", pc.Coefficient))
		c.text(left-8, y+rowH/2-3, "end", colour, 12, pc.Suspect)
		c.text(x1+6, y+rowH/2-3, "start", "#222", 12, fmt.Sprintf("%.2f", pc.Coefficient))
	}
	return c.String()
}

func drawCoScheduling(r *Report) string {
	s := r.snapshot
	rowH := 30.0
	barsH := 40 + rowH*float64(len(s.CoScheduling))
	victim := r.Parties[0].Key
	var withOverlap []evidence.CoScheduling
	for _, cs := range s.CoScheduling {
		if cs.Overlap != nil && (cs.A == victim || cs.B == victim) && len(cs.Overlap.SMTSibling) > 1 {
			withOverlap = append(withOverlap, cs)
		}
	}
	overlapH := 0.0
	if len(withOverlap) > 0 {
		overlapH = 240
	}
	h := barsH + overlapH + 30
	c := newSVG("co-scheduling", "Co-scheduling overlap", plotWidth, h)
	c.text(marginLeft, 17, "start", "#222", 13, "Time VMI pairs ran at once on shared hardware", "font-weight", "bold")
	left := 380.0
	bw := plotWidth - left - 190
	for i, cs := range s.CoScheduling {
		y := 32 + float64(i)*rowH
		frac := func(ns int64) float64 {
			if cs.WindowNs <= 0 {
				return 0
			}
			return math.Min(1, float64(ns)/float64(cs.WindowNs))
		}
		smt, llc := frac(cs.SMTSiblingNs), frac(cs.SharedLLCNs)
		other := cs.A
		if other == victim {
			other = cs.B
		}
		colour := colourOf(r, other, i)
		c.group("class", "pair", "data-a", cs.A, "data-b", cs.B)
		c.text(left-8, y+15, "end", "#222", 12, cs.A+" ↔ "+cs.B)
		c.rect(left, y+3, bw, rowH-10, "#eeeeee", 1)
		c.rect(left, y+3, bw*llc, rowH-10, colour, 0.35, "class", "shared-llc", "data-fraction", fmt.Sprintf("%.4f", llc))
		c.rect(left, y+3, bw*smt, rowH-10, colour, 0.95, "class", "smt-sibling", "data-fraction", fmt.Sprintf("%.4f", smt))
		c.text(left+bw+8, y+15, "start", "#222", 11, fmt.Sprintf("SMT %.0f%% · LLC %.0f%%", smt*100, llc*100))
		c.end()
	}
	if len(withOverlap) > 0 {
		y0 := barsH + 30
		o0 := withOverlap[0].Overlap
		var lo, hi int64 = o0.StartNs, o0.StartNs
		for _, cs := range withOverlap {
			o := cs.Overlap
			lo = min(lo, o.StartNs)
			hi = max(hi, o.StartNs+int64(max(len(o.SMTSibling), len(o.SharedLLC)))*o.StepNs)
		}
		f := frame{x: marginLeft, y: y0, w: plotWidth - marginLeft - marginRight, h: overlapH - 60, xmin: float64(lo) / 1e6, xmax: float64(hi) / 1e6, ymin: 0, ymax: 100}
		c.axes(f, ticks(f.xmin, f.xmax, 10), []float64{0, 25, 50, 75, 100}, trimZero, func(v float64) string { return trimZero(v) + "%" }, "time from onset (ms); solid: SMT siblings, dashed: shared LLC", "overlap")
		for i, cs := range withOverlap {
			other := cs.A
			if other == victim {
				other = cs.B
			}
			colour := colourOf(r, other, i)
			o := cs.Overlap
			for _, l := range []struct {
				vals  []float64
				dash  string
				class string
			}{{o.SMTSibling, "", "overlap-smt"}, {o.SharedLLC, "6,3", "overlap-llc"}} {
				xs := make([]float64, len(l.vals))
				ys := make([]float64, len(l.vals))
				for j, v := range l.vals {
					xs[j] = f.X(float64(o.StartNs+int64(j)*o.StepNs+o.StepNs/2) / 1e6)
					ys[j] = f.Y(v * 100)
				}
				if l.dash != "" {
					fmt.Fprintf(&c.b, `<g stroke-dasharray="%s">`, l.dash)
				}
				c.polyline(xs, ys, colour, 1.6, "class", l.class, "data-series", cs.A+" "+cs.B)
				if l.dash != "" {
					c.end()
				}
			}
		}
		if lo <= 0 && hi >= 0 {
			c.line(f.X(0), f.y, f.X(0), f.y+f.h, "#d62728", 1.5, "5,3", "class", "onset")
		}
	}
	return c.String()
}

func colourOf(r *Report, key string, fallback int) string {
	for _, p := range r.Parties {
		if p.Key == key {
			return p.Colour
		}
	}
	return palette[fallback%len(palette)]
}

func offsetText(ns int64) string {
	d := time.Duration(ns)
	if d >= 0 {
		return "+" + d.String()
	}
	return d.String()
}
