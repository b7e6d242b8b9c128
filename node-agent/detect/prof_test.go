package detect

import (
	"context"
	"os"
	"testing"
)

func TestProfileTrace(t *testing.T) {
	path := os.Getenv("SIDEWATCH_PROFILE_TRACE")
	if path == "" {
		t.Skip()
	}
	f, _ := os.Open(path)
	defer f.Close()
	cfg := DefaultConfig()
	cfg.DefaultProtection = &Protection{Signatures: []Signature{BuiltinCryptoSignature()}}
	s, err := Replay(context.Background(), f, cfg, ReplayOptions{})
	t.Logf("%+v %v", s.Stats, err)
}
