package demo

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/node-agent/detect"
)

// The demo's recorded attack is found by the example policy's settings as
// a 50 ms cache channel with the victim protected and the attacker first
// among the suspects, at High or above (the policy migrates from High),
// wherever the analysis windows fall: the agent aligns them to the wall
// clock, not to the trace's start, so the trace is replayed shifted.
func TestAttackTraceIsFoundByTheExamplePolicy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "attack.csv")
	if err := WriteAttackTrace(path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join("..", "..", "config", "samples", "sidewatch_v1alpha1_sidechannelpolicy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var pol v1alpha1.SideChannelPolicy
	if err := yaml.UnmarshalStrict(raw, &pol); err != nil {
		t.Fatal(err)
	}
	cfg := detect.ConfigFromPolicy(pol.Spec)
	prot, err := detect.ProtectionFromPolicy(pol.Name, pol.Spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	victim := detect.VMIRef{Namespace: Victim.Namespace, Name: Victim.Name}
	cfg.ProtectionFor = func(r detect.VMIRef) *detect.Protection {
		if r == victim {
			return prot
		}
		return nil
	}

	for _, shift := range []time.Duration{0, 1300 * time.Millisecond, 2500 * time.Millisecond, 3700 * time.Millisecond, 5100 * time.Millisecond} {
		t.Run(shift.String(), func(t *testing.T) {
			var first *detect.Detection
			_, err := detect.Replay(context.Background(), shifted(t, data, shift), cfg, detect.ReplayOptions{Emit: func(d *detect.Detection) error {
				if first == nil && d.Type == v1alpha1.CacheCovertChannel && d.Victim == victim && d.Severity.AtLeast(v1alpha1.SeverityHigh) {
					c := *d
					c.Suspects = append([]detect.Suspect(nil), d.Suspects...)
					first = &c
				}
				return nil
			}})
			if err != nil {
				t.Fatal(err)
			}
			if first == nil {
				t.Fatal("no High cache covert channel finding about the victim")
			}
			at := time.Duration(first.TimeNS) - shift
			period := time.Duration(first.Evidence.PeriodNS)
			if len(first.Suspects) == 0 || first.Suspects[0].Namespace != Attacker.Namespace || first.Suspects[0].Name != Attacker.Name ||
				period < 47*time.Millisecond || period > 53*time.Millisecond || at > attackOnset+30*time.Second {
				t.Errorf("first finding at %v (onset %v): period %v, suspects %+v", at, attackOnset, period, first.Suspects)
			}
		})
	}
}

// shifted is the trace with every row's time moved by d.
func shifted(t *testing.T, data []byte, d time.Duration) *bytes.Reader {
	t.Helper()
	var out bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	header := false
	for sc.Scan() {
		line := sc.Bytes()
		if !header || len(line) == 0 || line[0] == '#' {
			header = header || bytes.HasPrefix(line, []byte("time_ns,"))
			out.Write(line)
			out.WriteByte('\n')
			continue
		}
		ts, rest, _ := bytes.Cut(line, []byte(","))
		n, err := strconv.ParseInt(string(ts), 10, 64)
		if err != nil {
			t.Fatalf("row %q: %v", line, err)
		}
		out.WriteString(strconv.FormatInt(n+int64(d), 10))
		out.WriteByte(',')
		out.Write(rest)
		out.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return bytes.NewReader(out.Bytes())
}
