package report_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/sidewatch/sidewatch/internal/controlplane"
	"github.com/sidewatch/sidewatch/internal/evidence/evidencetest"
)

var updateScreenshot = flag.Bool("update-screenshot", false, "write docs/report-screenshot.png from the covert-channel report")

// chromium finds Debian's chromium; a machine without it fails the test:
// the report's rendering is only proven in a real browser.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium not found: install Debian's chromium package (apt-get install chromium); .ci/run installs it")
	return ""
}

// runChromium runs headless chromium on a file with the given extra flags
// and returns its standard output.
func runChromium(t *testing.T, bin, file string, width, height int, extra ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	args := append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--hide-scrollbars", "--force-device-scale-factor=1",
		"--user-data-dir=" + t.TempDir(),
		fmt.Sprintf("--window-size=%d,%d", width, height),
	}, extra...)
	args = append(args, "file://"+file)
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", extra, err, tail(stderr.String()))
	}
	return stdout.Bytes()
}

func tail(s string) string {
	if len(s) > 3000 {
		return "..." + s[len(s)-3000:]
	}
	return s
}

// box is where the browser laid out one plot.
type box struct {
	kind       string
	x, y, w, h int
}

var boxLine = regexp.MustCompile(`plotbox (\S+) (\d+) (\d+) (\d+) (\d+)`)
var heightLine = regexp.MustCompile(`pageheight (\d+)`)

// layout asks chromium where the plots are: a copy of the report with a
// script appended at the end of the body (the report itself has none)
// writes every plot's box into the DOM, which --dump-dom prints. The
// script only appends after everything else, so the layout above it is
// the report's own.
func layout(t *testing.T, bin, htmlPath string, width int) ([]box, int) {
	t.Helper()
	page, err := os.ReadFile(htmlPath)
	if err != nil {
		t.Fatal(err)
	}
	probe := `<script>
for (const s of document.querySelectorAll('svg.plot')) {
  const r = s.getBoundingClientRect();
  const p = document.createElement('pre');
  p.textContent = 'plotbox ' + s.dataset.plot + ' ' + Math.round(r.left + scrollX) + ' ' + Math.round(r.top + scrollY) + ' ' + Math.round(r.width) + ' ' + Math.round(r.height);
  document.body.appendChild(p);
}
const h = document.createElement('pre');
h.textContent = 'pageheight ' + document.documentElement.scrollHeight;
document.body.appendChild(h);
</script></body>`
	probed := filepath.Join(t.TempDir(), "probe.html")
	if err := os.WriteFile(probed, bytes.Replace(page, []byte("</body>"), []byte(probe), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	dom := string(runChromium(t, bin, probed, width, 2400, "--dump-dom"))
	var boxes []box
	for _, m := range boxLine.FindAllStringSubmatch(dom, -1) {
		b := box{kind: m[1]}
		b.x, _ = strconv.Atoi(m[2])
		b.y, _ = strconv.Atoi(m[3])
		b.w, _ = strconv.Atoi(m[4])
		b.h, _ = strconv.Atoi(m[5])
		boxes = append(boxes, b)
	}
	h := heightLine.FindStringSubmatch(dom)
	if h == nil {
		t.Fatalf("chromium did not lay the page out:\n%s", tail(dom))
	}
	height, _ := strconv.Atoi(h[1])
	return boxes, height
}

// pixels counts, inside r, the pixels that are not near white and those
// near each of the given colours.
func pixels(img image.Image, r image.Rectangle, near ...color.RGBA) (inked, total int, matches []int) {
	matches = make([]int, len(near))
	r = r.Intersect(img.Bounds())
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			cr, cg, cb, _ := img.At(x, y).RGBA()
			R, G, B := int(cr>>8), int(cg>>8), int(cb>>8)
			total++
			if R < 235 || G < 235 || B < 235 {
				inked++
			}
			for i, c := range near {
				if abs(R-int(c.R))+abs(G-int(c.G))+abs(B-int(c.B)) < 60 {
					matches[i]++
				}
			}
		}
	}
	return inked, total, matches
}

func abs(v int) int { return max(v, -v) }

