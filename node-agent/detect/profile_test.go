package detect_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/node-agent/detect"
	"github.com/sidewatch/sidewatch/node-agent/tracegen"
)

// A profile learned on one VMI's crypto service recognises another VMI's
// crypto phases from counters alone, in a trace without guest regions.
func TestProfileSignatureFindsPrimeProbe(t *testing.T) {
	var train bytes.Buffer
	if _, err := tracegen.Generate(&train, tracegen.Scenario{Name: "train", Seed: 11, Duration: 3 * time.Minute, SamplePeriod: 10000,
		VMIs: []tracegen.VMI{{Namespace: "lab", Name: "tls", VCPUs: 2, Kind: tracegen.CryptoService}}}); err != nil {
		t.Fatal(err)
	}
	iv, err := detect.ReadIntervals(bytes.NewReader(train.Bytes()), detect.VMIRef{Namespace: "lab", Name: "tls"}, 0, []detect.Signature{detect.BuiltinCryptoSignature()}, 1e6)
	if err != nil {
		t.Fatal(err)
	}
	labels := make([]bool, len(iv.Counters))
	for i := range labels {
		labels[i] = iv.Sensitive[i] > 0 && float64(iv.Sensitive[i]) >= 0.2*float64(iv.Samples[i])
	}
	prof, err := detect.LearnProfile("tls-handshakes", iv.Counters, labels)
	if err != nil {
		t.Fatal(err)
	}
	if prof.Training.TruePositiveRate < 0.7 || prof.Training.FalsePositiveRate > 0.2 {
		t.Errorf("profile separates its training data poorly: %+v", prof.Training)
	}

	var atk bytes.Buffer
	if _, err := tracegen.Generate(&atk, tracegen.Scenario{Name: "pp", Seed: 12, Duration: 3 * time.Minute, SamplePeriod: 10000, LockSamplePeriod: 10000,
		VMIs:   []tracegen.VMI{{Namespace: "b", Name: "db", VCPUs: 2, Kind: tracegen.Database}, {Namespace: "c", Name: "cc", VCPUs: 2, Kind: tracegen.Compiler}},
		Attack: &tracegen.Attack{Kind: tracegen.PrimeProbe, Factor: 2.5, Onset: 60 * time.Second}}); err != nil {
		t.Fatal(err)
	}
	// Without guest regions only the profile can recognise the phases.
	var stripped strings.Builder
	for _, l := range strings.SplitAfter(atk.String(), "\n") {
		if !strings.HasPrefix(l, "# guest_region:") {
			stripped.WriteString(l)
		}
	}
	cfg := detect.DefaultConfig()
	prot := &detect.Protection{Policy: "p", Signatures: []detect.Signature{{Name: "tls-handshakes", Profile: prof}}}
	cfg.ProtectionFor = func(r detect.VMIRef) *detect.Protection {
		if r.Name == "tls-frontend" {
			return prot
		}
		return nil
	}
	var found *detect.Detection
	if _, err := detect.Replay(context.Background(), strings.NewReader(stripped.String()), cfg, detect.ReplayOptions{Emit: func(d *detect.Detection) error {
		if found == nil {
			x := *d
			found = &x
		}
		return nil
	}}); err != nil {
		t.Fatal(err)
	}
	if found == nil {
		t.Fatal("no detection with the profile signature")
	}
	if found.Type != v1alpha1.CacheSideChannel || found.Victim.Name != "tls-frontend" || len(found.Suspects) == 0 || found.Suspects[0].Name != "probe" ||
		found.Evidence.Signature != "tls-handshakes" || found.TimeNS < int64(60*time.Second) {
		t.Errorf("got %+v", *found)
	}
}
