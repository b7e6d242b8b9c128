package detect

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/node-agent/trace"
)

// synth writes a small hand-made trace: every VMI reports llc_misses,
// instructions and cycles per 100ms interval on one vCPU, and llc_misses
// samples spread over each interval. rate(vmi, t) gives the LLC miss rate
// per second at time t (seconds). This is independent of tracegen: the
// detectors must work on any trace of the format.
func synth(t *testing.T, vmis []string, seconds float64, rate func(vmi string, t float64) float64) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := trace.NewWriter(&buf)
	w.Meta(trace.MetaInterval, "100ms")
	w.Meta("sample_period.llc_misses", "1000")
	rng := rand.New(rand.NewPCG(9, 9))
	acc := make([]float64, len(vmis))
	for ms := 1; ms <= int(seconds*1000); ms++ {
		ts := float64(ms) / 1000
		for i, v := range vmis {
			r := rate(v, ts) * (1 + 0.05*rng.NormFloat64())
			if r < 0 {
				r = 0
			}
			before := acc[i]
			acc[i] += r / 1000
			for k := math.Floor(before/1000) + 1; k*1000 <= acc[i]; k++ {
				w.Row(int64(ms)*1e6-int64(rng.IntN(1000000)), "n1", "ns", v, 0, trace.LLCMisses.Sample(), 0x1000)
			}
		}
		if ms%100 == 0 {
			for i, v := range vmis {
				_ = i
				var sum float64
				for k := ms - 99; k <= ms; k++ {
					sum += rate(v, float64(k)/1000) / 1000
				}
				w.Row(int64(ms)*1e6, "n1", "ns", v, 0, trace.LLCMisses, uint64(sum))
				w.Row(int64(ms)*1e6, "n1", "ns", v, 0, trace.Instructions, 1e8)
				w.Row(int64(ms)*1e6, "n1", "ns", v, 0, trace.Cycles, 2e8)
			}
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return sortRows(t, buf.Bytes())
}

// sortRows puts the rows of a trace in time order (samples were jittered
// back into their millisecond).
func sortRows(t *testing.T, data []byte) []byte {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	h := 0
	for lines[h] != trace.Header {
		h++
	}
	rows := lines[h+1:]
	key := func(s string) int64 {
		var v int64
		fmt.Sscan(s[:strings.IndexByte(s, ',')], &v)
		return v
	}
	keys := make([]int64, len(rows))
	for i, r := range rows {
		keys[i] = key(r)
	}
	idx := make([]int, len(rows))
	for i := range idx {
		idx[i] = i
	}
	sortStable(idx, func(a, b int) bool { return keys[idx[a]] < keys[idx[b]] })
	var out strings.Builder
	for _, l := range lines[:h+1] {
		out.WriteString(l + "\n")
	}
	for _, i := range idx {
		out.WriteString(rows[i] + "\n")
	}
	return []byte(out.String())
}

func replayAll(t *testing.T, data []byte, cfg Config) []Detection {
	t.Helper()
	var out []Detection
	_, err := Replay(context.Background(), bytes.NewReader(data), cfg, ReplayOptions{Emit: func(d *Detection) error {
		out = append(out, *d)
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func allProtected() Config {
	cfg := DefaultConfig()
	cfg.DefaultProtection = &Protection{Signatures: []Signature{BuiltinCryptoSignature()}}
	return cfg
}

// randomBits returns a fixed pseudo-random bit sequence.
func randomBits(seed uint64, n int) []bool {
	rng := rand.New(rand.NewPCG(seed, 1))
	b := make([]bool, n)
	for i := range b {
		b[i] = rng.IntN(2) == 1
	}
	return b
}

func TestCovertChannelHandMade(t *testing.T) {
	const onset = 20.0
	b := randomBits(1, 10000)
	for _, tc := range []struct {
		name   string
		period float64
		level  func(k int, phase float64) bool
	}{
		// NRZ random data: no autocorrelation peak, only the bit clock.
		{"nrz", 0.05, func(k int, _ float64) bool { return b[k] }},
		// Return to zero: a pulse in the first 40% of each 1 bit.
		{"rz", 0.04, func(k int, ph float64) bool { return b[k] && ph < 0.4 }},
		// Slow enough for the interval counters alone.
		{"slow-nrz", 0.5, func(k int, _ float64) bool { return b[k] }},
		// Slow NRZ: a 10s window holds only 30-50 bits, too few cycles
		// to tell the clock from chance; the long horizon sees enough.
		{"slow-nrz-200ms", 0.2, func(k int, _ float64) bool { return b[k] }},
		{"slow-nrz-300ms", 0.3, func(k int, _ float64) bool { return b[k] }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			send := func(ts float64) bool {
				if ts < onset {
					return false
				}
				x := (ts - onset) / tc.period
				return tc.level(int(x), x-math.Floor(x))
			}
			data := synth(t, []string{"sender", "receiver", "busy", "idle"}, 60, func(v string, ts float64) float64 {
				switch v {
				case "sender":
					if send(ts) {
						return 5e6
					}
					return 1e4
				case "receiver":
					if send(ts - tc.period/5) {
						return 3e6
					}
					return 2e4
				case "busy":
					return 2e6 * (1 + 0.5*math.Sin(ts))
				}
				return 1e4
			})
			ds := replayAll(t, data, allProtected())
			if len(ds) == 0 {
				t.Fatal("no detection")
			}
			d := ds[0]
			if d.Type != v1alpha1.CacheCovertChannel {
				t.Fatalf("got %s, want CacheCovertChannel", d.Type)
			}
			pair := []string{d.Victim.Name}
			for _, s := range d.Suspects {
				pair = append(pair, s.Name)
			}
			if got := strings.Join(pair, ","); got != "sender,receiver" && got != "receiver,sender" {
				t.Errorf("got VMIs %s, want sender and receiver", got)
			}
			if d.TimeNS < int64(onset*1e9) || d.TimeNS > int64((onset+30)*1e9) {
				t.Errorf("detected at %v, want within 30s of the onset at %vs", time.Duration(d.TimeNS), onset)
			}
			for _, x := range ds {
				if x.Type != v1alpha1.CacheCovertChannel || x.Victim.Name == "busy" || x.Victim.Name == "idle" {
					t.Errorf("spurious detection %+v", x)
				}
			}
		})
	}
}

// Two VMIs that fire together every second (aligned timers) oscillate at
// the same period and in phase, but carry no data: not a channel.
func TestAlignedTimersAreNotAChannel(t *testing.T) {
	data := synth(t, []string{"mon-a", "mon-b", "mon-c"}, 90, func(v string, ts float64) float64 {
		if math.Mod(ts, 1) < 0.05 {
			return 4e6
		}
		return 2e4
	})
	if ds := replayAll(t, data, allProtected()); len(ds) != 0 {
		t.Errorf("got %d detections, want none: %+v", len(ds), ds[0])
	}
}

func TestVictimRules(t *testing.T) {
	e, err := New(DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	mk := func(name string) *vmi { return &vmi{ref: VMIRef{"ns", name}} }
	prot := &Protection{Policy: "p"}
	a, b := mk("a"), mk("b")
	for _, tc := range []struct {
		name       string
		protA      bool
		protB      bool
		roleA      Role
		roleB      Role
		wantOK     bool
		wantVictim string
	}{
		{"only the sender protected", true, false, RoleSender, RoleReceiver, true, "a"},
		{"only the receiver protected", false, true, RoleSender, RoleReceiver, true, "b"},
		{"both protected: the sender", true, true, RoleReceiver, RoleSender, true, "b"},
		{"both protected, roles unknown: first by name", true, true, RoleUnknown, RoleUnknown, true, "a"},
		{"none protected", false, false, RoleSender, RoleReceiver, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a.prot, b.prot = nil, nil
			if tc.protA {
				a.prot = prot
			}
			if tc.protB {
				b.prot = prot
			}
			v, sus, ok := e.chooseVictim([]end{{a, tc.roleA, 0.9}, {b, tc.roleB, 0.9}})
			if ok != tc.wantOK {
				t.Fatalf("got ok=%v, want %v", ok, tc.wantOK)
			}
			if !ok {
				return
			}
			if v.v.ref.Name != tc.wantVictim {
				t.Errorf("got victim %s, want %s", v.v.ref.Name, tc.wantVictim)
			}
			if len(sus) != 1 || sus[0].Name == tc.wantVictim {
				t.Errorf("got suspects %+v, want the other end", sus)
			}
		})
	}
}

// Causality: replaying only a prefix of a trace gives the same detections
// up to the end of the prefix, minus the lateness.
func TestReplayIsCausal(t *testing.T) {
	b := randomBits(2, 10000)
	data := synth(t, []string{"s", "r", "x"}, 60, func(v string, ts float64) float64 {
		on := ts > 15 && b[int(ts/0.05)]
		switch {
		case v == "s" && on:
			return 5e6
		case v == "r" && ts > 15 && b[int((ts-0.01)/0.05)]:
			return 3e6
		}
		return 1e4
	})
	full := replayAll(t, data, allProtected())
	if len(full) == 0 {
		t.Fatal("no detection in the full trace")
	}
	cut := full[0].TimeNS + int64(2*time.Second)
	lines := strings.Split(string(data), "\n")
	var prefix strings.Builder
	for _, l := range lines {
		if l != "" && l[0] >= '0' && l[0] <= '9' {
			var ts int64
			fmt.Sscan(l[:strings.IndexByte(l, ',')], &ts)
			if ts > cut {
				break
			}
		}
		prefix.WriteString(l + "\n")
	}
	part := replayAll(t, []byte(prefix.String()), allProtected())
	if len(part) == 0 || part[0].TimeNS != full[0].TimeNS || part[0].Victim != full[0].Victim || part[0].Score != full[0].Score {
		t.Errorf("prefix replay: got %+v, want the full replay's first detection %+v", part, full[0])
	}
}

func TestReplayBadInput(t *testing.T) {
	pre := "# sidewatch-trace: v1\n" + trace.Header + "\n"
	for _, tc := range []struct{ name, in, want string }{
		{"bad row", pre + "1,n,ns,v,0,llc_misses,x\n", "line 3:"},
		{"order", pre + "5,n,ns,v,0,llc_misses,1\n4,n,ns,v,0,llc_misses,1\n", "line 4: time_ns 4 is before"},
		{"bad region", "# sidewatch-trace: v1\n# guest_region: nonsense\n" + trace.Header + "\n", "line 2: guest_region"},
		{"bad interval", "# sidewatch-trace: v1\n# interval: -3s\n" + trace.Header + "\n", "line 2: metadata interval"},
		{"late interval", pre + "5,n,ns,v,0,llc_misses,1\n# interval: 50ms\n", "line 4: metadata interval must come before the first row"},
		{"far out of order", pre + "1000000000,n,ns,a,0,llc_misses,1\n100000000000,n,ns,a,0,llc_misses,1\n1000,n,ns,b,0,llc_misses,1\n", "line 5: time_ns 1000 is more than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Replay(context.Background(), strings.NewReader(tc.in), allProtected(), ReplayOptions{})
			var se *trace.SyntaxError
			if !errors.As(err, &se) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want a SyntaxError containing %q", err, tc.want)
			}
		})
	}
}

func TestConfigFromPolicy(t *testing.T) {
	cfg := ConfigFromPolicy(v1alpha1.SideChannelPolicySpec{})
	if cfg.Interval != 100*time.Millisecond || cfg.CacheOscillation.Window != 10*time.Second || cfg.CacheOscillation.MinAutocorrelation != 0.5 ||
		cfg.BusLock.MinBurstRate != 500 || cfg.SideChannel.BaselineWindow != 5*time.Minute || !cfg.SideChannel.Enabled {
		t.Errorf("defaults not applied: %+v", cfg)
	}
	off := false
	spec := v1alpha1.SideChannelPolicySpec{}
	spec.Detectors.BusLock.Enabled = &off
	spec.Detectors.CacheOscillation.MinAutocorrelation = 0.7
	cfg = ConfigFromPolicy(spec)
	if cfg.BusLock.Enabled || cfg.CacheOscillation.MinAutocorrelation != 0.7 {
		t.Errorf("policy settings not applied: %+v", cfg)
	}
	if spec.Detectors.CacheOscillation.Window != nil {
		t.Error("ConfigFromPolicy changed its argument")
	}
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   string // in the error; "" for none
	}{
		{"defaults", func(*Config) {}, ""},
		{"short window", func(c *Config) { c.CacheOscillation.Window = 500 * time.Millisecond }, "detectors.cacheOscillation.window"},
		{"no long horizon", func(c *Config) { c.LongHorizon = 0 }, ""},
		{"negative long horizon", func(c *Config) { c.LongHorizon = -1 }, "longHorizon"},
		{"long horizon too long", func(c *Config) { c.LongHorizon = 17 }, "longHorizon"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.change(&c)
			err := c.Validate()
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("got %v, want an error naming %q", err, tc.want)
			}
		})
	}
	if _, err := ProtectionFromPolicy("p", v1alpha1.SideChannelPolicySpec{Detectors: v1alpha1.DetectorsSpec{CryptoCorrelation: v1alpha1.CryptoCorrelationSpec{
		Signatures: []v1alpha1.Signature{{Name: "x", ProfileConfigMap: "cm"}}}}}, nil); err == nil {
		t.Error("a profileConfigMap without a loader must be an error")
	}
	p, err := ProtectionFromPolicy("p", v1alpha1.SideChannelPolicySpec{}, nil)
	if err != nil || len(p.Signatures) != 1 || p.Signatures[0].Name != BuiltinCryptoSignatureName {
		t.Errorf("got %+v, %v; want the built-in signature", p, err)
	}
}

