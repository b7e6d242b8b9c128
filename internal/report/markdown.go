package report

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"path"
	"strings"
	"time"
	"unicode"
)

// Markdown writes the report as Markdown that reads well as plain text in
// a terminal: tables, and sparklines for the plots.
func (r *Report) Markdown(w io.Writer) error {
	b := bufio.NewWriter(w)
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }

	p("# %s\n\n", mdText(r.Title))
	p("Generated %s", stamp(r.GeneratedAt))
	if r.Source != "" {
		p(" from %s", mdText(r.Source))
	}
	p(".\n\n%s\n\n", mdText(r.Summary))
	if len(r.Notes) > 0 {
		for _, n := range r.Notes {
			p("> **Note:** %s\n", mdText(n))
		}
		p("\n")
	}

	p("## Finding\n\n")
	factTable(b, r.Facts)

	p("## Timeline\n\nTimes in UTC; the offset counts from the first evidence.\n\n")
	p("| Time | Offset | Source | What |\n|---|---|---|---|\n")
	for _, e := range r.Timeline {
		what := mdCell(e.What)
		if e.Warning {
			what = "**" + what + "**"
		}
		p("| %s | %s | %s | %s |\n", stamp(e.Time), r.Offset(e.Time), e.Source, what)
	}
	p("\n")

	if r.snapshot != nil {
		r.markdownPlots(b)
	}

	p("## Who and what\n\n")
	for _, party := range r.Parties {
		head := party.Role
		if party.Role != "Victim" {
			head = "Suspect"
		}
		p("### %s %s", head, mdText(party.Key))
		if party.Role != "Victim" {
			p(" (%s", mdText(party.Role))
			if party.Score != nil {
				p(", score %.2f", *party.Score)
			}
			p(")")
		}
		p("\n\n")
		if party.UID != "" {
			p("- UID %s\n", mdText(party.UID))
		}
		if sh := party.Sharing(); sh != "" {
			p("- Co-scheduling: %s\n", sh)
		}
		if party.VCPUs > 0 {
			p("- %d vCPUs", party.VCPUs)
			if len(party.HostCPUs) > 0 {
				p(" on host CPUs %s", cpuList(party.HostCPUs))
			}
			p("\n")
		}
		p("\n")
		if len(party.Programs) > 0 {
			p("Sampled guest code (introspection attribution):\n\n| Samples | PID | Process | File | Offset | Symbol |\n|---:|---:|---|---|---|---|\n")
			for _, g := range party.Programs {
				p("| %d | %d | %s | %s | %s | %s |\n", g.Samples, g.PID, mdCell(g.Comm), mdCell(g.Path), mdCell(g.Offset), mdCell(g.Symbol))
			}
			if party.Unattributed > 0 {
				p("| %d | | | *not attributed (guest kernel or unmapped)* | | |\n", party.Unattributed)
			}
			p("\n")
		}
		switch {
		case party.ProcessesError != "":
			p("Guest processes: %s\n\n", mdText(party.ProcessesError))
		case len(party.Processes) > 0:
			const shown = 40
			p("Guest processes at capture (%d of %d; * = sampled above):\n\n| PID | PPID | Process | Executable | Libraries |\n|---:|---:|---|---|---|\n", min(shown, len(party.Processes)), party.ProcessesTotal)
			for i, pr := range party.Processes {
				if i == shown {
					p("| … | | %d more | | |\n", len(party.Processes)-shown)
					break
				}
				mark := ""
				if party.Sampled[pr.PID] {
					mark = "*"
				}
				p("| %d%s | %d | %s | %s | %s |\n", pr.PID, mark, pr.PPID, mdCell(pr.Comm), mdCell(pr.Exe), mdCell(libraries(pr.Libraries, 4)))
			}
			p("\n")
		}
	}

	p("## Actions taken\n\n")
	if len(r.Actions) == 0 {
		p("None recorded: the operator has not acted on this finding.\n\n")
	} else {
		factTable(b, r.Actions)
		if len(r.Conditions) > 0 {
			p("| Condition | Status | Reason | Since | Message |\n|---|---|---|---|---|\n")
			for _, c := range r.Conditions {
				p("| %s | %s | %s | %s | %s |\n", mdCell(c.Type), c.Status, mdCell(c.Reason), stamp(c.LastTransitionTime.Time), mdCell(c.Message))
			}
			p("\n")
		}
	}

	if len(r.Figures) > 0 {
		p("## Detector figures\n\n")
		factTable(b, r.Figures)
	}

	if len(r.Pairs) > 0 {
		p("## Co-scheduling\n\n| Pair | Window | On SMT siblings | Sharing an LLC | Handovers on one CPU |\n|---|---:|---:|---:|---:|\n")
		for _, pr := range r.Pairs {
			p("| %s ↔ %s | %s | %s (%s) | %s (%s) | %d |\n", mdCell(pr.A), mdCell(pr.B), pr.Window, pr.SMTSibling.Round(time.Millisecond), percent(pr.SMTSibling, pr.Window), pr.SharedLLC.Round(time.Millisecond), percent(pr.SharedLLC, pr.Window), pr.Handovers)
		}
		p("\n")
	}
	if len(r.Host) > 0 {
		p("## Host\n\n")
		factTable(b, r.Host)
	}
	if len(r.Evidence) > 0 || len(r.Trimmed) > 0 {
		p("## Evidence snapshot\n\n")
		factTable(b, r.Evidence)
		if len(r.Trimmed) > 0 {
			p("Trimmed to fit the size limit:\n\n")
			for _, t := range r.Trimmed {
				p("- %s\n", mdText(t))
			}
			p("\n")
		}
	}
	return b.Flush()
}

