package evidence

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	v1alpha1 "github.com/sidewatch/sidewatch/api/v1alpha1"
)

// Encode returns s as gzip-compressed JSON of at most MaxCompressedBytes
// (and at most MaxJSONBytes uncompressed), and the snapshot as encoded.
//
// s itself is not modified. When s is too large, Encode trims a copy in a
// fixed order until it fits, each stage going one level further only while
// the snapshot is still too large (docs/forensics.md lists the levels):
//
//  1. samples: keep the 4096, then 2048, then 1024 address samples nearest
//     the onset; Attribution still counts all of them.
//  2. series-window: crop the counter series to a window centred on the
//     onset, halving it down to 1024 values per series (the resolution
//     that shows a covert channel's period is kept).
//  3. processes: keep 8 library names per process, then 64 processes per
//     VMI (those with attributed samples first, then the lowest pids), then
//     no library names, then 16 processes.
//  4. series-resolution: sum adjacent steps (doubling the step) down to 128
//     values per series.
//  5. co-scheduling: average adjacent steps of the overlap time series
//     down to 128, then drop them (the totals stay).
//  6. samples: keep 512, then 256, then no samples.
//  7. detector: keep 1024, then 256, then 64 autocorrelation lags, burst
//     times and phase intervals, those nearest the onset (the peak
//     figures stay exact).
//  8. series: drop the series of events the detector did not use, then all.
//  9. attribution: keep the 16, then the 4 most sampled programs per VMI.
//  10. last-resort: drop processes, co-scheduling, attribution and the
//     detector's curves, keeping its scalar figures.
//  11. minimal: keep only the finding, the VMIs' names and roles, the
//     host's node and CPU and the detector's name and score.
//
// Every stage that dropped something leaves a TrimNote saying exactly what.
// Values the format cannot hold (NaN, strings over their limit, lists over
// their cap) are fixed first, with a note in stage "limits". Encode fails
// only for a nil snapshot.
func Encode(s *Snapshot) (data []byte, stored *Snapshot, err error) {
	if s == nil {
		return nil, nil, errors.New("evidence: nil snapshot")
	}
	cur := s.clone()
	cur.Format, cur.Version = Format, Version
	if len(cur.Attribution) == 0 && len(cur.Samples) > 0 {
		cur.Attribution = Attribute(cur.Samples)
	}
	limitNotes := cur.bound()
	orig := cur.clone()
	base := append(append([]TrimNote(nil), s.Trimmed...), limitNotes...)

	notes := func(applied []bool) []TrimNote {
		out := slices.Clone(base)
		seen := map[TrimNote]bool{}
		for i, st := range stages {
			if !applied[i] {
				continue
			}
			// A stage that runs twice (samples) compares the same two
			// snapshots both times: say it once.
			if d := st.note(orig, cur); d != "" && !seen[TrimNote{st.name, d}] {
				seen[TrimNote{st.name, d}] = true
				out = append(out, TrimNote{Stage: st.name, Detail: clampString(d, maxTextLen)})
			}
		}
		keep, length := maxTrimNotes, maxTextLen
		if applied[len(stages)-1] {
			// Minimal: the notes must not outgrow what they describe.
			keep, length = 16, 256
		}
		if len(out) > keep {
			out = out[len(out)-keep:]
		}
		for i := range out {
			out[i].Stage, out[i].Detail = clampString(out[i].Stage, maxEventLen), clampString(out[i].Detail, length)
		}
		return out
	}

	applied := make([]bool, len(stages))
	stage, level := 0, 0
	for {
		cur.Trimmed = notes(applied)
		data, ok, err := encodeIfFits(cur)
		if err != nil {
			return nil, nil, err
		}
		if ok {
			return data, cur, nil
		}
		// Trim one level more: the next level of the current stage that
		// changes something, or the next stage.
		changed := false
		for !changed && stage < len(stages) {
			changed = stages[stage].apply(cur, level)
			applied[stage] = applied[stage] || changed
			if level++; level == stages[stage].levels {
				stage, level = stage+1, 0
			}
		}
		if !changed {
			// Unreachable: the minimal stage keeps a few kilobytes of
			// clamped strings.
			return nil, nil, fmt.Errorf("evidence: snapshot of %s/%s does not fit in %d bytes even when minimal", cur.Finding.Namespace, cur.Finding.Name, MaxCompressedBytes)
		}
	}
}