func TestSignatureMatching(t *testing.T) {
	crypto := BuiltinCryptoSignature()
	sym := Signature{Name: "s", Libraries: []string{"libcrypto.so"}, Symbols: []string{"BN_mod_exp_mont"}}
	abs := Signature{Name: "a", Libraries: []string{"/opt/app/libsecret.so"}}
	for _, tc := range []struct {
		sig  Signature
		path string
		sym  string
		want bool
	}{
		{crypto, "/usr/lib/x86_64-linux-gnu/libcrypto.so.3", "", true},
		{crypto, "/usr/lib/libcrypto.so", "", true},
		{crypto, "/usr/lib/libcryptsetup.so.12", "", false},
		{crypto, "/usr/lib/libc.so.6", "", false},
		{sym, "/usr/lib/libcrypto.so.3", "BN_mod_exp_mont", true},
		{sym, "/usr/lib/libcrypto.so.3", "AES_encrypt", false},
		{sym, "/usr/lib/libcrypto.so.3", "", false},
		{abs, "/opt/app/libsecret.so", "", true},
		{abs, "/other/libsecret.so", "", false},
	} {
		r := trace.GuestRegion{Path: tc.path, Symbol: tc.sym}
		if got := tc.sig.matchesRegion(&r); got != tc.want {
			t.Errorf("%s on %s %s: got %v, want %v", tc.sig.Name, tc.path, tc.sym, got, tc.want)
		}
	}
}