var (
	blue = color.RGBA{0x1f, 0x77, 0xb4, 0xff} // the victim
	red  = color.RGBA{0xd6, 0x27, 0x28, 0xff} // the first suspect, the peak, the onset
)

// TestHTMLInChromium opens the HTML report in headless Chromium and checks
// the screenshot: the page is not blank, and every plot's region holds
// drawn data in the expected colours.
func TestHTMLInChromium(t *testing.T) {
	bin := chromium(t)
	const width = 1280
	for _, sc := range []struct {
		name   string
		make   func(uint64) *evidencetest.Scenario
		colour map[string][]color.RGBA // per plot: colours that must be drawn
	}{
		{"covert-channel", evidencetest.CovertChannel, map[string][]color.RGBA{
			"event-trains": {blue, red}, "event-trains-overview": {blue, red}, "autocorrelation": {blue, red}, "cross-correlation": {blue, red}, "co-scheduling": {red},
		}},
		{"prime-probe", evidencetest.PrimeProbe, map[string][]color.RGBA{
			"event-trains": {blue, red}, "event-trains-overview": {blue, red}, "phase-correlation": {red}, "co-scheduling": {red},
		}},
		{"bus-lock", evidencetest.BusLock, map[string][]color.RGBA{
			"event-trains": {blue, red}, "event-trains-overview": {blue, red}, "burst-periods": {blue}, "co-scheduling": {red},
		}},
	} {
		t.Run(sc.name, func(t *testing.T) {
			_, html := render(t, build(t, sc.make(1)))
			dir := t.TempDir()
			htmlPath := filepath.Join(dir, "report.html")
			if err := os.WriteFile(htmlPath, []byte(html), 0o644); err != nil {
				t.Fatal(err)
			}
			boxes, height := layout(t, bin, htmlPath, width)
			if len(boxes) != len(sc.colour) {
				t.Errorf("chromium laid out %d plots (%v), want %d", len(boxes), boxes, len(sc.colour))
			}
			shot := filepath.Join(dir, "report.png")
			runChromium(t, bin, htmlPath, width, min(height, 16000), "--screenshot="+shot)
			f, err := os.Open(shot)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			img, err := png.Decode(f)
			if err != nil {
				t.Fatalf("the screenshot is not a PNG: %v", err)
			}
			inked, total, _ := pixels(img, img.Bounds())
			if share := float64(inked) / float64(total); share < 0.03 {
				t.Errorf("the page is blank: %.1f%% of pixels inked", 100*share)
			}
			for _, b := range boxes {
				want, ok := sc.colour[b.kind]
				if !ok {
					t.Errorf("unexpected plot %s", b.kind)
					continue
				}
				if b.w < 600 || b.h < 100 {
					t.Errorf("plot %s laid out at %dx%d, too small to read", b.kind, b.w, b.h)
				}
				inked, total, matches := pixels(img, image.Rect(b.x, b.y, b.x+b.w, b.y+b.h), want...)
				share := float64(inked) / float64(max(total, 1))
				if share < 0.04 {
					t.Errorf("plot %s at %v: only %.1f%% of its pixels inked", b.kind, b, 100*share)
				}
				for i, n := range matches {
					if n < 150 {
						t.Errorf("plot %s: %d pixels of colour %v, want a drawn line or area", b.kind, n, want[i])
					}
				}
				t.Logf("plot %s at (%d,%d) %dx%d: %.1f%% inked, colour pixels %v", b.kind, b.x, b.y, b.w, b.h, 100*share, matches)
			}
			if sc.name == "covert-channel" && *updateScreenshot {
				// Seed 4 sends a mixed run of bits around the onset.
				_, html := render(t, build(t, evidencetest.CovertChannel(4)))
				if err := os.WriteFile(htmlPath, []byte(html), 0o644); err != nil {
					t.Fatal(err)
				}
				// The documentation's screenshot: the top of the page, as a
				// responder first sees it.
				root, err := controlplane.RepoRoot()
				if err != nil {
					t.Fatal(err)
				}
				out := filepath.Join(root, "docs", "report-screenshot.png")
				runChromium(t, bin, htmlPath, width, 2400, "--screenshot="+out)
				t.Logf("wrote %s", out)
			}
		})
	}
}
