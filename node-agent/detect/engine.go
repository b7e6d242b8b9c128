package detect

import (
	"fmt"
	"slices"
	"unsafe"

	"github.com/sidewatch/sidewatch/api/v1alpha1"
	"github.com/sidewatch/sidewatch/node-agent/trace"
)

// Engine runs the three detectors over the observations of any number of
// nodes. It is not safe for concurrent use: one goroutine feeds it.
type Engine struct {
	cfg Config

	coarseNS   int64 // coarse bin = counter interval
	fineNS     int64 // fine bin of LLC-miss samples
	lockNS     int64 // fine bin of lock samples
	hopNS      int64 // analyses run at multiples of hopNS
	latenessNS int64
	maxWinNS   int64

	coarseLen, fineLen, lockLen int

	// The long horizon (Config.LongHorizon windows) of the covert-channel
	// detectors, with its own sample rings at a coarser resolution (the
	// periods it looks for are long): 0 when off.
	longCacheNS, llcLongNS  int64
	longLockNS, lockLongNS  int64
	llcLongLen, lockLongLen int

	nodes       map[string]*node
	nodeList    []*node
	streams     []stream
	streamIdx   map[StreamKey]StreamID
	vmiIdx      map[vmiKey]*vmi
	protections map[VMIRef]*Protection
	regions     map[VMIRef]*regionTable
	resolver    Resolver
	episodes    map[episodeKey]*episode
	pairSeen    map[pairKey]int64

	out   []Detection
	sc    scratch
	stats Stats
}

// Stats counts what the engine saw.
type Stats struct {
	Observations int64
	// Late counts observations older than an analysis already run for
	// their node (they still count in later windows).
	Late int64
	// Dropped counts observations older than anything the engine still
	// keeps, and observations of unknown streams or events.
	Dropped  int64
	Analyses int64
	// Unprotected counts channel detections that named no protected VMI
	// and so produced no Detection.
	Unprotected int64
	Detections  int64
}

type vmiKey struct {
	node string
	ref  VMIRef
}

type node struct {
	name     string
	vmis     []*vmi
	maxTime  int64
	nextHop  int64
	analyzed int64
	// lockClocks are the bit clocks of the bus-lock senders found on the
	// node within the last window: every memory-bound VMI follows them.
	lockClocks [4]lockClock
}

type lockClock struct {
	periodNS float64
	at       int64 // analysis that found it
}

// noteLockClock records a bus-lock sender's clock found at analysis B.
func (n *node) noteLockClock(periodNS float64, B int64) {
	k := 0
	for i, c := range n.lockClocks {
		if c.at < n.lockClocks[k].at {
			k = i
		}
	}
	n.lockClocks[k] = lockClock{periodNS: periodNS, at: B}
}

// lockClockExplains reports whether a bus-lock clock found within the last
// window W before B matches periodNS (or twice or half of it).
func (n *node) lockClockExplains(periodNS float64, binNS, B, W int64) bool {
	for _, c := range n.lockClocks {
		if c.at > 0 && B-c.at <= W && periodsMatch(periodNS, c.periodNS, binNS) {
			return true
		}
	}
	return false
}

type stream struct {
	vmi  *vmi
	last [trace.NumCounters + 1]int64
}

type vmi struct {
	ref    VMIRef
	node   *node
	vcpus  int
	first  int64
	last   int64
	coarse coarseRing
	llc    countRing
	locks  [2]countRing // bus_locks, split_locks samples
	// The same samples over the long horizon, in coarser bins.
	llcLong   countRing
	locksLong [2]countRing

	prot    *Protection // explicit or default; nil: not protected
	profIdx [][]int     // per signature: profile feature index, nil without profile
	regions *regionTable

	base       baseline
	baseFedTo  int64 // coarse index up to which the baseline was fed (exclusive)
	hop        hopState
	acCurve    []float32
	acCurveLag int64
	acStrength float64
	// lockHop is the analysis at which the bus-lock detector last found
	// this VMI sending.
	lockHop int64
}

