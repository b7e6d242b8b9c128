package detect

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/sidewatch/sidewatch/node-agent/trace"
)

// ReplaySummary describes a replayed trace.
type ReplaySummary struct {
	Rows       int64
	Samples    int64
	Streams    int
	VMIs       int
	Nodes      int
	FirstNS    int64
	LastNS     int64
	Detections int
	Metadata   trace.Metadata
	Stats      Stats
	State      StateSize
}

// Replay runs a trace through a new engine, the same one the agent runs
// live. The trace's interval and sample periods override cfg's (they
// describe how the data was collected); its guest_region lines feed the
// engine's region tables. setup, when not nil, runs once on the engine
// before the first row (to set protections or a resolver). emit receives
// every detection in emission order; an error from it stops the replay.
// Bad input is a *trace.SyntaxError ("line N: reason").
func Replay(ctx context.Context, src io.Reader, cfg Config, setup func(*Engine) error, emit func(*Detection) error) (ReplaySummary, error) {
	var sum ReplaySummary
	r := trace.NewReader(src)
	var st trace.StreamTable
	var eng *Engine
	var ids []StreamID
	var pending []trace.GuestRegion
	deliver := func(ds []Detection) error {
		for i := range ds {
			sum.Detections++
			if err := emit(&ds[i]); err != nil {
				return err
			}
		}
		return nil
	}
	for {
		kind, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return sum, err
		}
		if kind == trace.KindMeta {
			key, val := r.Meta()
			if string(key) == trace.MetaGuestRegion {
				g, err := trace.ParseGuestRegion(string(val))
				if err != nil {
					return sum, &trace.SyntaxError{Line: r.Line(), Msg: err.Error()}
				}
				if eng == nil {
					pending = append(pending, g)
				} else {
					eng.AddGuestRegion(g)
				}
				continue
			}
			before := sum.Metadata
			if err := sum.Metadata.Apply(key, val); err != nil {
				return sum, &trace.SyntaxError{Line: r.Line(), Msg: err.Error()}
			}
			if eng != nil && sum.Metadata != before {
				return sum, &trace.SyntaxError{Line: r.Line(), Msg: fmt.Sprintf("metadata %s must come before the first row: the engine is already configured", key)}
			}
			continue
		}
		if eng == nil {
			c := cfg
			c.ApplyTraceMetadata(sum.Metadata)
			if eng, err = New(c); err != nil {
				return sum, fmt.Errorf("line %d: %w", r.Line(), err)
			}
			if setup != nil {
				if err := setup(eng); err != nil {
					return sum, err
				}
			}
			for _, g := range pending {
				eng.AddGuestRegion(g)
			}
			sum.FirstNS = r.Row().TimeNS
		}
		row := r.Row()
		tid, isNew, err := st.Intern(row, r.Line())
		if err != nil {
			return sum, err
		}
		if isNew {
			k := st.Key(tid)
			ids = append(ids, eng.Stream(StreamKey{Node: k.Node, VMI: VMIRef{Namespace: k.Namespace, Name: k.VMI}, VCPU: k.VCPU}))
		}
		sum.Rows++
		if row.Event.IsSample() {
			sum.Samples++
		}
		sum.FirstNS = min(sum.FirstNS, row.TimeNS)
		sum.LastNS = max(sum.LastNS, row.TimeNS)
		if ds := eng.Observe(Observation{TimeNS: row.TimeNS, Stream: ids[tid], Event: row.Event, Value: row.Value}); len(ds) > 0 {
			if err := deliver(ds); err != nil {
				return sum, err
			}
		}
		if sum.Rows&0xffff == 0 && ctx.Err() != nil {
			return sum, ctx.Err()
		}
	}
	if eng == nil {
		return sum, nil
	}
	if err := deliver(eng.Flush()); err != nil {
		return sum, err
	}
	sum.Streams = st.Len()
	sum.VMIs = len(eng.vmiIdx)
	sum.Nodes = len(eng.nodeList)
	sum.Stats = eng.Stats()
	sum.State = eng.StateSize()
	return sum, nil
}

// ErrNoRows is returned by ReadIntervals when the trace has no rows of the
// VMI asked for.
var ErrNoRows = errors.New("no rows of that VMI")

// VMIIntervals is one VMI's counters per interval, read from a trace, with
// its samples that fell in sensitive code per interval.
type VMIIntervals struct {
	StartNS    int64
	IntervalNS int64
	Counters   []IntervalCounters
	Samples    []int
	Sensitive  []int
}

// ReadIntervals aggregates the rows of one VMI into intervals (all nodes
// and vCPUs summed), attributing its samples with the trace's guest
// regions and sigs. interval 0 uses the trace's declared interval (100ms
// when none). The result holds at most maxIntervals intervals.
func ReadIntervals(src io.Reader, vmi VMIRef, interval int64, sigs []Signature, maxIntervals int) (*VMIIntervals, error) {
	r := trace.NewReader(src)
	var md trace.Metadata
	var regions regionTable
	out := &VMIIntervals{StartNS: -1}
	for {
		kind, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if kind == trace.KindMeta {
			key, val := r.Meta()
			if string(key) == trace.MetaGuestRegion {
				g, err := trace.ParseGuestRegion(string(val))
				if err != nil {
					return nil, &trace.SyntaxError{Line: r.Line(), Msg: err.Error()}
				}
				if g.Namespace == vmi.Namespace && g.VMI == vmi.Name {
					regions.add(g, sigs)
				}
				continue
			}
			if err := md.Apply(key, val); err != nil {
				return nil, &trace.SyntaxError{Line: r.Line(), Msg: err.Error()}
			}
			continue
		}
		row := r.Row()
		if string(row.Namespace) != vmi.Namespace || string(row.VMI) != vmi.Name {
			continue
		}
		if out.IntervalNS == 0 {
			out.IntervalNS = interval
			if out.IntervalNS == 0 {
				out.IntervalNS = md.Interval.Nanoseconds()
			}
			if out.IntervalNS == 0 {
				out.IntervalNS = 100e6
			}
			out.StartNS = row.TimeNS / out.IntervalNS * out.IntervalNS
		}
		t := row.TimeNS
		if !row.Event.IsSample() {
			t-- // a counter value belongs to the interval that ends at its time
		}
		i := int((t - out.StartNS) / out.IntervalNS)
		if i < 0 {
			continue
		}
		if i >= maxIntervals {
			return nil, fmt.Errorf("line %d: more than %d intervals of %s", r.Line(), maxIntervals, vmi)
		}
		for len(out.Counters) <= i {
			out.Counters = append(out.Counters, IntervalCounters{})
			out.Samples = append(out.Samples, 0)
			out.Sensitive = append(out.Sensitive, 0)
		}
		if row.Event.IsSample() {
			out.Samples[i]++
			if row.Value != 0 && regions.lookup(vmi, row.Value, nil, sigs) >= 0 {
				out.Sensitive[i]++
			}
		} else {
			out.Counters[i][row.Event] += float64(row.Value)
		}
	}
	if out.IntervalNS == 0 {
		return nil, fmt.Errorf("%s: %w", vmi, ErrNoRows)
	}
	return out, nil
}
