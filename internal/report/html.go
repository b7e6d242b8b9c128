package report

import (
	"bytes"
	"html/template"
	"io"
	"strings"
	"time"
)

// HTML writes the report as one self-contained HTML page: inline CSS and
// inline SVG plots, no script and nothing loaded from elsewhere, so it can
// be mailed, archived and opened offline. html/template escapes every
// value; the SVG comes from this package, which escapes its own text.
func (r *Report) HTML(w io.Writer) error {
	var b bytes.Buffer
	if err := page.Execute(&b, r); err != nil {
		return err
	}
	// Control characters and bidirectional overrides from guest strings
	// survive HTML escaping; the page itself has none but newlines.
	_, err := io.WriteString(w, strings.Map(func(c rune) rune {
		if c != '\n' && unsafeRune(c) {
			return '?'
		}
		return c
	}, b.String()))
	return err
}

// Severity is the finding's severity, for the badge.
func (r *Report) Severity() string { return string(r.finding.Spec.Severity) }

var page = template.Must(template.New("report").Funcs(template.FuncMap{
	"stamp":   stamp,
	"svg":     func(s string) template.HTML { return template.HTML(s) }, //nolint:gosec // built by svg.go, which escapes all text
	"libs":    func(l []string) string { return strings.Join(l, "\n") },
	"cpus":    cpuList,
	"percent": percent,
	"round":   func(d time.Duration) time.Duration { return d.Round(time.Millisecond) },
	"plain":   plain,
	// Colours come from this package's palette, never from input.
	"safeCSS": func(c string) template.CSS { return template.CSS(c) }, //nolint:gosec
	"deref":   func(f *float64) float64 { return *f },
	"isVictim": func(role string) bool {
		return role == "Victim"
	},
}).Parse(pageTemplate))