func factTable(b *bufio.Writer, facts []Fact) {
	if len(facts) == 0 {
		return
	}
	fmt.Fprint(b, "| | |\n|---|---|\n")
	for _, f := range facts {
		fmt.Fprintf(b, "| %s | %s |\n", mdCell(f.Name), mdCell(f.Value))
	}
	fmt.Fprint(b, "\n")
}

// markdownPlots draws the event trains and the autocorrelation as
// sparklines: one character per time slot, the highest value in it.
func (r *Report) markdownPlots(b *bufio.Writer) {
	trains := trainPanels(r)
	if len(trains) > 0 {
		lo, hi := zoomWindow(r, trains)
		const width = 64
		fmt.Fprintf(b, "## Event trains around the onset\n\nEvents per millisecond from %s to %s; each column is %s, scaled to its row's peak; ^ marks the onset.\n\n```\n",
			offsetText(lo), offsetText(hi), time.Duration((hi-lo)/width))
		labelW := 0
		for _, t := range trains {
			labelW = max(labelW, len(plain(t.party.Key+" "+string(t.series.Event))))
		}
		for _, t := range trains {
			_, ys := points(t.series, lo, hi, 100000)
			line, peak := sparkline(ys, width)
			fmt.Fprintf(b, "%-*s %s peak %s/ms\n", labelW, plain(t.party.Key+" "+string(t.series.Event)), line, compact(peak))
		}
		if lo <= 0 && hi > 0 {
			col := int(float64(-lo) / float64(hi-lo) * width)
			fmt.Fprintf(b, "%s %s^ onset\n", strings.Repeat(" ", labelW), strings.Repeat(" ", min(col, width-1)))
		}
		fmt.Fprint(b, "```\n\n")
	}
	if a := r.snapshot.Detector.Autocorrelation; a != nil && len(a.Values) > 1 {
		const width = 64
		line, _ := sparkline(shift(a.Values), width)
		fmt.Fprintf(b, "## Autocorrelation\n\nLag %s to %s; ^ marks the peak %.2f at %s (threshold %.2f).\n\n```\n%s\n",
			time.Duration(a.FirstLagNs), time.Duration(a.FirstLagNs+int64(len(a.Values)-1)*a.LagStepNs), a.PeakValue, time.Duration(a.PeakLagNs), a.Threshold, line)
		if at := a.PeakLagNs - a.FirstLagNs; at >= 0 && a.PeakLagNs > 0 {
			col := int(float64(at) / float64(int64(len(a.Values))*a.LagStepNs) * width)
			fmt.Fprintf(b, "%s^\n", strings.Repeat(" ", min(col, width-1)))
		}
		fmt.Fprint(b, "```\n\n")
	}
}