// New returns an engine for cfg.
func New(cfg Config) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("detect: %w", err)
	}
	e := &Engine{
		cfg:         cfg,
		nodes:       map[string]*node{},
		streamIdx:   map[StreamKey]StreamID{},
		vmiIdx:      map[vmiKey]*vmi{},
		protections: map[VMIRef]*Protection{},
		regions:     map[VMIRef]*regionTable{},
		episodes:    map[episodeKey]*episode{},
		pairSeen:    map[pairKey]int64{},
	}
	e.coarseNS = cfg.Interval.Nanoseconds()
	e.latenessNS = cfg.Lateness.Nanoseconds()
	var minWin int64 = 1 << 62
	for _, w := range []struct {
		on bool
		ns int64
	}{
		{cfg.CacheOscillation.Enabled, cfg.CacheOscillation.Window.Nanoseconds()},
		{cfg.BusLock.Enabled, cfg.BusLock.Window.Nanoseconds()},
		{cfg.SideChannel.Enabled, cfg.SideChannel.Window.Nanoseconds()},
	} {
		if w.on {
			e.maxWinNS = max(e.maxWinNS, w.ns)
			minWin = min(minWin, w.ns)
		}
	}
	if e.maxWinNS == 0 {
		e.maxWinNS, minWin = 10*e.coarseNS, 10*e.coarseNS
	}
	// Two analyses per (shortest) window, on interval boundaries.
	e.hopNS = max(e.coarseNS, minWin/2/e.coarseNS*e.coarseNS)
	slack := e.hopNS + e.latenessNS + 2*e.coarseNS
	long := cfg.LongHorizon > 1
	if cfg.CacheOscillation.Enabled {
		w := cfg.CacheOscillation.Window.Nanoseconds()
		e.fineNS = max(w/int64(cfg.MaxFineBins), 1000)
		e.fineLen = int((w+slack)/e.fineNS) + 2
		if long {
			e.longCacheNS = int64(cfg.LongHorizon) * w
			e.llcLongNS = max(e.longCacheNS/longBins, e.fineNS)
			e.llcLongLen = int((e.longCacheNS+slack)/e.llcLongNS) + 2
		}
	}
	if cfg.BusLock.Enabled {
		w := cfg.BusLock.Window.Nanoseconds()
		e.lockNS = max(w/4096, 1000)
		e.lockLen = int((w+slack)/e.lockNS) + 2
		if long {
			e.longLockNS = int64(cfg.LongHorizon) * w
			e.lockLongNS = max(e.longLockNS/longBins, e.lockNS)
			e.lockLongLen = int((e.longLockNS+slack)/e.lockLongNS) + 2
		}
	}
	keep := max(e.maxWinNS, e.longCacheNS, e.longLockNS) + slack
	e.coarseLen = int(keep/e.coarseNS) + 2
	return e, nil
}

// Config returns the engine's configuration.
func (e *Engine) Config() Config { return e.cfg }

// HopNS is the spacing of analyses: detections are emitted at multiples of
// it.
func (e *Engine) HopNS() int64 { return e.hopNS }

// Stats returns counters of what the engine saw.
func (e *Engine) Stats() Stats { return e.stats }

// Stream returns the handle of a vCPU stream, registering it (and its VMI
// and node) the first time. Registration allocates; later calls with the
// same key do not.
func (e *Engine) Stream(k StreamKey) StreamID {
	if id, ok := e.streamIdx[k]; ok {
		return id
	}
	n := e.nodes[k.Node]
	if n == nil {
		n = &node{name: k.Node}
		e.nodes[k.Node] = n
		e.nodeList = append(e.nodeList, n)
	}
	vk := vmiKey{k.Node, k.VMI}
	v := e.vmiIdx[vk]
	if v == nil {
		v = e.newVMI(n, k.VMI)
		e.vmiIdx[vk] = v
		n.vmis = append(n.vmis, v)
	}
	v.vcpus++
	id := StreamID(len(e.streams))
	s := stream{vmi: v}
	for i := range s.last {
		s.last[i] = -1
	}
	e.streams = append(e.streams, s)
	e.streamIdx[k] = id
	return id
}