const pageTemplate = `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="sidewatch report">
<title>{{plain .Title}}</title>
<style>
  body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; color: #222; margin: 0; background: #f4f5f7; }
  main { max-width: 1160px; margin: 0 auto; padding: 24px 30px 60px; background: #fff; }
  h1 { font-size: 24px; margin: 0 0 4px; }
  h2 { font-size: 19px; margin: 34px 0 10px; border-bottom: 2px solid #e3e5e8; padding-bottom: 4px; }
  h3 { font-size: 16px; margin: 22px 0 8px; }
  .meta { color: #666; font-size: 13px; }
  .summary { font-size: 15px; line-height: 1.5; background: #fff8e1; border-left: 4px solid #f9a825; padding: 10px 14px; }
  .note { background: #fdecea; border-left: 4px solid #d62728; padding: 6px 12px; margin: 6px 0; font-size: 14px; }
  table { border-collapse: collapse; width: 100%; font-size: 13px; margin: 6px 0 12px; }
  th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e6e6e6; vertical-align: top; }
  th { background: #f0f2f5; }
  table.timeline td:first-child { white-space: nowrap; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  table.facts td:first-child { width: 260px; color: #555; }
  tr.warning td { color: #b71c1c; font-weight: bold; }
  .badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; color: #fff; }
  .sev-Critical { background: #b71c1c; } .sev-High { background: #e65100; } .sev-Medium { background: #f9a825; } .sev-Low { background: #607d8b; }
  code, .mono { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 12px; }
  figure { margin: 16px 0 26px; }
  figcaption { color: #555; font-size: 13px; margin-top: 4px; max-width: 1100px; }
  svg.plot { display: block; max-width: 100%; height: auto; border: 1px solid #e3e5e8; }
  .party { border-left: 5px solid; padding-left: 12px; margin: 14px 0; }
  .sampled { font-weight: bold; }
  details summary { cursor: pointer; color: #1f77b4; font-size: 13px; }
  .libs { white-space: pre-line; color: #555; }
</style>
</head>
<body>
<main>
<h1>{{.Title}}</h1>
<p class="meta">Generated {{stamp .GeneratedAt}}{{if .Source}} from {{.Source}}{{end}} by sidewatch report.</p>
<p class="summary">{{.Summary}}</p>
{{range .Notes}}<p class="note">{{.}}</p>
{{end}}
<h2 id="finding">Finding</h2>
<table class="facts">{{range .Facts}}<tr><td>{{.Name}}</td><td>{{if eq .Name "Severity"}}<span class="badge sev-{{$.Severity}}">{{$.Severity}}</span> {{end}}{{.Value}}</td></tr>{{end}}</table>

<h2 id="timeline">Timeline</h2>
<table class="timeline"><tr><th>Time (UTC)</th><th>From first evidence</th><th>Source</th><th>What</th></tr>
{{range .Timeline}}<tr{{if .Warning}} class="warning"{{end}}><td class="mono">{{stamp .Time}}</td><td class="num mono">{{$.Offset .Time}}</td><td>{{.Source}}</td><td>{{.What}}</td></tr>
{{end}}</table>

{{if .Plots}}<h2 id="plots">Evidence</h2>
{{range .Plots}}<figure id="plot-{{.Kind}}">{{svg .SVG}}<figcaption>{{.Caption}}</figcaption></figure>
{{end}}{{end}}

<h2 id="who">Who and what</h2>
{{range .Parties}}<div class="party" style="border-color: {{.Colour | safeCSS}}">
<h3>{{if isVictim .Role}}Victim{{else}}Suspect{{end}} {{.Key}}{{if not (isVictim .Role)}} <span class="meta">({{.Role}}{{if .Score}}, score {{printf "%.2f" (deref .Score)}}{{end}})</span>{{end}}</h3>
<p class="meta">{{if .UID}}UID <span class="mono">{{.UID}}</span>{{end}}{{if .VCPUs}} · {{.VCPUs}} vCPUs{{if .HostCPUs}} on host CPUs {{cpus .HostCPUs}}{{end}}{{end}}</p>
{{with .Sharing}}<p class="meta">Co-scheduling: {{.}}</p>{{end}}
{{if .Programs}}<table><tr><th>Samples</th><th>PID</th><th>Process</th><th>File</th><th>Offset</th><th>Symbol</th></tr>
{{range .Programs}}<tr><td class="num">{{.Samples}}</td><td class="num">{{.PID}}</td><td>{{.Comm}}</td><td class="mono">{{.Path}}</td><td class="mono">{{.Offset}}</td><td class="mono">{{.Symbol}}</td></tr>
{{end}}{{if .Unattributed}}<tr><td class="num">{{.Unattributed}}</td><td></td><td></td><td colspan="3"><em>not attributed (guest kernel or unmapped)</em></td></tr>{{end}}</table>{{end}}
{{if .ProcessesError}}<p class="note">Guest processes: {{.ProcessesError}}</p>
{{else if .Processes}}<details{{if isVictim .Role}} open{{end}}><summary>Guest processes at capture: {{len .Processes}} of {{.ProcessesTotal}} (bold: sampled above)</summary>
<table><tr><th>PID</th><th>PPID</th><th>Process</th><th>Executable</th><th>Libraries</th></tr>
{{$p := .}}{{range .Processes}}<tr{{if index $p.Sampled .PID}} class="sampled"{{end}}><td class="num">{{.PID}}</td><td class="num">{{.PPID}}</td><td>{{.Comm}}</td><td class="mono">{{.Exe}}</td><td class="mono libs">{{libs .Libraries}}</td></tr>
{{end}}</table></details>{{end}}
</div>
{{end}}

<h2 id="actions">Actions taken</h2>
{{if .Actions}}<table class="facts">{{range .Actions}}<tr><td>{{.Name}}</td><td>{{.Value}}</td></tr>{{end}}</table>
{{if .Conditions}}<table><tr><th>Condition</th><th>Status</th><th>Reason</th><th>Since</th><th>Message</th></tr>
{{range .Conditions}}<tr><td>{{.Type}}</td><td>{{.Status}}</td><td>{{.Reason}}</td><td class="mono">{{stamp .LastTransitionTime.Time}}</td><td>{{.Message}}</td></tr>
{{end}}</table>{{end}}
{{else}}<p>None recorded: the operator has not acted on this finding.</p>{{end}}

{{if .Figures}}<h2 id="figures">Detector figures</h2>
<table class="facts">{{range .Figures}}<tr><td>{{.Name}}</td><td>{{.Value}}</td></tr>{{end}}</table>{{end}}

{{if .Pairs}}<h2 id="co-scheduling">Co-scheduling</h2>
<table><tr><th>Pair</th><th>Window</th><th>On SMT siblings</th><th>Sharing an LLC</th><th>Handovers on one CPU</th></tr>
{{range .Pairs}}<tr><td>{{.A}} ↔ {{.B}}</td><td class="num">{{.Window}}</td><td class="num">{{round .SMTSibling}} ({{percent .SMTSibling .Window}})</td><td class="num">{{round .SharedLLC}} ({{percent .SharedLLC .Window}})</td><td class="num">{{.Handovers}}</td></tr>
{{end}}</table>{{end}}

{{if .Host}}<h2 id="host">Host</h2>
<table class="facts">{{range .Host}}<tr><td>{{.Name}}</td><td>{{.Value}}</td></tr>{{end}}</table>{{end}}

{{if or .Evidence .Trimmed}}<h2 id="snapshot">Evidence snapshot</h2>
<table class="facts">{{range .Evidence}}<tr><td>{{.Name}}</td><td>{{.Value}}</td></tr>{{end}}</table>
{{if .Trimmed}}<p>Trimmed to fit the size limit:</p><ul>{{range .Trimmed}}<li>{{.}}</li>{{end}}</ul>{{end}}{{end}}
</main>
</body>
</html>
`