// encodeIfFits encodes s; ok is false when it exceeds a limit.
func encodeIfFits(s *Snapshot) (data []byte, ok bool, err error) {
	if minJSONSize(s) > MaxJSONBytes {
		return nil, false, nil
	}
	js, err := json.Marshal(s)
	if err != nil {
		return nil, false, fmt.Errorf("evidence: encode %s/%s: %w", s.Finding.Namespace, s.Finding.Name, err)
	}
	if len(js) > MaxJSONBytes {
		return nil, false, nil
	}
	var buf bytes.Buffer
	buf.Grow(min(len(js)/3, MaxCompressedBytes) + 64)
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(js); err != nil {
		return nil, false, err
	}
	if err := zw.Close(); err != nil {
		return nil, false, err
	}
	if buf.Len() > MaxCompressedBytes {
		return nil, false, nil
	}
	return buf.Bytes(), true, nil
}

// minJSONSize is a cheap lower bound of the JSON size, so a snapshot of
// millions of values is known to be too large without marshalling it.
func minJSONSize(s *Snapshot) int {
	n := 0
	for _, sm := range s.Samples {
		n += 40 + len(sm.VMI) + len(sm.Comm) + len(sm.Path) + len(sm.Symbol)
	}
	for _, se := range s.Series {
		n += 2 * len(se.Values)
	}
	for _, l := range s.Processes {
		for _, p := range l.Processes {
			n += 20 + len(p.Comm) + len(p.Exe)
			for _, lib := range p.Libraries {
				n += 3 + len(lib)
			}
		}
	}
	return n
}

// Decode reads a snapshot written by Encode. It refuses data beyond the size
// limits, a newer format version and anything Validate rejects, naming the
// offending field: the data comes from the API, where a compromised agent
// may have written anything.
func Decode(data []byte) (*Snapshot, error) {
	if len(data) > MaxCompressedBytes {
		return nil, fmt.Errorf("evidence: %w: %d bytes compressed, the limit is %d", errTooLarge, len(data), MaxCompressedBytes)
	}
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("evidence: not a gzip stream: %w", err)
	}
	js, err := io.ReadAll(io.LimitReader(zr, MaxJSONBytes+1))
	if err != nil {
		return nil, fmt.Errorf("evidence: decompress: %w", err)
	}
	if len(js) > MaxJSONBytes {
		return nil, fmt.Errorf("evidence: %w: more than %d bytes once decompressed", errTooLarge, MaxJSONBytes)
	}
	return DecodeJSON(js)
}

// DecodeJSON reads an uncompressed snapshot (as `zcat` shows it), with the
// same checks as Decode.
func DecodeJSON(js []byte) (*Snapshot, error) {
	if len(js) > MaxJSONBytes {
		return nil, fmt.Errorf("evidence: %w: %d bytes of JSON, the limit is %d", errTooLarge, len(js), MaxJSONBytes)
	}
	// Read the version first, so a newer snapshot gets "upgrade" rather
	// than a type error about a field that changed meaning.
	var head struct {
		Format  string `json:"format"`
		Version int    `json:"version"`
	}
	if err := json.Unmarshal(js, &head); err != nil {
		return nil, fmt.Errorf("evidence: not a snapshot: %w", err)
	}
	if head.Format != Format {
		return nil, fmt.Errorf("evidence: format is %q, want %q", clampString(head.Format, 80), Format)
	}
	if head.Version > Version {
		return nil, fmt.Errorf("evidence: snapshot version %d is newer than this sidewatch reads (%d): upgrade sidewatch", head.Version, Version)
	}
	s := &Snapshot{}
	if err := json.Unmarshal(js, s); err != nil {
		return nil, fmt.Errorf("evidence: %w", err)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("evidence: %w", err)
	}
	return s, nil
}