func (e *Engine) newVMI(n *node, ref VMIRef) *vmi {
	v := &vmi{ref: ref, node: n, first: -1, last: -1, coarse: newCoarseRing(e.coarseLen), baseFedTo: noIndex}
	if e.fineLen > 0 {
		v.llc = newCountRing(e.fineLen)
	}
	if e.lockLen > 0 {
		v.locks[0] = newCountRing(e.lockLen)
		v.locks[1] = newCountRing(e.lockLen)
	}
	if e.llcLongLen > 0 {
		v.llcLong = newCountRing(e.llcLongLen)
	}
	if e.lockLongLen > 0 {
		v.locksLong[0] = newCountRing(e.lockLongLen)
		v.locksLong[1] = newCountRing(e.lockLongLen)
	}
	v.regions = e.regions[ref]
	if v.regions == nil {
		v.regions = &regionTable{}
		e.regions[ref] = v.regions
	}
	e.applyProtection(v)
	return v
}

// SetProtection protects a VMI (p != nil) or withdraws its protection
// (p == nil; the VMI is then protected only if Config.DefaultProtection is
// set). The agent calls it when the policy governing the VMI changes.
func (e *Engine) SetProtection(ref VMIRef, p *Protection) {
	if p == nil {
		delete(e.protections, ref)
	} else {
		e.protections[ref] = p
	}
	for _, v := range e.vmiIdx {
		if v.ref == ref {
			e.applyProtection(v)
		}
	}
}

// Protected reports the protection in force for a VMI, or nil.
func (e *Engine) Protected(ref VMIRef) *Protection {
	if p := e.protections[ref]; p != nil {
		return p
	}
	if e.cfg.ProtectionFor != nil {
		if p := e.cfg.ProtectionFor(ref); p != nil {
			return p
		}
	}
	return e.cfg.DefaultProtection
}

func (e *Engine) applyProtection(v *vmi) {
	v.prot = e.Protected(v.ref)
	v.profIdx = nil
	var sigs []Signature
	if v.prot != nil {
		sigs = v.prot.Signatures
		for _, s := range sigs {
			var idx []int
			if s.Profile != nil {
				idx, _ = s.Profile.featureIndex()
			}
			v.profIdx = append(v.profIdx, idx)
		}
	}
	v.regions.rebuild(sigs)
}

// AddGuestRegion tells the engine what code lies at a guest address range
// of a VMI (a trace's guest_region line, or introspection).
func (e *Engine) AddGuestRegion(r trace.GuestRegion) {
	ref := VMIRef{r.Namespace, r.VMI}
	t := e.regions[ref]
	if t == nil {
		t = &regionTable{}
		e.regions[ref] = t
	}
	var sigs []Signature
	if p := e.Protected(ref); p != nil {
		sigs = p.Signatures
	}
	t.add(r, sigs)
}

// SetResolver installs the resolver asked about sampled addresses no known
// region covers.
func (e *Engine) SetResolver(r Resolver) { e.resolver = r }

// RemoveVMI forgets a VMI on a node (it was deleted or migrated away). Its
// stream handles stay valid but their observations are dropped.
func (e *Engine) RemoveVMI(nodeName string, ref VMIRef) {
	vk := vmiKey{nodeName, ref}
	v := e.vmiIdx[vk]
	if v == nil {
		return
	}
	delete(e.vmiIdx, vk)
	n := v.node
	n.vmis = slices.DeleteFunc(n.vmis, func(x *vmi) bool { return x == v })
	for i := range e.streams {
		if e.streams[i].vmi == v {
			e.streams[i].vmi = nil
		}
	}
	for k := range e.episodes {
		if k.node == nodeName && (k.victim == ref || k.other == ref) {
			delete(e.episodes, k)
		}
	}
	for k := range e.pairSeen {
		if k.a == v || k.b == v {
			delete(e.pairSeen, k)
		}
	}
}

