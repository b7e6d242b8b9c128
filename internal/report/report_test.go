package report_test

import (
	"bytes"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/internal/evidence"
	"github.com/sidewatch/sidewatch/internal/evidence/evidencetest"
	"github.com/sidewatch/sidewatch/internal/report"
)

var generated = time.Date(2026, 11, 23, 11, 0, 0, 0, time.UTC)

// stored runs a scenario's snapshot through Encode and Decode, so the
// report sees what Load would return.
func stored(t testing.TB, sc *evidencetest.Scenario) *evidence.Snapshot {
	t.Helper()
	data, _, err := evidence.Encode(sc.Snapshot)
	if err != nil {
		t.Fatal(err)
	}
	s, err := evidence.Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func build(t testing.TB, sc *evidencetest.Scenario) *report.Report {
	return report.Build(report.Input{Finding: sc.Finding, Snapshot: stored(t, sc), Events: sc.Events, Source: "test", GeneratedAt: generated})
}

func render(t testing.TB, r *report.Report) (md, html string) {
	t.Helper()
	var m, h bytes.Buffer
	if err := r.Markdown(&m); err != nil {
		t.Fatal(err)
	}
	if err := r.HTML(&h); err != nil {
		t.Fatal(err)
	}
	return m.String(), h.String()
}

var scenarios = []struct {
	name  string
	make  func(uint64) *evidencetest.Scenario
	plots []string // data-plot kinds the HTML must have
	md    []string // text the Markdown must have
}{
	{"covert channel", evidencetest.CovertChannel,
		[]string{"event-trains", "event-trains-overview", "autocorrelation", "cross-correlation", "co-scheduling"},
		[]string{"# Incident report: CacheCovertChannel against payments/payments-db", "cache-sync", "send_bit", "receive_bit", "peak 0.", "at 20ms", "^ onset",
			"Co-scheduling: shared the victim's last-level cache 97.0% and a core (SMT) 63.0% of 20s, 12 handovers on one CPU; score weight 1.00"}},
	{"prime+probe", evidencetest.PrimeProbe,
		[]string{"event-trains", "event-trains-overview", "phase-correlation", "co-scheduling"},
		[]string{"CacheSideChannel", "BN_mod_exp_mont_consttime", "libcrypto.so.3", "probe_set", "Phase correlation (snapshot)"}},
	{"bus lock", evidencetest.BusLock,
		[]string{"event-trains", "event-trains-overview", "burst-periods", "co-scheduling"},
		[]string{"BusLockCovertChannel", "split_lock_burst", "split_locks", "Bursts (snapshot)"}},
}

func TestMarkdown(t *testing.T) {
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			md, _ := render(t, build(t, sc.make(1)))
			common := []string{
				"## Timeline", "First evidence:", "Finding created by the agent of node worker-3",
				"Migration payments-db-sidewatch-1 started", "the victim runs on worker-5 (36s)", "MigrationSucceeded",
				"## Who and what", "### Victim payments/payments-db", "### Suspect batch/render-farm-7",
				"Guest processes at capture", "| 1 | 0 | systemd |",
				"## Actions taken", "| Moved | worker-3 → worker-5 |",
				"## Detector figures", "## Co-scheduling", "## Host", "Intel(R) Xeon(R) Gold 6338", "0xd0003e7", "6.1.0-28-amd64",
				"## Event trains around the onset",
			}
			for _, want := range append(common, sc.md...) {
				if !strings.Contains(md, want) {
					t.Errorf("Markdown lacks %q", want)
				}
			}
			if !strings.ContainsAny(md, "▁▂▃▄▅▆▇█") {
				t.Error("Markdown has no sparkline")
			}
			// The timeline is in time order.
			var last string
			for _, line := range strings.Split(md, "\n") {
				if m := regexp.MustCompile(`^\| (2026-[0-9:. -]+Z) \|`).FindStringSubmatch(line); m != nil {
					if m[1] < last {
						t.Errorf("timeline out of order: %s after %s", m[1], last)
					}
					last = m[1]
				}
			}
		})
	}
}

var polyline = regexp.MustCompile(`<polyline [^>]*data-points="(\d+)"[^>]*>`)

