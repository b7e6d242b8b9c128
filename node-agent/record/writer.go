// Package record connects the node agent's collectors to sidewatch trace
// format v1 (node-agent/trace, docs/trace-format.md): `sidewatch-agent
// record` writes what the collectors measure through Writer, and the
// replay collector reads a recording back through Reader.
package record

import (
	"fmt"
	"io"
	"strings"

	"github.com/sidewatch/sidewatch/node-agent/collect"
	"github.com/sidewatch/sidewatch/node-agent/trace"
)

// Meta is one `# key: value` metadata line.
type Meta struct{ Key, Value string }

// IsCounterEvent reports whether name is one of the format's counters.
func IsCounterEvent(name string) bool {
	_, ok := trace.CounterByName(name)
	return ok
}

// Writer writes a trace. It implements collect.Visitor, so Buffers.Drain
// feeds it directly; rows come out in the order visited, which Buffers
// keeps non-decreasing in time per vCPU.
type Writer struct {
	tw   *trace.Writer
	node string
	// rename maps collector event names to trace counters (software
	// stand-ins on machines without a PMU); events that map to no trace
	// counter are not written.
	rename map[string]string
	rows   uint64
}

// NewWriter writes the version line, the metadata and the header.
func NewWriter(w io.Writer, node string, meta []Meta) (*Writer, error) {
	if node == "" {
		return nil, fmt.Errorf("record: node name is empty")
	}
	for _, m := range meta {
		if m.Key == "" || strings.ContainsAny(m.Key, ": \n") || strings.Contains(m.Value, "\n") {
			return nil, fmt.Errorf("record: metadata %q: a key is one word without ':', a value one line", m.Key)
		}
	}
	tw := trace.NewWriter(w)
	for _, m := range meta {
		tw.Meta(m.Key, m.Value)
	}
	tw.Header()
	return &Writer{tw: tw, node: node}, tw.Flush()
}

// Rename writes collector event from under trace counter to.
func (t *Writer) Rename(from, to string) {
	if t.rename == nil {
		t.rename = map[string]string{}
	}
	t.rename[from] = to
}

func (t *Writer) counter(ev string) (trace.Event, bool) {
	if to, ok := t.rename[ev]; ok {
		ev = to
	}
	return trace.CounterByName(ev)
}

// Reading implements collect.Visitor: one counter row per measured event.
func (t *Writer) Reading(r *collect.Reading) {
	for i, ev := range r.Events {
		if !r.Has(i) {
			continue
		}
		if c, ok := t.counter(ev); ok {
			t.tw.Row(r.Time, t.node, r.Stream.Namespace, r.Stream.VMI, r.Stream.VCPU, c, r.Values[i])
			t.rows++
		}
	}
}

// Sample implements collect.Visitor: one sample row. Only guest
// instruction pointers are written; a host address (TCG, or a sample
// taken while the thread ran host code) says nothing about the guest and
// becomes 0, "unknown".
func (t *Writer) Sample(s *collect.Sample) {
	c, ok := t.counter(s.Event)
	if !ok {
		return
	}
	ip := s.IP
	if !s.Mode.Guest() {
		ip = 0
	}
	t.tw.Row(s.Time, t.node, s.Stream.Namespace, s.Stream.VMI, s.Stream.VCPU, c.Sample(), ip)
	t.rows++
}

// BranchTargets implements collect.Visitor; the format has no branch rows.
func (t *Writer) BranchTargets(collect.StreamID, []uint64) {}

// Rows is how many rows were written.
func (t *Writer) Rows() uint64 { return t.rows }

// Flush writes buffered rows and returns the first write error.
func (t *Writer) Flush() error {
	if err := t.tw.Flush(); err != nil {
		return fmt.Errorf("record: %w", err)
	}
	return nil
}
