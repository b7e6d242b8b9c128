package detect

import (
	"context"
	"os"
	"testing"
	"time"
)

// TestDebugTrace replays $SIDEWATCH_DEBUG_TRACE with decision tracing.
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
	cfg.DefaultProtection = &Protection{Signatures: []Signature{BuiltinCryptoSignature()}}
	_, err = Replay(context.Background(), f, cfg, ReplayOptions{Emit: func(d *Detection) error {
		t.Logf("DETECTION %s %s victim=%s suspects=%v score=%.2f first=%.1fs ev=%+v", time.Duration(d.TimeNS), d.Type, d.Victim, d.Suspects, d.Score, float64(d.FirstCrossingNS)/1e9, d.Evidence)
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
}