func TestHTML(t *testing.T) {
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			_, html := render(t, build(t, sc.make(1)))
			for _, kind := range sc.plots {
				i := strings.Index(html, `data-plot="`+kind+`"`)
				if i < 0 {
					t.Errorf("no <svg> plot %s", kind)
					continue
				}
				body := html[i : i+strings.Index(html[i:], "</svg>")]
				points := 0
				for _, m := range polyline.FindAllStringSubmatch(body, -1) {
					n, _ := strconv.Atoi(m[1])
					points += n
				}
				marks := strings.Count(body, "<circle") + strings.Count(body, `class="coefficient"`) + strings.Count(body, `class="smt-sibling"`)
				if points < 20 && marks < 2 {
					t.Errorf("plot %s holds no data: %d polyline points, %d marks", kind, points, marks)
				}
			}
			if got := strings.Count(html, "<svg"); got != len(sc.plots) {
				t.Errorf("%d <svg> elements, want %d", got, len(sc.plots))
			}
			// Self-contained: no script, nothing fetched.
			for _, bad := range []string{"<script", "src=", "href=", "url(", "@import", "<link", "<img", "<iframe"} {
				if strings.Contains(strings.ToLower(html), bad) {
					t.Errorf("HTML contains %q", bad)
				}
			}
		})
	}
	_, html := render(t, build(t, evidencetest.CovertChannel(1)))
	if !regexp.MustCompile(`<circle [^>]*class="peak" data-lag-ns="20000000"`).MatchString(html) {
		t.Error("the autocorrelation peak at 20ms is not marked")
	}
	if !strings.Contains(html, `class="onset"`) {
		t.Error("the onset is not marked")
	}
}

// TestUntrustedStrings renders guest strings crafted to break out of the
// HTML and to drive the terminal.
func TestUntrustedStrings(t *testing.T) {
	sc := evidencetest.PrimeProbe(1)
	evil := "<script>alert(1)</script>\x1b]0;pwned\x07\x1b[2J|*[x](javascript:y)\u202e"
	s := stored(t, sc)
	s.Processes[0].Processes[3].Comm = evil[:60]
	s.Processes[0].Processes[3].Exe = evil
	s.Attribution[0].Programs[0].Symbol = evil
	s.VMIs[0].Role = "<b>"
	sc.Finding.Status.Message = evil
	sc.Finding.Spec.Suspects[0].Guest = []v1alpha1.GuestProgram{{Comm: evil[:60], Path: evil}}
	r := report.Build(report.Input{Finding: sc.Finding, Snapshot: s, Events: sc.Events, GeneratedAt: generated})
	md, html := render(t, r)
	if strings.Contains(html, "<script") || strings.Contains(html, "<b>") {
		t.Error("guest strings reached the HTML as markup")
	}
	if !strings.Contains(html, "&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Error("the guest string is not shown escaped")
	}
	for _, c := range []string{"\x1b", "\x07", "\u202e"} {
		if strings.Contains(md, c) || strings.Contains(html, c) {
			t.Errorf("output contains control character %q", c)
		}
	}
	if strings.Contains(md, "|*[x]") {
		t.Error("Markdown markup of a guest string was not escaped")
	}
}

func TestWithoutSnapshot(t *testing.T) {
	sc := evidencetest.CovertChannel(1)
	sc.Finding.Status = v1alpha1.ThreatFindingStatus{}
	r := report.Build(report.Input{Finding: sc.Finding, SnapshotNote: "ConfigMap payments-db-cachecovertchannel-evidence not found", EventsNote: "forbidden", GeneratedAt: generated})
	md, html := render(t, r)
	for _, want := range []string{
		"No evidence snapshot (ConfigMap payments-db-cachecovertchannel-evidence not found)",
		"Kubernetes Events are missing from the timeline: forbidden",
		"The operator has not acted on this finding yet",
		"None recorded: the operator has not acted on this finding.",
		"send_bit", // from spec.victim.guest
	} {
		if !strings.Contains(md, want) || !strings.Contains(html, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if strings.Contains(html, "<svg") {
		t.Error("plots without a snapshot")
	}
}
