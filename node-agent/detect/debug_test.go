package detect

import (
	"context"
	"encoding/json"
	"os"
	"testing"
	"time"
)

// TestDebugTrace replays $SIDEWATCH_DEBUG_TRACE with decision tracing. A
// tracegen label ("# truth: {...}") protects the VMIs it lists, as sidewatch
// evaluate does; without one every VMI is protected.
func TestDebugTrace(t *testing.T) {
	path := os.Getenv("SIDEWATCH_DEBUG_TRACE")
	if path == "" {
		t.Skip("set SIDEWATCH_DEBUG_TRACE to a trace file")
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	debugf = t.Logf
	defer func() { debugf = nil }()
	cfg := DefaultConfig()
	prot := &Protection{Signatures: []Signature{BuiltinCryptoSignature()}}
	var protected map[string]bool
	cfg.ProtectionFor = func(r VMIRef) *Protection {
		if protected == nil || protected[r.String()] {
			return prot
		}
		return nil
	}
	_, err = Replay(context.Background(), f, cfg, ReplayOptions{
		Meta: func(key, value []byte) error {
			if string(key) != "truth" {
				return nil
			}
			var truth struct{ Protected []string }
			if err := json.Unmarshal(value, &truth); err != nil {
				return err
			}
			if len(truth.Protected) > 0 {
				protected = map[string]bool{}
				for _, p := range truth.Protected {
					protected[p] = true
				}
			}
			return nil
		},
		Emit: func(d *Detection) error {
			t.Logf("DETECTION %s %s victim=%s suspects=%v score=%.2f first=%.1fs ev=%+v", time.Duration(d.TimeNS), d.Type, d.Victim, d.Suspects, d.Score, float64(d.FirstCrossingNS)/1e9, d.Evidence)
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
}