// Observe feeds one observation. Observations of one stream must come in
// time order; different streams of a node may be up to Config.Lateness
// apart. It returns the detections this observation completed, usually
// none; the slice is reused by the next call.
func (e *Engine) Observe(o Observation) []Detection {
	e.out = e.out[:0]
	if o.Stream < 0 || int(o.Stream) >= len(e.streams) || !o.Event.Valid() {
		e.stats.Dropped++
		return nil
	}
	s := &e.streams[o.Stream]
	v := s.vmi
	if v == nil || o.TimeNS < 0 {
		e.stats.Dropped++
		return nil
	}
	n := v.node
	t := o.TimeNS
	if n.nextHop == 0 {
		n.nextHop = (t/e.hopNS + 1) * e.hopNS
		n.maxTime = t
	}
	if t > n.maxTime {
		n.maxTime = t
		if t-e.latenessNS >= n.nextHop {
			e.runHops(n, t-e.latenessNS)
		}
	}
	if t < n.analyzed {
		e.stats.Late++
	}
	if v.first < 0 {
		v.first = t
	}
	v.last = max(v.last, t)
	e.stats.Observations++
	if o.Event.IsSample() {
		e.addSample(v, t, o.Event.Counter(), o.Value)
	} else {
		e.addCounter(s, v, t, o.Event, o.Value)
	}
	return e.out
}

func (e *Engine) addCounter(s *stream, v *vmi, t int64, c trace.Event, value uint64) {
	I := e.coarseNS
	d := t - s.last[c]
	if s.last[c] < 0 || d <= 0 || d > 10*I {
		d = I
	}
	if t > s.last[c] {
		s.last[c] = t
	}
	a := t - d
	k0, k1 := a/I, (t-1)/I
	if k0 < 0 {
		k0 = 0
	}
	val := float64(value)
	for k := k0; k <= k1; k++ {
		lo, hi := max(a, k*I), min(t, (k+1)*I)
		if hi <= lo {
			continue
		}
		b := v.coarse.at(k)
		if b == nil {
			e.stats.Dropped++
			continue
		}
		b.c[c] += float32(val * float64(hi-lo) / float64(d))
		b.has |= 1 << c
	}
}

func (e *Engine) addSample(v *vmi, t int64, c trace.Event, rip uint64) {
	b := v.coarse.at(t / e.coarseNS)
	if b == nil {
		e.stats.Dropped++
		return
	}
	if b.samples < 65535 {
		b.samples++
	}
	if v.prot != nil && rip != 0 && (len(v.regions.covered) > 0 || e.resolver != nil) {
		if sig := v.regions.lookup(v.ref, rip, e.resolver, v.prot.Signatures); sig >= 0 {
			if b.sensitive < 65535 {
				b.sensitive++
			}
			b.sig = int8(min(sig, 127))
		}
	}
	switch c {
	case trace.LLCMisses:
		if e.fineNS > 0 {
			v.llc.add(t / e.fineNS)
		}
		if e.llcLongNS > 0 {
			v.llcLong.add(t / e.llcLongNS)
		}
	case trace.BusLocks, trace.SplitLocks:
		k := 0
		if c == trace.SplitLocks {
			k = 1
		}
		if e.lockNS > 0 {
			v.locks[k].add(t / e.lockNS)
		}
		if e.lockLongNS > 0 {
			v.locksLong[k].add(t / e.lockLongNS)
		}
	}
}

// Late reports whether o would arrive after an analysis of a window that
// should have contained it (it is older than the newest analysis of its
// node). Late observations still count in later windows.
func (e *Engine) Late(o Observation) bool {
	if o.Stream < 0 || int(o.Stream) >= len(e.streams) {
		return false
	}
	v := e.streams[o.Stream].vmi
	return v != nil && o.TimeNS < v.node.analyzed
}

// Advance tells the engine that a node's time has reached nowNS even if no
// observation says so (all its VMIs are quiet), so windows ending before
// nowNS - Lateness are analysed.
func (e *Engine) Advance(nodeName string, nowNS int64) []Detection {
	e.out = e.out[:0]
	n := e.nodes[nodeName]
	if n == nil || n.nextHop == 0 {
		return nil
	}
	if nowNS > n.maxTime {
		n.maxTime = nowNS
	}
	if until := nowNS - e.latenessNS; until >= n.nextHop {
		e.runHops(n, until)
	}
	return e.out
}

// Flush analyses every window that ends at or before the newest
// observation of each node: the end of a replay. The slice is reused by the
// next call.
func (e *Engine) Flush() []Detection {
	e.out = e.out[:0]
	for _, n := range e.nodeList {
		if n.nextHop != 0 && n.maxTime >= n.nextHop {
			e.runHops(n, n.maxTime)
		}
	}
	return e.out
}

