package detect

import (
	"path"
	"slices"
	"sort"
	"strings"

	"github.com/sidewatch/sidewatch/node-agent/trace"
)

// Protection marks a VMI as protected: it can be the victim of a finding.
type Protection struct {
	// Policy names the SideChannelPolicy that governs the VMI; detections
	// carry it.
	Policy string
	// Signatures recognise the VMI's sensitive code for the side-channel
	// detector.
	Signatures []Signature
}

// Signature recognises sensitive code, by where sampled guest instruction
// pointers fall (Libraries, Symbols) or by the VMI's counter profile
// (Profile), as v1alpha1.Signature.
type Signature struct {
	Name string
	// Libraries are guest file names: an absolute path matches that path;
	// a base name matches any path with that base name, and also versioned
	// names that extend it ("libcrypto.so" matches "libcrypto.so.3").
	Libraries []string
	// Symbols restrict the match to these functions (inside Libraries when
	// those are given too).
	Symbols []string
	// Profile recognises sensitive phases from counter values alone.
	Profile *Profile
}

// BuiltinCryptoSignatureName names the signature used when a policy lists
// none.
const BuiltinCryptoSignatureName = "crypto-libraries"

// BuiltinCryptoSignature matches code in the common crypto libraries.
func BuiltinCryptoSignature() Signature {
	return Signature{
		Name: BuiltinCryptoSignatureName,
		Libraries: []string{"libcrypto.so", "libssl.so", "libgcrypt.so", "libsodium.so",
			"libmbedcrypto.so", "libnettle.so", "libhogweed.so"},
	}
}

// matchesRIP reports whether a region's code is sensitive under s.
func (s *Signature) matchesRegion(r *trace.GuestRegion) bool {
	if len(s.Libraries) == 0 && len(s.Symbols) == 0 {
		return false
	}
	if len(s.Libraries) > 0 && !matchLibrary(s.Libraries, r.Path) {
		return false
	}
	if len(s.Symbols) > 0 && (r.Symbol == "" || !slices.Contains(s.Symbols, r.Symbol)) {
		return false
	}
	return true
}

func matchLibrary(libs []string, p string) bool {
	base := path.Base(p)
	for _, l := range libs {
		if strings.HasPrefix(l, "/") {
			if l == p {
				return true
			}
			continue
		}
		if base == l || strings.HasPrefix(base, l+".") {
			return true
		}
	}
	return false
}

// Resolver attributes a guest instruction pointer of a VMI to the file (and
// symbol) that holds it. The node agent implements it with introspection;
// traces carry the same knowledge as guest_region metadata lines. The
// engine calls Resolve only for addresses no known region covers, at most
// once per 4 KiB page until that page's cache slot is reused, from the
// goroutine that calls Observe; Resolve must be fast or cache internally.
type Resolver interface {
	Resolve(vmi VMIRef, rip uint64) (trace.GuestRegion, bool)
}

// MaxRegionsPerVMI bounds the guest regions remembered per VMI.
const MaxRegionsPerVMI = 4096

type span struct {
	start, end uint64
	sig        int32
}

// regionTable is what the engine knows about one VMI's guest address space.
type regionTable struct {
	regions   []trace.GuestRegion
	covered   []span // union of regions
	sensitive []span // regions matching a signature, sig = signature index
	pages     [256]uint64
}

func (t *regionTable) add(r trace.GuestRegion, sigs []Signature) {
	if len(t.regions) >= MaxRegionsPerVMI {
		// Forget the oldest half: addresses move when guest processes
		// restart, so the newest regions are the useful ones.
		t.regions = append(t.regions[:0], t.regions[len(t.regions)/2:]...)
	}
	t.regions = append(t.regions, r)
	t.rebuild(sigs)
}

func (t *regionTable) rebuild(sigs []Signature) {
	t.covered = t.covered[:0]
	t.sensitive = t.sensitive[:0]
	for i := range t.regions {
		r := &t.regions[i]
		t.covered = append(t.covered, span{r.Start, r.End, -1})
		for si := range sigs {
			if sigs[si].matchesRegion(r) {
				t.sensitive = append(t.sensitive, span{r.Start, r.End, int32(si)})
				break
			}
		}
	}
	t.covered = mergeSpans(t.covered)
	t.sensitive = mergeSpans(t.sensitive)
	t.pages = [256]uint64{}
}

func mergeSpans(s []span) []span {
	sort.Slice(s, func(i, j int) bool { return s[i].start < s[j].start })
	out := s[:0]
	for _, x := range s {
		if n := len(out); n > 0 && x.start <= out[n-1].end {
			if x.end > out[n-1].end {
				out[n-1].end = x.end
			}
			continue
		}
		out = append(out, x)
	}
	return out
}

func findSpan(s []span, rip uint64) int {
	i := sort.Search(len(s), func(i int) bool { return s[i].end > rip })
	if i < len(s) && s[i].start <= rip {
		return i
	}
	return -1
}

// lookup returns the signature index rip is sensitive under, or -1. It
// asks res about addresses no region covers.
func (t *regionTable) lookup(vmi VMIRef, rip uint64, res Resolver, sigs []Signature) int32 {
	if i := findSpan(t.sensitive, rip); i >= 0 {
		return t.sensitive[i].sig
	}
	if res == nil || rip == 0 || findSpan(t.covered, rip) >= 0 {
		return -1
	}
	page := rip>>12 + 1
	slot := &t.pages[page&255]
	if *slot == page {
		return -1
	}
	*slot = page
	r, ok := res.Resolve(vmi, rip)
	if !ok || r.End <= r.Start || rip < r.Start || rip >= r.End {
		return -1
	}
	t.add(r, sigs)
	if i := findSpan(t.sensitive, rip); i >= 0 {
		return t.sensitive[i].sig
	}
	return -1
}