// shift moves a curve in [-1, 1] to [0, 2] for a sparkline.
func shift(v []float64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = x + 1
	}
	return out
}

var blocks = []rune("▁▂▃▄▅▆▇█")

// sparkline draws ys in width columns, each the highest value of its slot,
// scaled to the highest value overall.
func sparkline(ys []float64, width int) (string, float64) {
	if len(ys) == 0 {
		return strings.Repeat(" ", width), 0
	}
	cols := make([]float64, width)
	for i := range cols {
		cols[i] = math.Inf(-1)
	}
	for i, y := range ys {
		c := i * width / len(ys)
		cols[c] = math.Max(cols[c], y)
	}
	peak := 0.0
	for _, c := range cols {
		peak = math.Max(peak, c)
	}
	var s strings.Builder
	for _, c := range cols {
		switch {
		case math.IsInf(c, -1):
			s.WriteRune(' ')
		case peak <= 0 || math.IsInf(peak, 0) || c <= 0:
			s.WriteRune(blocks[0])
		default:
			s.WriteRune(blocks[min(len(blocks)-1, int(c/peak*float64(len(blocks)-1)+0.5))])
		}
	}
	return s.String(), peak
}

// plain removes what a terminal would interpret: control characters
// (escape sequences start with one) and bidirectional overrides (which
// reorder what the reader sees). Guest strings come from guest memory.
func plain(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '\t' || r == '\n':
			return ' '
		case unsafeRune(r):
			return '?'
		}
		return r
	}, s)
}

func unsafeRune(r rune) bool {
	return unicode.IsControl(r) || r >= 0x202a && r <= 0x202e || r >= 0x2066 && r <= 0x2069 ||
		r == 0x200e || r == 0x200f || r == unicode.ReplacementChar
}

// mdText makes s safe as Markdown text: plain, with Markdown's inline
// markup characters escaped.
func mdText(s string) string {
	// Underscores stay: CommonMark ignores them inside words, and symbol
	// names are full of them.
	r := strings.NewReplacer(`\`, `\\`, "`", "\\`", "*", `\*`, "<", `\<`, ">", `\>`, "[", `\[`, "]", `\]`, "|", `\|`)
	return r.Replace(plain(s))
}

// mdCell is mdText for a table cell.
func mdCell(s string) string {
	if s == "" {
		return ""
	}
	return mdText(s)
}

// libraries lists up to n library file names (the HTML report has the
// paths).
func libraries(libs []string, n int) string {
	names := make([]string, 0, min(n, len(libs)))
	for _, l := range libs[:min(n, len(libs))] {
		names = append(names, path.Base(l))
	}
	out := strings.Join(names, ", ")
	if len(libs) > n {
		out += fmt.Sprintf(" and %d more", len(libs)-n)
	}
	return out
}

func cpuList(cpus []int32) string {
	parts := make([]string, 0, len(cpus))
	for i, c := range cpus {
		if i == 16 {
			parts = append(parts, fmt.Sprintf("and %d more", len(cpus)-16))
			break
		}
		parts = append(parts, fmt.Sprint(c))
	}
	return strings.Join(parts, ", ")
}

func percent(part, whole time.Duration) string {
	if whole <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f%%", 100*float64(part)/float64(whole))
}
