package detect

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/node-agent/trace"
)

// busLockTrace writes a hand-made bus-lock channel: from onset the sender
// takes 300k split locks per second while lock(bit, phase) holds for the
// current bit and the phase within it (one lock sample per 1000 locks);
// the receiver's cycles per instruction rise with them (a loop that times
// memory accesses), a memory-bound neighbour's less, a bystander's wander
// on their own.
// The locks stall memory accesses node-wide: the receiver's and a
// memory-bound neighbour's LLC misses (sampled, one per 1000) drop in
// every burst, in step with each other.
func busLockTrace(t *testing.T, seconds, onset, period float64, lock func(bit bool, phase float64) bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := trace.NewWriter(&buf)
	w.Meta(trace.MetaInterval, "100ms")
	w.Meta("sample_period.bus_locks", "1000")
	w.Meta("sample_period.llc_misses", "1000")
	rng := rand.New(rand.NewPCG(5, 5))
	vmis := []string{"sender", "receiver", "bystander", "membound"}
	missCum := make([]float64, len(vmis))
	missInt := make([]float64, len(vmis))
	b := randomBits(3, 10000)
	rate := func(ts float64) float64 {
		if ts < onset {
			return 0
		}
		x := (ts - onset) / period
		k := int(x)
		if lock(b[k], x-float64(k)) {
			return 3e5
		}
		return 0
	}
	var cum float64
	var locksInt, stallInt float64
	for ms := 1; ms <= int(seconds*1000); ms++ {
		ts := float64(ms) / 1000
		l := rate(ts)
		locksInt += l / 1000
		stallInt += l / 3e5
		before := cum
		cum += l / 1000
		for i, v := range vmis {
			var m float64 // LLC misses per second
			switch v {
			case "receiver", "membound":
				m = 2e6 / (1 + 2*l/3e5) * (1 + 0.1*rng.NormFloat64())
			default:
				m = 1e5 * (1 + 0.1*rng.NormFloat64())
			}
			m = max(m, 0) / 1000
			missInt[i] += m
			k := int((missCum[i]+m)/1000) - int(missCum[i]/1000)
			for j := range k {
				at := int64(ms-1)*1e6 + int64((float64(j)+rng.Float64())*1e6/float64(k))
				w.Row(at, "n1", "ns", v, 0, trace.LLCMisses.Sample(), 0x1000)
			}
			missCum[i] += m
		}
		if int(cum/1000) > int(before/1000) {
			w.Row(int64(ms)*1e6, "n1", "ns", "sender", 0, trace.BusLocks.Sample(), 0)
		}
		if ms%100 == 0 {
			at := int64(ms) * 1e6
			w.Row(at, "n1", "ns", "sender", 0, trace.BusLocks, uint64(locksInt))
			w.Row(at, "n1", "ns", "sender", 0, trace.SplitLocks, uint64(locksInt))
			for i, v := range vmis {
				cpi := 1.0
				switch v {
				case "receiver":
					cpi += 2 * stallInt / 100
				case "membound":
					cpi += 0.7 * stallInt / 100
				}
				if v == "bystander" {
					cpi += 0.3 * rng.Float64()
				}
				cyc := 2.5e8
				w.Row(at, "n1", "ns", v, 0, trace.Cycles, uint64(cyc))
				w.Row(at, "n1", "ns", v, 0, trace.Instructions, uint64(cyc/cpi*(1+0.02*rng.NormFloat64())))
				w.Row(at, "n1", "ns", v, 0, trace.LLCMisses, uint64(missInt[i]))
				missInt[i] = 0
			}
			locksInt, stallInt = 0, 0
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestBusLockChannelHandMade(t *testing.T) {
	for _, tc := range []struct {
		name          string
		period, onset float64
		lock          func(bit bool, phase float64) bool
	}{
		// Locks in the first half of each 1 bit, 80 ms bits.
		{"rz-80ms", 0.08, 30, func(b bool, ph float64) bool { return b && ph < 0.5 }},
		// Slow non-return-to-zero: a run of 1 bits is one long burst, so a
		// window holds only a dozen bursts at irregular gaps (multiples of
		// the bit period).
		{"nrz-400ms", 0.4, 30, func(b bool, _ float64) bool { return b }},
		{"nrz-250ms", 0.25, 30, func(b bool, _ float64) bool { return b }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds := replayAll(t, busLockTrace(t, tc.onset+60, tc.onset, tc.period, tc.lock), allProtected())
			if len(ds) == 0 {
				t.Fatal("no detection")
			}
			d := ds[0]
			if d.Type != v1alpha1.BusLockCovertChannel || d.Victim.Name != "sender" || len(d.Suspects) == 0 || d.Suspects[0].Name != "receiver" || d.Suspects[0].Role != RoleReceiver {
				t.Errorf("got %s victim %s suspects %+v", d.Type, d.Victim, d.Suspects)
			}
			if d.TimeNS < int64(tc.onset*1e9) || d.TimeNS > int64((tc.onset+30)*1e9) {
				t.Errorf("detected at %dns, want within 30s of the onset", d.TimeNS)
			}
			if p := float64(d.Evidence.PeriodNS) / 1e9; p < 0.9*tc.period || p > 1.1*tc.period {
				t.Errorf("period %.1fms, want about %.0fms", p*1e3, tc.period*1e3)
			}
			// Bus locks stall every memory access on the node, so the
			// receiver's (and the sender's) cache trains follow the lock
			// bursts too: that is the lock channel, not a cache channel.
			for _, x := range ds {
				if x.Type != v1alpha1.BusLockCovertChannel {
					t.Errorf("spurious %s victim %s suspects %+v", x.Type, x.Victim, x.Suspects)
				}
			}
		})
	}
}

// A hand-made Prime+Probe: the victim's samples fall in libcrypto (declared
// by guest_region lines) during random sensitive phases; from the onset the
// attacker misses twice as much in them; a bystander is busy on its own.
func TestSideChannelHandMade(t *testing.T) {
	var buf bytes.Buffer
	w := trace.NewWriter(&buf)
	w.Meta(trace.MetaInterval, "100ms")
	w.Meta(trace.MetaGuestRegion, trace.GuestRegion{Namespace: "pay", VMI: "tls", Start: 0x7f0000100000, End: 0x7f0000400000, Path: "/usr/lib/libcrypto.so.3"}.String())
	w.Meta(trace.MetaGuestRegion, trace.GuestRegion{Namespace: "pay", VMI: "tls", Start: 0x400000, End: 0x600000, Path: "/usr/bin/nginx"}.String())
	rng := rand.New(rand.NewPCG(8, 8))
	const onset = 60.0
	sens := false
	until, gcUntil := 0.0, 0.0
	phases := 0
	for i := 1; i <= 1500; i++ {
		ts := float64(i) / 10
		at := int64(i) * 1e8
		if ts >= until {
			sens = !sens
			if sens {
				until = ts + 0.3 + rng.Float64()
				// A Java neighbour's stop-the-world collections cover
				// every other sensitive phase (far more often than chance
				// would): a shift in some phases, not an attack.
				if phases++; phases%2 == 0 {
					gcUntil = until
				}
			} else {
				until = ts + 0.5 + 2*rng.Float64()
			}
		}
		for k := 0; k < 8; k++ {
			rip := uint64(0x400000 + rng.IntN(0x100000))
			if sens && rng.Float64() < 0.9 {
				rip = uint64(0x7f0000100000 + rng.IntN(0x200000))
			}
			w.Row(at-int64(8-k)*1e7, "n1", "pay", "tls", 0, trace.LLCMisses.Sample(), rip)
		}
		gc := 3e5 * (1 + 0.05*rng.NormFloat64())
		if ts < gcUntil {
			gc *= 8
		}
		attacker := 3e5 * (1 + 0.05*rng.NormFloat64())
		if ts >= onset && sens {
			attacker *= 2
		}
		for _, v := range []struct {
			ns, name string
			misses   float64
		}{
			{"pay", "tls", 5e4 * (1 + 0.1*rng.NormFloat64())},
			{"t", "attacker", attacker},
			{"t", "bystander", 4e5 * (1 + 0.5*rng.Float64())},
			{"j", "gc", gc},
		} {
			w.Row(at, "n1", v.ns, v.name, 0, trace.LLCMisses, uint64(v.misses))
			w.Row(at, "n1", v.ns, v.name, 0, trace.Instructions, uint64(1e8*(1+0.03*rng.NormFloat64())))
			w.Row(at, "n1", v.ns, v.name, 0, trace.Cycles, 2e8)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.ProtectionFor = func(r VMIRef) *Protection {
		if r.Namespace == "pay" {
			return &Protection{Policy: "p", Signatures: []Signature{BuiltinCryptoSignature()}}
		}
		return nil
	}
	ds := replayAll(t, sortRows(t, buf.Bytes()), cfg)
	if len(ds) == 0 {
		t.Fatal("no detection")
	}
	d := ds[0]
	if d.Type != v1alpha1.CacheSideChannel || d.Victim.Name != "tls" || len(d.Suspects) != 1 || d.Suspects[0].Name != "attacker" ||
		d.Evidence.Signature != BuiltinCryptoSignatureName || d.Policy != "p" || d.Series == nil || d.Series.Sensitive == nil {
		t.Errorf("got %+v", d)
	}
	if d.TimeNS < onset*1e9 || d.TimeNS > (onset+30)*1e9 {
		t.Errorf("detected at %dns, want within 30s of the onset at %vs", d.TimeNS, onset)
	}
	for _, d := range ds {
		for _, s := range d.Suspects {
			if s.Name != "attacker" {
				t.Errorf("at %v: suspect %s (score %.2f)", time.Duration(d.TimeNS), s.VMIRef, s.Score)
			}
		}
	}
}