// Attribute sums samples per VMI and guest program (pid, comm, path,
// symbol), most samples first; each program's offset is its most sampled
// one. Samples without any attribution count as unattributed.
func Attribute(samples []Sample) []Attribution {
	type key struct {
		pid                int32
		comm, path, symbol string
	}
	type prog struct {
		n       int64
		offsets map[Hex]int64
	}
	byVMI := map[string]map[key]*prog{}
	unattributed := map[string]int64{}
	var order []string
	for _, sm := range samples {
		if _, ok := byVMI[sm.VMI]; !ok {
			byVMI[sm.VMI] = map[key]*prog{}
			order = append(order, sm.VMI)
		}
		if sm.Path == "" && sm.Comm == "" && sm.Symbol == "" {
			unattributed[sm.VMI]++
			continue
		}
		k := key{sm.PID, sm.Comm, sm.Path, sm.Symbol}
		p := byVMI[sm.VMI][k]
		if p == nil {
			p = &prog{offsets: map[Hex]int64{}}
			byVMI[sm.VMI][k] = p
		}
		p.n++
		p.offsets[sm.Offset]++
	}
	slices.Sort(order)
	var out []Attribution
	for _, vmi := range order {
		a := Attribution{VMI: vmi, Unattributed: unattributed[vmi]}
		for k, p := range byVMI[vmi] {
			var best Hex
			var bestN int64 = -1
			for off, n := range p.offsets {
				if n > bestN || n == bestN && off < best {
					best, bestN = off, n
				}
			}
			g := v1alpha1.GuestProgram{PID: k.pid, Comm: k.comm, Path: k.path, Symbol: k.symbol, Samples: p.n}
			if k.path != "" {
				g.Offset = best.String()
			}
			a.Programs = append(a.Programs, g)
		}
		slices.SortFunc(a.Programs, func(x, y v1alpha1.GuestProgram) int {
			return cmp.Or(cmp.Compare(y.Samples, x.Samples), cmp.Compare(x.PID, y.PID),
				strings.Compare(x.Comm, y.Comm), strings.Compare(x.Path, y.Path), strings.Compare(x.Symbol, y.Symbol))
		})
		if len(a.Programs) > maxPrograms {
			a.Programs = a.Programs[:maxPrograms]
		}
		out = append(out, a)
	}
	return out
}

// clone copies s deeply enough that trimming the copy never changes s.
func (s *Snapshot) clone() *Snapshot {
	c := *s
	c.VMIs = slices.Clone(s.VMIs)
	for i := range c.VMIs {
		c.VMIs[i].HostCPUs = slices.Clone(c.VMIs[i].HostCPUs)
	}
	c.Host.UnavailableSignals = slices.Clone(s.Host.UnavailableSignals)
	c.Series = slices.Clone(s.Series)
	for i := range c.Series {
		c.Series[i].Values = slices.Clone(c.Series[i].Values)
	}
	d := &c.Detector
	d.Autocorrelation = s.Detector.Autocorrelation.clone()
	d.CrossCorrelation = s.Detector.CrossCorrelation.clone()
	d.Bursts = slices.Clone(s.Detector.Bursts)
	for i := range d.Bursts {
		d.Bursts[i].TimesNs = slices.Clone(d.Bursts[i].TimesNs)
		d.Bursts[i].PeriodsNs = slices.Clone(d.Bursts[i].PeriodsNs)
	}
	d.PhaseCorrelation = slices.Clone(s.Detector.PhaseCorrelation)
	for i := range d.PhaseCorrelation {
		d.PhaseCorrelation[i].Phases = slices.Clone(d.PhaseCorrelation[i].Phases)
		d.PhaseCorrelation[i].Anomalies = slices.Clone(d.PhaseCorrelation[i].Anomalies)
	}
	d.EventRates = slices.Clone(s.Detector.EventRates)
	if s.Detector.Figures != nil {
		d.Figures = make(map[string]float64, len(s.Detector.Figures))
		for k, v := range s.Detector.Figures {
			d.Figures[k] = v
		}
	}
	c.Samples = slices.Clone(s.Samples)
	c.Attribution = slices.Clone(s.Attribution)
	for i := range c.Attribution {
		c.Attribution[i].Programs = slices.Clone(c.Attribution[i].Programs)
	}
	c.Processes = slices.Clone(s.Processes)
	for i := range c.Processes {
		l := &c.Processes[i]
		l.Processes = slices.Clone(l.Processes)
		for j := range l.Processes {
			l.Processes[j].Libraries = slices.Clone(l.Processes[j].Libraries)
		}
	}
	c.CoScheduling = slices.Clone(s.CoScheduling)
	for i := range c.CoScheduling {
		if o := c.CoScheduling[i].Overlap; o != nil {
			oc := *o
			oc.SMTSibling = slices.Clone(o.SMTSibling)
			oc.SharedLLC = slices.Clone(o.SharedLLC)
			c.CoScheduling[i].Overlap = &oc
		}
	}
	c.Gaps = slices.Clone(s.Gaps)
	c.Trimmed = slices.Clone(s.Trimmed)
	return &c
}

func (c *Correlogram) clone() *Correlogram {
	if c == nil {
		return nil
	}
	cc := *c
	cc.Values = slices.Clone(c.Values)
	return &cc
}