type fakeResolver struct{ calls int }

func (f *fakeResolver) Resolve(vmi VMIRef, rip uint64) (trace.GuestRegion, bool) {
	f.calls++
	if rip >= 0x7000 && rip < 0x8000 {
		return trace.GuestRegion{Namespace: vmi.Namespace, VMI: vmi.Name, Start: 0x7000, End: 0x8000, Path: "/lib/libssl.so.3"}, true
	}
	return trace.GuestRegion{}, false
}

func TestResolverCaching(t *testing.T) {
	var rt regionTable
	sigs := []Signature{BuiltinCryptoSignature()}
	f := &fakeResolver{}
	ref := VMIRef{"ns", "v"}
	for i := 0; i < 100; i++ {
		if got := rt.lookup(ref, 0x7100+uint64(i), f, sigs); got != 0 {
			t.Fatalf("sample in libssl: got signature %d, want 0", got)
		}
		if got := rt.lookup(ref, 0x20000+uint64(i), f, sigs); got != -1 {
			t.Fatalf("unknown sample: got %d, want -1", got)
		}
	}
	if f.calls != 2 {
		t.Errorf("resolver called %d times, want 2 (one per page)", f.calls)
	}
}

func TestFindingSpec(t *testing.T) {
	d := Detection{TimeNS: 5e9, FirstCrossingNS: 4e9, Type: v1alpha1.CacheSideChannel, Detector: DetectorCryptoCorrelation, Node: "n1",
		Victim: VMIRef{"pay", "tls"}, Suspects: []Suspect{{VMIRef: VMIRef{"t", "probe"}, Score: 0.8, Role: RoleAttacker}}, Score: 0.85, Severity: v1alpha1.SeverityHigh,
		Evidence: Evidence{WindowNS: 1e10, Correlation: 0.9, AnomalyScore: 7, Signature: "crypto-libraries", EventRates: []EventRate{{VMI: "t/probe", Event: "llc_misses", PerSecond: 1e6}}}}
	s := d.FindingSpec()
	if s.Victim.Name != "tls" || len(s.Suspects) != 1 || s.Suspects[0].Role != "Attacker" || s.FirstSeen.Time.UnixNano() != 4e9 || s.LastSeen.Time.UnixNano() != 5e9 ||
		*s.Evidence.Correlation != 0.9 || s.Evidence.Window.Duration != 10*time.Second || s.Evidence.EventRates[0].Event != v1alpha1.EventLLCMisses {
		t.Errorf("got %+v", s)
	}
}