func (e *Engine) runHops(n *node, until int64) {
	for n.nextHop <= until {
		B := n.nextHop
		n.nextHop += e.hopNS
		fresh := false
		for _, v := range n.vmis {
			if v.last >= B-e.maxWinNS && v.first < B {
				fresh = true
				break
			}
		}
		if !fresh {
			// Nothing within a window of B: skip to the first boundary
			// that can see data again.
			if next := (until/e.hopNS + 1) * e.hopNS; next > n.nextHop {
				n.nextHop = next
			}
			e.endEpisodes(n, B)
			n.analyzed = B
			continue
		}
		e.analyze(n, B)
		n.analyzed = B
	}
}

func (e *Engine) analyze(n *node, B int64) {
	e.stats.Analyses++
	// Bus locks first: a lock channel also modulates the cache trains of
	// both ends, and must not be reported as a cache channel too.
	if e.cfg.BusLock.Enabled {
		e.detectBusLock(n, B)
	}
	if e.cfg.CacheOscillation.Enabled {
		e.detectCacheOscillation(n, B)
	}
	if e.cfg.SideChannel.Enabled {
		e.detectSideChannel(n, B)
	}
	e.endEpisodes(n, B)
}

// StateSize reports the engine's memory for observation state.
type StateSize struct {
	// PerStream is the bytes kept per vCPU stream.
	PerStream int
	// PerVMI is the bytes kept per VMI (trains, baseline, curves), whatever
	// its number of vCPUs.
	PerVMI int
	// Total is the state of every stream and VMI registered.
	Total int
}

// StateSize computes the bounded per-stream and per-VMI state.
func (e *Engine) StateSize() StateSize {
	perStream := int(unsafe.Sizeof(stream{}))
	perVMI := int(unsafe.Sizeof(vmi{})) +
		e.coarseLen*int(unsafe.Sizeof(coarseBin{})) +
		2*(e.fineLen+2*e.lockLen+e.llcLongLen+2*e.lockLongLen) +
		baselineBins*4 + MaxSeriesPoints*4
	return StateSize{PerStream: perStream, PerVMI: perVMI, Total: perStream*len(e.streams) + perVMI*len(e.vmiIdx)}
}

// episodes

type episodeKey struct {
	typ    v1alpha1.ThreatType
	node   string
	victim VMIRef
	other  VMIRef
}

type episode struct {
	run          int   // consecutive analyses with evidence
	runStart     int64 // first of them
	lastPositive int64
	active       bool
	first        int64
	lastEmit     int64
	repeat       int
	windowNS     int64
}

// evidence records that an analysis at B found evidence for key; build
// makes the detection when one is due.
func (e *Engine) evidence(key episodeKey, B, windowNS int64, build func() Detection) {
	ep := e.episodes[key]
	if ep == nil {
		ep = &episode{windowNS: windowNS}
		e.episodes[key] = ep
	}
	if ep.run > 0 && ep.lastPositive == B-e.hopNS {
		ep.run++
	} else {
		ep.run = 1
		ep.runStart = B
	}
	ep.lastPositive = B
	switch {
	case !ep.active && ep.run >= e.cfg.Persistence:
		ep.active = true
		ep.first = ep.runStart
		ep.lastEmit = B
		ep.repeat = 0
	case ep.active && B-ep.lastEmit >= windowNS:
		ep.lastEmit = B
		ep.repeat++
	default:
		return
	}
	d := build()
	d.TimeNS = B
	d.FirstCrossingNS = ep.first
	d.Repeat = ep.repeat
	d.Severity = v1alpha1.SeverityForScore(d.Score)
	e.stats.Detections++
	e.out = append(e.out, d)
}

func (e *Engine) endEpisodes(n *node, B int64) {
	for k, ep := range e.episodes {
		if k.node != n.name || ep.lastPositive == B {
			continue
		}
		if !ep.active || B-ep.lastPositive >= ep.windowNS {
			delete(e.episodes, k)
		}
	}
}
